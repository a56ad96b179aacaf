"""Cross-tokenizer OPD: score a student's tokens with a teacher that tokenizes text differently.

When `scoring.vocabularies_agree` holds (one vocabulary extends the other) both models read the
same response ids and nothing here is needed. Otherwise the ESR paper's released code (its
Gemma-2 -> Gemma-3 pair) goes through text, and so does this module:

1. Alignment. The student's response ids are decoded to text, keeping each student token's
   character span; the teacher re-tokenizes that text with character offsets and reads it after
   its own prompt. Student position t reads the teacher's next-token distribution that predicts
   the teacher token covering t's middle character (index start + length // 2), i.e. the
   teacher's logits one position before that token. Position t has no alignment (mask False)
   when its span is empty (a continuation byte of a character split over several tokens: the
   token starting the character takes all of it), when no teacher token covers its middle
   character, or when its token string is not in both vocabularies.
2. Vocabulary matching by the text each token writes (`token_text`: `Ġ` and `▁` are a
   space). Both distributions are restricted to the strings the two vocabularies share and
   renormalised there (the log-softmax runs over the gathered logits); any loss of
   `choices.LOSSES` is then taken there, reverse KL by default.
3. "uld", Universal Logit Distillation, needs no shared strings: the L1 distance between the
   sorted probability vectors of the two full distributions.

The released code's variant of this path (`--recipe paper-code`) is two options here:
`neighbour=True` in the alignment gives a position that no teacher token covers the teacher
token before it (a continuation byte reads the token covering its character, as the code's
shared offsets do), and `clamped_reverse_kl` / `ROW_LOSS_CAP` are its clamps. A student token
whose string the teacher lacks carries no loss in either: esr-lab's sampled-token loss needs it
(the code's only loss, reverse KL over the shared strings, would not).

API (B rows, T student response positions, U teacher response positions, S shared strings):

    vocab = shared_vocab(student_tok, teacher_tok)               # once per run; refuses a pair
    cross = build_cross_batch(student_tok, teacher_tok, teacher_prompts, responses, vocab)
    student_batch = scoring.build_batch(student_prompts, responses, student_pad_id)  # as today
    t_logits_BUV = scoring.response_logits(teacher_model, cross.teacher)             # no grad
    s_logits_BTV = scoring.response_logits(student_model, student_batch)
    loss_BT = cross_position_loss("reverse_kl", s_logits_BTV, t_logits_BUV, cross, vocab)
    mask_BT = student_batch.response_mask_BT & cross.aligned_BT

`shared_logits` gives the [B, T, S] pair behind the losses, for `chunked_position_stats`;
`pair_position_stats` is `scoring.position_stats` for any pair. Building the spans decodes every
prefix of a response: quadratic, about 2 ms for ESR's 100 tokens, 0.3 s for 2,048 and 0.9 s for
3,584 (one CPU core, byte-level BPE). Rows are aligned on the CPU before the teacher's pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from esr_lab import scoring
from esr_lab.choices import CROSS_LOSSES, MIN_OVERLAP, SAMPLED_LOSSES
from esr_lab.data import Problem
from esr_lab.divergences import (
    chunked_position_stats,
    chunked_reverse_kl,
    per_position_loss,
    sorted_probability_l1,
)
from esr_lab.errors import UserError
from esr_lab.policy import Policy
from esr_lab.scoring import (
    ScoringBatch,
    build_batch,
    response_logits,
    token_logprobs,
    vocabularies_agree,
)
from esr_lab.token_text import match_by_text

# The released code's clamps (on_policy_distill_positional.py): teacher log-probs over the
# shared strings clamped to [TEACHER_LOGP_FLOOR, 0], each trajectory's loss at ROW_LOSS_CAP.
TEACHER_LOGP_FLOOR = -20.0
ROW_LOSS_CAP = 50.0


@dataclass(frozen=True)
class SharedVocab:
    """The token strings both vocabularies hold: position s is the same string on both sides."""

    student_ids_S: Tensor
    teacher_ids_S: Tensor
    student_to_shared: Tensor  # [max student id + 1]: index into S, -1 where not shared

    def shared_index(self, student_ids: Tensor) -> Tensor:
        """Each student id's index into S; -1 where its string is not shared or the id unknown."""
        lookup = self.student_to_shared.to(student_ids.device)
        known = student_ids < lookup.numel()
        return torch.where(known, lookup[student_ids.clamp(max=lookup.numel() - 1)], -1)


