"""A model as a policy: its weights, its sampler, and its own way of rendering prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from esr_lab.config import ENGINES, ModelPair
from esr_lab.errors import UserError
from esr_lab.models import LoadedModel, load_model
from esr_lab.prompts import PromptStyle, no_think_marker, render_style
from esr_lab.rollout import RolloutEngine, Rollouts, TransformersEngine


@dataclass
class Policy:
    """One model with its engine and its own chat-template rendering of every problem."""

    loaded: LoadedModel
    engine: RolloutEngine
    style: PromptStyle

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def prompt_ids(self, problem: str, style: PromptStyle | None = None) -> list[int]:
        """The problem in this model's template, by its own style unless another is given."""
        text = render_style(self.tokenizer, problem, style or self.style)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @cached_property
    def no_think_ids(self) -> list[int]:
        """The template's thinking-off marker as ids ([] when thinking is on or there is none)."""
        if self.style.enable_thinking:
            return []
        marker = no_think_marker(self.tokenizer)
        return self.tokenizer(marker, add_special_tokens=False).input_ids if marker else []

    @cached_property
    def _special_ids(self) -> frozenset[int]:
        return frozenset(self.tokenizer.all_special_ids) | frozenset(self.loaded.stop_ids(True))

    @cached_property
    def _eos_pad_ids(self) -> frozenset[int]:
        """The released code's `special_ids = {eos, pad, 151645, 151643}`: EOS, pad, and Qwen's
        `<|im_end|>` and `<|endoftext|>` (named here by their strings, so that they mean the
        same tokens under any Qwen tokenizer). Gemma's `<end_of_turn>` is not among them."""
        tokenizer = self.tokenizer
        ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
        vocab = tokenizer.get_vocab()
        ids |= {vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab}
        return frozenset(i for i in ids if i is not None)

    def strip_special_tail(self, ids: Sequence[int], every_special: bool = True) -> list[int]:
        """A response without its trailing stop and special tokens (the released code's
        `while response_ids[-1] in special_ids: pop()`), so that none of them carries loss.
        `every_special=False` strips the released code's own set only (`_eos_pad_ids`)."""
        strip = self._special_ids if every_special else self._eos_pad_ids
        end = len(ids)
        while end and ids[end - 1] in strip:
            end -= 1
        return list(ids[:end])

    @staticmethod
    def response_ids(rollouts: Rollouts, row: int) -> list[int]:
        """A completion without its stop token."""
        ids = rollouts.completion_ids[row]
        return ids[:-1] if rollouts.finished[row] else ids


def load_policy(
    name: str, pair: ModelPair, batch_size: int = 64, master_weights: bool = False
) -> Policy:
    """Load `name` on the pair's device and dtype, rendering prompts as the pair says."""
    if pair.engine not in ENGINES:
        raise UserError(f"unknown --engine '{pair.engine}'; use {', '.join(ENGINES)}")
    loaded = load_model(name, pair.device, pair.dtype, master_weights)
    if pair.threads and loaded.device.type == "cpu":
        torch.set_num_threads(pair.threads)  # process-wide: the last model loaded sets it
    return Policy(loaded, make_engine(loaded, pair, batch_size), pair.style)


def make_engine(loaded: LoadedModel, pair: ModelPair, batch_size: int) -> RolloutEngine:
    """The pair's sampler for this model: transformers' (any device) or vLLM's (GPU)."""
    if pair.engine == "transformers":
        return TransformersEngine(loaded, batch_size)
    if loaded.device.type != "cuda":
        raise UserError("--engine vllm needs a CUDA GPU; use --engine transformers on a CPU")
    from esr_lab.vllm_engine import VLLMEngine

    return VLLMEngine(loaded, pair.vllm_memory, pair.vllm_sleep)
