"""Sample responses from a model: the rollout half of on-policy distillation.

One engine now (plain transformers with a KV cache); the `RolloutEngine` protocol is the seam
where a vLLM engine plugs in. The sampling loop is written out rather than delegated to
`model.generate` because each row needs its own random stream: a row's tokens must depend on
(seed, step, prompt, sample) only, not on which other rows share its batch, so that reruns and
resumed runs reproduce exactly.

That stream is counter-based rather than a generator per row: the uniform a row uses at token t
is a hash of (the row's seed, t), drawn for all rows and tokens at once in integer tensor ops,
and turned into a token by inverting the row's cumulative distribution. This replaces a Python
loop of per-row `torch.multinomial` calls at every token, and the same seed gives the same bits
on any device and in any batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import torch
from transformers import DynamicCache

from esr_lab.config import Sampling
from esr_lab.console import console
from esr_lab.models import LoadedModel

_WARNED_CONTEXT: set[tuple[str, int]] = set()


@dataclass
class Rollouts:
    """Sampled responses, one entry per row; completions include their stop token if any."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[list[float]]
    finished: list[bool]

    def __len__(self) -> int:
        return len(self.completion_ids)

    def extend(self, other: Rollouts) -> None:
        """Append another batch's rows after these."""
        self.prompt_ids += other.prompt_ids
        self.completion_ids += other.completion_ids
        self.logprobs += other.logprobs
        self.finished += other.finished


class RolloutEngine(Protocol):
    """Anything that turns token prompts into seeded samples."""

    def generate(
        self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], sampling: Sampling
    ) -> Rollouts: ...

    def sync(self, model, version: object) -> None:
        """Sample from `model`'s weights as of `version` from now on."""


def in_batches(
    generate: Callable[[Sequence[Sequence[int]], Sequence[int], Sampling], Rollouts],
    prompts: Sequence[Sequence[int]],
    seeds: Sequence[int],
    sampling: Sampling,
    size: int,
    after_batch: Callable[[Rollouts], None] | None = None,
) -> Rollouts:
    """`generate` over `size` rows at a time, the parts joined in order; `after_batch` sees each
    part (a progress bar). Every row has its own seed, so the rows do not depend on `size`."""
    out = Rollouts([], [], [], [])
    for start in range(0, len(prompts), size):
        part = generate(prompts[start : start + size], seeds[start : start + size], sampling)
        out.extend(part)
        if after_batch is not None:
            after_batch(part)
    return out


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded on the left so every row ends at the last column."""
    width = max(len(row) for row in rows)
    ids_BL = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask_BL = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids_BL[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask_BL[i, width - len(row) :] = 1
    return ids_BL, mask_BL


def sampling_logprobs(
    logits_BV: torch.Tensor,
    temperature: float,
    top_p: float,
    top_k: int = 0,
    sampled_B: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-probs of the distribution actually sampled from: temperature, then top-k, then the
    nucleus of what top-k kept (HF generate's order of warpers; top_k 0 is off).

    `sampled_B` (ids, the logits' shape without the vocabulary) stay in the support whatever
    this recomputation says: they were drawn from the sampler's support, but a training forward
    pass (LoRA dropout on, other kernels) can rank one just outside top-k or the nucleus, and
    the log-prob of a token that was sampled must stay finite (a policy-gradient loss is -inf
    times its cost there; PowerOPD diverged so at step 54 of a run-on world run)."""
    logp_BV = torch.log_softmax(logits_BV.float() / max(temperature, 1e-6), dim=-1)
    top_k_on = 0 < top_k < logp_BV.shape[-1]
    if not top_k_on and top_p >= 1.0:
        return logp_BV

    def dropped(drop_BV: torch.Tensor) -> torch.Tensor:
        if sampled_B is not None:  # the sampled ids are never dropped
            drop_BV = drop_BV.scatter(-1, sampled_B[..., None], False)
        return drop_BV

    if top_k_on:
        # As HF's TopKLogitsWarper: ids tied with the k-th most likely one are kept too.
        kth_B1 = logp_BV.topk(top_k, dim=-1).values[..., -1:]
        drop_BV = dropped(logp_BV < kth_B1)
        logp_BV = torch.log_softmax(logp_BV.masked_fill(drop_BV, float("-inf")), -1)
    if top_p >= 1.0:
        return logp_BV
    sorted_BV, order_BV = logp_BV.sort(dim=-1, descending=True)
    mass_before_BV = sorted_BV.exp().cumsum(dim=-1) - sorted_BV.exp()
    # Drop a token once the tokens ranked above it already hold top_p of the mass.
    drop_BV = torch.zeros_like(mass_before_BV, dtype=torch.bool)
    drop_BV.scatter_(-1, order_BV, mass_before_BV >= top_p)
    return torch.log_softmax(logp_BV.masked_fill(dropped(drop_BV), float("-inf")), dim=-1)


MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2**32 for x in [0, 2**32), split so that no int64 product overflows."""
    low, high = x & 0xFFFF, x >> 16
    return (low * c + (((high * (c & 0xFFFF)) & 0xFFFF) << 16)) & MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer mixer on int64 tensors holding values in [0, 2**32)."""
    # "lowbias32" from Chris Wellons's hash-prospector, a low-bias two-multiply 32-bit mixer.
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_uniforms(seeds: Sequence[int], steps: int, device: torch.device | str) -> torch.Tensor:
    """[B, steps] float64 in [0, 1) with 53 random bits each: row i's draw for token t.

    A pure function of (seeds[i], t): each 63-bit seed is split into two 32-bit key words that
    are hashed with the token counter. Computed once per batch for every token, so the
    per-token loop does no random-number work at all.
    """
    keys_B2 = torch.tensor([[s & MASK32, (s >> 32) & MASK32] for s in seeds], device=device)
    counter_1S = _hash32(torch.arange(steps, device=device))[None]
    word_BS = _hash32(keys_B2[:, 1:] ^ _hash32(keys_B2[:, :1] ^ counter_1S))
    high_BS, low_BS = _hash32(word_BS ^ 0x68E31DA4), _hash32(word_BS ^ 0xB5297A4D)
    return ((high_BS >> 6) * 2**27 + (low_BS >> 5)).double() / 2**53