def shared_vocab(
    student_tokenizer, teacher_tokenizer, min_overlap: float = MIN_OVERLAP
) -> SharedVocab:
    """Match the vocabularies by the text each token writes (`token_text`: `Ġ` and `▁` are
    both a space, `<0xNN>` its byte, a special token only itself); refuse a pair that shares too
    few strings.

    The overlap is counted against the smaller vocabulary, so a vocabulary that extends the
    other counts as full overlap. The teacher tokenizer must be a fast one: the alignment
    needs its character offsets.
    """
    if not 0.0 <= min_overlap <= 1.0:
        raise UserError(f"min_overlap={min_overlap} is not accepted; use a number in [0, 1]")
    if not teacher_tokenizer.is_fast:
        raise UserError(
            f"teacher tokenizer {type(teacher_tokenizer).__name__} gives no character offsets; "
            "cross-tokenizer OPD needs a fast (Rust) tokenizer"
        )
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    pairs = match_by_text(student_tokenizer, teacher_tokenizer)
    n_student, n_teacher = len(student_vocab), len(teacher_vocab)
    fraction = len(pairs) / max(1, min(n_student, n_teacher))
    if fraction < min_overlap:
        raise UserError(
            f"student and teacher share {len(pairs):,} of {n_student:,} / {n_teacher:,} decoded "
            f"token strings ({fraction:.1%}); cross-tokenizer OPD needs at least {min_overlap:.0%}"
        )
    ids_S2 = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    student_to_shared = torch.full((max(student_vocab.values()) + 1,), -1, dtype=torch.long)
    student_to_shared[ids_S2[:, 0]] = torch.arange(len(pairs))
    return SharedVocab(ids_S2[:, 0], ids_S2[:, 1], student_to_shared)


def _decode(tokenizer, ids: Sequence[int]) -> str:
    """Text exactly as the ids spell it: no special tokens dropped, no spacing clean-up."""
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _common_prefix_length(a: str, b: str) -> int:
    return len(a) if b.startswith(a) else len(os.path.commonprefix([a, b]))


