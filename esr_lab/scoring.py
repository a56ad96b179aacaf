"""Score given response tokens under a model: the logits at every response position.

Student and teacher each read the response after their *own* rendering of the prompt, so the
two sequences differ in their prompt part and agree on the response part. Prompts are padded on
the left and responses on the right, so response position t sits at the same column in every
row and `logits_to_keep` can skip the prompt's logits (at 151,936 ids they are most of the
memory of a scoring pass).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from esr_lab.data import Problem
from esr_lab.divergences import chunked_position_stats
from esr_lab.errors import UserError
from esr_lab.policy import Policy
from esr_lab.rollout import left_pad


@dataclass
class ScoringBatch:
    """One model's view of a batch: its prompts, then the shared responses."""

    input_ids_BL: torch.Tensor
    attention_mask_BL: torch.Tensor
    response_ids_BT: torch.Tensor
    response_mask_BT: torch.Tensor

    def to(self, device: torch.device) -> ScoringBatch:
        return ScoringBatch(*(t.to(device) for t in vars(self).values()))

    def rows(self, rows: slice) -> ScoringBatch:
        """A micro-batch: the same layout for a subset of rows."""
        return ScoringBatch(*(t[rows] for t in vars(self).values()))


def build_batch(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> ScoringBatch:
    """Left-padded prompts followed by right-padded responses."""
    prompt_ids_BP, prompt_mask_BP = left_pad(prompts, pad_id)
    width = max(1, max(len(r) for r in responses))
    response_ids_BT = torch.full((len(responses), width), pad_id, dtype=torch.long)
    response_mask_BT = torch.zeros((len(responses), width), dtype=torch.bool)
    for i, response in enumerate(responses):
        response_ids_BT[i, : len(response)] = torch.tensor(response, dtype=torch.long)
        response_mask_BT[i, : len(response)] = True
    return ScoringBatch(
        input_ids_BL=torch.cat([prompt_ids_BP, response_ids_BT], dim=1),
        attention_mask_BL=torch.cat([prompt_mask_BP, response_mask_BT.long()], dim=1),
        response_ids_BT=response_ids_BT,
        response_mask_BT=response_mask_BT,
    )


def _model_inputs(batch: ScoringBatch) -> dict[str, torch.Tensor | bool]:
    """Keyword inputs of one scoring forward: positions count only real (unpadded) tokens."""
    return {
        "input_ids": batch.input_ids_BL,
        "attention_mask": batch.attention_mask_BL,
        "position_ids": (batch.attention_mask_BL.cumsum(-1) - 1).clamp(min=0),
        "use_cache": False,
    }


def response_logits(model, batch: ScoringBatch) -> torch.Tensor:
    """Logits [B, T, V] predicting each response token (gradient follows the caller's mode)."""
    T = batch.response_ids_BT.shape[1]
    logits_BLV = model(**_model_inputs(batch), logits_to_keep=T + 1).logits
    return logits_BLV[:, :-1]  # the logit at column c predicts the token at column c + 1


def response_hidden(model, batch: ScoringBatch) -> torch.Tensor:
    """Final hidden states [B, T, H] at the positions of `response_logits`, without the head.

    `response_hidden(m, b) @ m.get_output_embeddings().weight.T` equals `response_logits(m, b)`
    for heads without bias or soft-capping; `lean.fused_per_position_loss` takes it from
    there. The decoder is found through `get_decoder()`, which a peft wrapper passes through.
    """
    T = batch.response_ids_BT.shape[1]
    hidden_BLH = model.get_decoder()(**_model_inputs(batch)).last_hidden_state
    return hidden_BLH[:, -(T + 1) : -1]


def token_logprobs(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor) -> torch.Tensor:
    """log pi(y_t) of the given tokens, in float32."""
    logp_BTV = torch.log_softmax(logits_BTV.float(), dim=-1)
    return logp_BTV.gather(-1, tokens_BT[..., None]).squeeze(-1)


def vocabularies_agree(student_tokenizer, teacher_tokenizer) -> bool:
    """Whether the two tokenizers give the same token to every id both have.

    True is the fast path: one vocabulary extends the other, so both models read the same
    response ids. False needs the cross-tokenizer path of `esr_lab.crosstok`.
    """
    ids = list(range(min(len(student_tokenizer), len(teacher_tokenizer))))
    student_tokens = student_tokenizer.convert_ids_to_tokens(ids)
    return student_tokens == teacher_tokenizer.convert_ids_to_tokens(ids)


def shared_vocab_size(student_tokenizer, teacher_tokenizer) -> int:
    """How many leading ids both models can be compared on.

    The two tokenizers must agree token for token on their common ids (one vocabulary extends
    the other); the KL is then taken over those ids, each distribution renormalised over them.
    """
    n_student, n_teacher = len(student_tokenizer), len(teacher_tokenizer)
    if not vocabularies_agree(student_tokenizer, teacher_tokenizer):
        raise UserError(
            f"student and teacher vocabularies differ ({n_student} and {n_teacher} ids, not the "
            "same tokens on their overlap); on-policy distillation needs a shared vocabulary"
        )
    return min(n_student, n_teacher)


@torch.no_grad()
def position_stats(
    student: Policy, teacher: Policy, problems: Sequence[Problem], responses: list[list[int]]
) -> pd.DataFrame:
    """Per-position statistics of given student responses, long format: one row per token.

    Columns: row, position, token_id, reverse_kl, forward_kl, student_entropy,
    teacher_entropy, student_top1_prob, teacher_rank_of_student_top1. `problems[i]` is the
    prompt of `responses[i]`; each model reads it in its own template.
    """
    shared = shared_vocab_size(student.tokenizer, teacher.tokenizer)

    def score(rows: range, part: list[list[int]], s_batch: ScoringBatch):
        t_batch = policy_batch(teacher, problems, rows, part)
        s_logits = response_logits(student.loaded.model, s_batch)[..., :shared]
        t_logits = response_logits(teacher.loaded.model, t_batch)[..., :shared]
        stats = chunked_position_stats(s_logits, t_logits.to(s_logits.device))
        return stats, s_batch.response_mask_BT & (s_batch.response_ids_BT < shared)

    return stats_by_micro_batch(student, problems, responses, score)


def stats_by_micro_batch(
    student: Policy,
    problems: Sequence[Problem],
    responses: list[list[int]],
    score: Callable[[range, list[list[int]], ScoringBatch], tuple[dict, torch.Tensor]],
    micro_batch: int = 8,
) -> pd.DataFrame:
    """Position statistics of student responses, `micro_batch` at a time, as long rows:
    `score(rows, their responses, the student's batch)` gives a micro-batch's statistics and
    the positions that have them (the teacher's side is the scorer's own)."""
    frames = []
    for start in range(0, len(responses), micro_batch):
        rows = range(start, min(start + micro_batch, len(responses)))
        part = [responses[i] for i in rows]
        s_batch = policy_batch(student, problems, rows, part)
        stats, mask_BT = score(rows, part, s_batch)
        frames.append(stats_frame(stats, mask_BT, s_batch.response_ids_BT, start))
    return pd.concat(frames, ignore_index=True)


def policy_batch(
    policy: Policy, problems: Sequence[Problem], rows: range, responses: list[list[int]]
) -> ScoringBatch:
    """`responses` after `policy`'s own prompts of `problems[rows]`, on its device."""
    prompts = [policy.prompt_ids(problems[i].problem) for i in rows]
    return build_batch(prompts, responses, policy.tokenizer.pad_token_id).to(policy.loaded.device)


def stats_frame(
    stats: dict[str, torch.Tensor], mask_BT: torch.Tensor, ids_BT: torch.Tensor, first_row: int
) -> pd.DataFrame:
    """One micro-batch of `chunked_position_stats` as long rows, one per position in the mask."""
    b, t = mask_BT.nonzero(as_tuple=True)
    frame = {
        "row": (b + first_row).tolist(),
        "position": t.tolist(),
        "token_id": ids_BT[b, t].tolist(),
    }
    frame.update({name: value[b, t].cpu().numpy() for name, value in stats.items()})
    return pd.DataFrame(frame)
