"""A model as a policy: its weights, its sampler, and its own way of rendering prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from esr_lab.config import ModelPair
from esr_lab.models import LoadedModel, load_model
from esr_lab.prompts import render_prompt
from esr_lab.rollout import Rollouts, TransformersEngine


@dataclass
class Policy:
    """One model with its engine and its own chat-template rendering of every problem."""

    loaded: LoadedModel
    engine: TransformersEngine
    instruction: str
    enable_thinking: bool

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def prompt_ids(self, problem: str) -> list[int]:
        text = render_prompt(self.tokenizer, problem, self.instruction, self.enable_thinking)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @staticmethod
    def response_ids(rollouts: Rollouts, row: int) -> list[int]:
        """A completion without its stop token."""
        ids = rollouts.completion_ids[row]
        return ids[:-1] if rollouts.finished[row] else ids


def load_policy(name: str, pair: ModelPair, batch_size: int = 64) -> Policy:
    """Load `name` on the pair's device and dtype, rendering prompts as the pair says."""
    loaded = load_model(name, pair.device, pair.dtype)
    if pair.threads and loaded.device.type == "cpu":
        torch.set_num_threads(pair.threads)  # process-wide: the last model loaded sets it
    return Policy(
        loaded, TransformersEngine(loaded, batch_size), pair.instruction, pair.enable_thinking
    )