def char_spans(tokenizer, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text and each token's [start, end) character span in it.

    Spans come from decoding every prefix, because a token decoded alone is not its share of
    the text (byte-level pieces, SentencePiece's leading space). A prefix that ends inside a
    multi-byte character decodes to replacement characters that the full text does not have:
    the token that starts the character takes it (one character past the agreed text), and its
    continuation bytes get empty spans. So a split character is compared where the student
    starts writing it, as the teacher's side is (see `_covering_token`). A byte-fallback
    decoder garbles a whole run of byte tokens until its last character is complete; there the
    later characters go to the tokens that complete them.
    """
    text = _decode(tokenizer, ids)
    spans, end = [], 0
    for k in range(len(ids)):
        prefix = _decode(tokenizer, ids[: k + 1])
        agreed = _common_prefix_length(prefix, text)
        new_end = max(end, min(agreed + 1, len(prefix)))
        spans.append((end, new_end))
        end = new_end
    return text, spans


def _preceding_token(offsets: Sequence[tuple[int, int]], char: int) -> int:
    """The last token starting at or before `char` (the first token if none does): the
    released code's neighbour for a character that no token covers."""
    starts = [start for start, _ in offsets]
    return max(0, sum(start <= char for start in starts) - 1)


def _covering_token(offsets: Sequence[tuple[int, int]], length: int) -> list[int]:
    """For each character, the first token whose offsets cover it (-1 where none does).

    The first, because the bytes of one character all carry that character's offsets, and the
    teacher starts writing the character with the first of them.
    """
    owner = [-1] * length
    for j in reversed(range(len(offsets))):
        start, end = offsets[j]
        owner[start:end] = [j] * (end - start)
    return owner


@dataclass(frozen=True)
class RowAlignment:
    """One response seen by both tokenizers."""

    text: str
    student_spans: list[tuple[int, int]]
    teacher_ids: list[int]
    columns: list[int]  # per student token: the teacher response column to read, -1 if none


def align_response(
    student_tokenizer, teacher_tokenizer, response_ids: Sequence[int], neighbour: bool = False
) -> RowAlignment:
    """Student token t reads teacher column j: j is the teacher token covering t's middle char.

    Column j of `scoring.response_logits` is the teacher's distribution predicting its response
    token j, so t is compared with what the teacher would write where t's text sits.
    `neighbour` (the released code): a token with an empty span (a continuation byte) reads the
    teacher token covering the character it continues, and a middle character that no teacher
    token covers reads the teacher token starting last before it, so no column is -1 unless
    the teacher has no tokens at all.
    """
    text, spans = char_spans(student_tokenizer, response_ids)
    encoded = teacher_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    owner = _covering_token(offsets, len(text))
    columns = []
    for start, end in spans:
        char = (start + end) // 2 if start < end else (start - 1 if neighbour else -1)
        column = owner[char] if 0 <= char < len(text) else -1
        if column < 0 and neighbour and offsets:
            column = _preceding_token(offsets, max(char, 0))
        columns.append(column)
    return RowAlignment(text, spans, list(encoded["input_ids"]), columns)


@dataclass
class CrossBatch:
    """The teacher's view of a batch of student responses, and where each student token reads.

    `teacher` is a ScoringBatch: the teacher's own prompts (left-padded) then its tokens of each
    response text (right-padded). `columns_BT` (0 where unaligned, so it can always be used as
    an index) and `aligned_BT` have the student batch's [B, T] layout.
    """

    teacher: ScoringBatch
    columns_BT: Tensor
    aligned_BT: Tensor

    def to(self, device: torch.device) -> CrossBatch:
        return CrossBatch(self.teacher.to(device), *(t.to(device) for t in self._student_side()))

    def rows(self, rows: slice) -> CrossBatch:
        """A micro-batch: the same layout for a subset of rows."""
        return CrossBatch(self.teacher.rows(rows), *(t[rows] for t in self._student_side()))

    def _student_side(self) -> tuple[Tensor, Tensor]:
        return self.columns_BT, self.aligned_BT


def build_cross_batch(
    student_tokenizer,
    teacher_tokenizer,
    teacher_prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    vocab: SharedVocab,
    neighbour: bool = False,
) -> CrossBatch:
    """Align every response and lay the teacher's inputs out as `scoring.build_batch` does.

    `teacher_prompts[i]` is row i's prompt in the teacher's own template (with its no-think
    marker where it has one); `responses[i]` are the student's response ids, stop token removed;
    `neighbour` as in `align_response`.
    """
    rows = [align_response(student_tokenizer, teacher_tokenizer, r, neighbour) for r in responses]
    teacher = build_batch(
        teacher_prompts, [row.teacher_ids for row in rows], teacher_tokenizer.pad_token_id
    )
    width = max(1, max(len(r) for r in responses))
    columns_BT = torch.full((len(rows), width), -1, dtype=torch.long)
    ids_BT = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, response) in enumerate(zip(rows, responses, strict=True)):
        columns_BT[i, : len(response)] = torch.tensor(row.columns, dtype=torch.long)
        ids_BT[i, : len(response)] = torch.tensor(response, dtype=torch.long)
    aligned_BT = (columns_BT >= 0) & (vocab.shared_index(ids_BT) >= 0)
    return CrossBatch(teacher, columns_BT.clamp(min=0), aligned_BT)


def aligned_teacher_logits(teacher_logits_BUV: Tensor, columns_BT: Tensor) -> Tensor:
    """The teacher's logits [B, T, V_t] read at each student position's aligned column."""
    columns_BT = columns_BT.to(teacher_logits_BUV.device)
    rows_B1 = torch.arange(columns_BT.shape[0], device=columns_BT.device)[:, None]
    return teacher_logits_BUV[rows_B1, columns_BT]


def shared_logits(
    student_logits_BTV: Tensor, teacher_logits_BUV: Tensor, cross: CrossBatch, vocab: SharedVocab
) -> tuple[Tensor, Tensor]:
    """Student and aligned teacher logits over the shared strings, [B, T, S] each.

    Gathering logits (not probabilities) means any log-softmax over them renormalises each
    distribution over the shared strings.
    """
    student_BTS = _select(student_logits_BTV, vocab.student_ids_S)
    teacher_BUS = _select(teacher_logits_BUV, vocab.teacher_ids_S)
    return student_BTS, aligned_teacher_logits(teacher_BUS, cross.columns_BT)


def _select(logits: Tensor, ids_S: Tensor) -> Tensor:
    return logits.index_select(-1, ids_S.to(logits.device))


def cross_position_loss(
    name: str,
    student_logits_BTV: Tensor,
    teacher_logits_BUV: Tensor,
    cross: CrossBatch,
    vocab: SharedVocab,
    student_tokens_BT: Tensor | None = None,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    topk: int = 32,
    clamp: bool = False,
    power_alpha: float = 5.0,
) -> Tensor:
    """Per-position loss [B, T] between the student and its aligned teacher distribution.

    `clamp` (reverse KL only): the released code's clamped teacher log-probs
    (`clamped_reverse_kl`).

    "uld" compares the full distributions; every name of `choices.LOSSES` is taken over
    the shared strings, reverse KL through the memory-lean chunked path ("uld" is not chunked:
    it sorts float32 probabilities of every position at once). The SAMPLED_LOSSES
    ("sampled_token", "power_token") need `student_tokens_BT` (the student's response ids).
    Unaligned positions hold finite values without meaning: the caller masks them with
    `cross.aligned_BT`.
    """
    if name not in CROSS_LOSSES:
        raise ValueError(f"loss {name!r} is unknown; choose one of {', '.join(CROSS_LOSSES)}")
    if name == "uld":
        teacher_BTV = aligned_teacher_logits(teacher_logits_BUV, cross.columns_BT)
        return sorted_probability_l1(student_logits_BTV, teacher_BTV, temperature)
    student_BTS, teacher_BTS = shared_logits(student_logits_BTV, teacher_logits_BUV, cross, vocab)
    if name == "reverse_kl" and clamp:
        return clamped_reverse_kl(student_BTS, teacher_BTS, temperature)
    if clamp:
        raise UserError(f"the teacher log-prob clamp is for --loss reverse_kl, not {name}")
    if name == "reverse_kl":
        return chunked_reverse_kl(student_BTS, teacher_BTS, temperature=temperature)
    logp = {}
    if name in SAMPLED_LOSSES:
        if student_tokens_BT is None:
            raise ValueError(f"loss {name!r} needs student_tokens_BT")
        index_BT = vocab.shared_index(student_tokens_BT.to(student_BTS.device)).clamp(min=0)
        logp = {
            "student_logp_BT": token_logprobs(student_BTS, index_BT),
            "teacher_logp_BT": token_logprobs(teacher_BTS, index_BT),
        }
    return per_position_loss(
        name, student_BTS, teacher_BTS, temperature=temperature, beta=beta, topk=topk,
        power_alpha=power_alpha, **logp,
    )  # fmt: skip


def clamped_reverse_kl(student_BTS: Tensor, teacher_BTS: Tensor, temperature: float = 1.0):
    """sum_s p_s (log p_s - max(log p_t, -20)) per position, both distributions renormalised
    over the shared strings first: the released code's cross-tokenizer loss. The clamp comes
    after the renormalisation and nothing renormalises after it, so a teacher that puts less
    than e^-20 on a string is taken to put e^-20 there (its "distribution" then sums to a
    little more than 1), which bounds the loss where the teacher rules a student token out."""
    logp_s_BTS = torch.log_softmax(student_BTS.float() / temperature, dim=-1)
    logp_t_BTS = torch.log_softmax(teacher_BTS.float() / temperature, dim=-1)
    logp_t_BTS = logp_t_BTS.clamp(min=TEACHER_LOGP_FLOOR, max=0.0)
    return (logp_s_BTS.exp() * (logp_s_BTS - logp_t_BTS)).sum(-1)


@torch.no_grad()
def pair_position_stats(
    student: Policy, teacher: Policy, problems: Sequence[Problem], responses: list[list[int]]
) -> pd.DataFrame:
    """`scoring.position_stats` for any pair: through text when the tokenizers differ (same
    columns, one row per aligned student token, every statistic over the shared strings)."""
    if vocabularies_agree(student.tokenizer, teacher.tokenizer):
        return scoring.position_stats(student, teacher, problems, responses)
    vocab = shared_vocab(student.tokenizer, teacher.tokenizer)

    def score(rows: range, part: list[list[int]], s_batch: ScoringBatch):
        prompts = [teacher.prompt_ids(problems[i].problem) for i in rows]
        cross = build_cross_batch(student.tokenizer, teacher.tokenizer, prompts, part, vocab)
        t_logits = response_logits(teacher.loaded.model, cross.teacher.to(teacher.loaded.device))
        s_logits = response_logits(student.loaded.model, s_batch)
        cross = cross.to(s_logits.device)
        s_logits, t_logits = shared_logits(s_logits, t_logits.to(s_logits.device), cross, vocab)
        mask_BT = s_batch.response_mask_BT & cross.aligned_BT
        return chunked_position_stats(s_logits, t_logits), mask_BT

    return scoring.stats_by_micro_batch(student, problems, responses, score)