def sample_next(
    logits_BV: torch.Tensor, sampling: Sampling, uniform_B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from that row's own uniform draw, with its sampling log-prob.

    Inverse-CDF sampling: the row's uniform, scaled to its total mass, picks the first id whose
    cumulative probability exceeds it; ids of zero probability (cut by top-p) are never picked.
    """
    if sampling.temperature == 0:
        logp_BV = torch.log_softmax(logits_BV.float(), dim=-1)
        tokens_B = logp_BV.argmax(dim=-1)
    else:
        logp_BV = sampling_logprobs(logits_BV, sampling.temperature, sampling.top_p, sampling.top_k)
        cdf_BV = logp_BV.double().exp().cumsum(dim=-1)
        target_B1 = (uniform_B * cdf_BV[:, -1])[:, None]
        tokens_B = torch.searchsorted(cdf_BV, target_B1, right=True)[:, 0]
        tokens_B = tokens_B.clamp_(max=cdf_BV.shape[-1] - 1)  # u * total rounded up to total
    return tokens_B, logp_BV.gather(-1, tokens_B[:, None]).squeeze(-1)


def response_budgets(
    loaded: LoadedModel, prompts: Sequence[Sequence[int]], max_new_tokens: int
) -> list[int]:
    """Per row, max_new_tokens capped so that prompt + response fit the model's context.

    Qwen2.5-Math-1.5B has 4,096 positions: a 4,096-token budget would run past them and the
    model would read positions it was never trained on. Said once per model and budget.
    """
    context = loaded.context_length
    if context is None:
        return [max_new_tokens] * len(prompts)
    budgets = [max(0, min(max_new_tokens, context - len(p))) for p in prompts]
    if min(budgets) < max_new_tokens and (loaded.name, max_new_tokens) not in _WARNED_CONTEXT:
        _WARNED_CONTEXT.add((loaded.name, max_new_tokens))
        console.print(
            f"[yellow]note:[/] {loaded.name} has {context} positions; responses are capped at "
            f"{context} minus the prompt (max_new_tokens {max_new_tokens} asked)"
        )
    return budgets


@cache
def _cache_keyword(model_class: type) -> str:
    """The forward argument that takes the KV cache: `cache` from transformers 5.25 on (where
    `past_key_values` warns, and goes in 5.40), `past_key_values` before."""
    return (
        "cache"
        if "cache" in inspect.signature(model_class.forward).parameters
        else "past_key_values"
    )


def cache_keyword(model) -> str:
    """`_cache_keyword` of the transformers model under a peft wrapper, if any."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_keyword(type(base))


class TransformersEngine:
    """Batched sampling with a transformers causal LM and its KV cache."""

    def __init__(self, loaded: LoadedModel, batch_size: int = 64) -> None:
        self.loaded = loaded
        self.batch_size = batch_size

    def sync(self, model, version: object) -> None:
        """Nothing to do: this engine samples from the live model."""

    def generate(
        self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], sampling: Sampling
    ) -> Rollouts:
        return in_batches(self._generate_batch, prompts, seeds, sampling, self.batch_size)

    @torch.inference_mode()
    def _generate_batch(
        self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], sampling: Sampling
    ) -> Rollouts:
        model, device = self.loaded.model, self.loaded.device
        pad_id = self.loaded.tokenizer.pad_token_id
        stop_ids = torch.tensor(self.loaded.stop_ids(sampling.stop_at_end_of_turn), device=device)
        budget_B = torch.tensor(
            response_budgets(self.loaded, prompts, sampling.max_new_tokens), device=device
        )
        ids_BL, prompt_mask_BL = (t.to(device) for t in left_pad(prompts, pad_id))
        positions_BL = (prompt_mask_BL.cumsum(-1) - 1).clamp(min=0)
        # The mask of every step is a prefix of one tensor: no re-allocation per token.
        width = prompt_mask_BL.shape[1]
        grown_mask_BL = torch.cat(
            [prompt_mask_BL, prompt_mask_BL.new_ones((len(prompts), int(budget_B.max())))], -1
        )
        uniforms_BT = row_uniforms(seeds, sampling.max_new_tokens, device)
        kv_cache = {cache_keyword(model): DynamicCache(config=model.config)}
        batch = len(prompts)
        tokens_BT = torch.full((batch, sampling.max_new_tokens), pad_id, device=device)
        logp_BT = torch.zeros((batch, sampling.max_new_tokens), device=device)
        done_B = torch.zeros(batch, dtype=torch.bool, device=device)
        stopped_B = torch.zeros(batch, dtype=torch.bool, device=device)  # ended at a stop id
        lengths_B = torch.zeros(batch, dtype=torch.long, device=device)
        step_ids_BL = ids_BL
        for t in range(int(budget_B.max())):
            done_B |= lengths_B >= budget_B
            if bool(done_B.all()):
                break
            with self.loaded.autocast():
                logits = model(
                    input_ids=step_ids_BL,
                    attention_mask=grown_mask_BL[:, : width + t],
                    position_ids=positions_BL,
                    use_cache=True,
                    **kv_cache,
                    logits_to_keep=1,
                ).logits[:, -1]
            next_B, next_logp_B = sample_next(logits, sampling, uniforms_BT[:, t])
            tokens_BT[:, t] = torch.where(done_B, pad_id, next_B)
            logp_BT[:, t] = torch.where(done_B, 0.0, next_logp_B)
            lengths_B += (~done_B).long()
            stopped_B |= ~done_B & torch.isin(next_B, stop_ids)
            done_B |= stopped_B
            step_ids_BL = next_B[:, None]
            positions_BL = positions_BL[:, -1:] + 1
        lengths = lengths_B.tolist()
        return Rollouts(
            prompt_ids=[list(p) for p in prompts],
            completion_ids=[tokens_BT[i, : lengths[i]].tolist() for i in range(batch)],
            logprobs=[logp_BT[i, : lengths[i]].tolist() for i in range(batch)],
            finished=stopped_B.tolist(),
        )
