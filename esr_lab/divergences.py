"""Per-position divergences between student and teacher next-token distributions.

Everything here is pure tensor maths over logits shaped [..., V]: no models, no masks beyond
`reduce_loss`. Log-probabilities are taken in at least float32 (a float64 input stays float64 so
that `gradcheck` can verify the gradients), because bf16 log-softmax over 150k ids loses the
small differences the KL is made of. Logits must be finite.

The ESR paper (arXiv 2605.27028) trains on the full-vocabulary reverse KL per position; the
sampled-token and top-K support estimators are the options of arXiv 2603.25562, the JSD
family follows TRL's GKDTrainer so that results can be compared with it, and the bounded
sampled-token cost is PowerOPD's (arXiv 2606.17199).

Real vocabularies (151,936 ids) times 1,024+ positions do not fit as float32 log-probs, so the
`chunked_*` functions walk over blocks of positions and keep one block alive at a time.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from esr_lab.choices import LOSSES, REDUCTIONS, SAMPLED_LOSSES


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    """Log-softmax at temperature, computed in at least float32 for a stable KL."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} is not accepted; use a number > 0")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.log_softmax(logits.to(dtype) / temperature, dim=-1)


def _kl_from_logp(logp_p: Tensor, logp_q: Tensor) -> Tensor:
    """KL(p || q) summed over the last axis, from log-probabilities."""
    return (logp_p.exp() * (logp_p - logp_q)).sum(-1)


def _entropy_from_logp(logp: Tensor) -> Tensor:
    """Shannon entropy (nats) over the last axis, from log-probabilities."""
    return -(logp.exp() * logp).sum(-1)


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(pi_s || pi_t) per position, [..., V] -> [...]; the OPD/ESR training loss."""
    # Reverse KL per position: ESR paper (arXiv 2605.27028), eq. for the OPD loss.
    return _kl_from_logp(
        _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)
    )


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(pi_t || pi_s) per position: mass-covering, the supervised-KD direction."""
    # Forward KL as in word-level KD (Hinton et al. 2015; TRL GKD beta=0).
    return _kl_from_logp(
        _log_probs(teacher_logits, temperature), _log_probs(student_logits, temperature)
    )


def generalized_jsd(
    student_logits: Tensor, teacher_logits: Tensor, beta: float, temperature: float = 1.0
) -> Tensor:
    """Generalized JSD per position, with TRL GKDTrainer.generalized_jsd_loss's convention.

    beta=0 is exactly forward KL(t || s) and beta=1 exactly reverse KL(s || t); in between it is
    beta * KL(p_t || m) + (1 - beta) * KL(p_s || m) with m = beta * p_t + (1 - beta) * p_s.
    The endpoints are special-cased as TRL does: the mixture formula itself tends to 0 (not to
    a KL) as beta -> 0 or 1, so the family is discontinuous there by construction.
    """
    # Generalized JSD: Agarwal et al. 2024 (GKD, arXiv 2306.13649) eq. 1, TRL's beta convention.
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta} is not accepted; use a number in [0, 1]")
    logp_s = _log_probs(student_logits, temperature)
    logp_t = _log_probs(teacher_logits, temperature)
    if beta == 0.0:
        return _kl_from_logp(logp_t, logp_s)
    if beta == 1.0:
        return _kl_from_logp(logp_s, logp_t)
    logp_m = torch.logsumexp(
        torch.stack([logp_s + math.log(1.0 - beta), logp_t + math.log(beta)]), dim=0
    )
    return beta * _kl_from_logp(logp_t, logp_m) + (1.0 - beta) * _kl_from_logp(logp_s, logp_m)


def entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy (nats) of softmax(logits / T) per position; the paper's H_s and H_t."""
    return _entropy_from_logp(_log_probs(logits, temperature))


def sampled_token_advantage(student_logp_BT: Tensor, teacher_logp_BT: Tensor) -> Tensor:
    """log pi_s(y_t) - log pi_t(y_t): unbiased one-sample estimate of the reverse KL at t.

    Positive means the student over-weights the token it sampled (a cost, not a reward). No
    detach here: callers decide what carries gradient.
    """
    # Sampled-token OPD advantage: arXiv 2603.25562 (one-sample reverse-KL estimate).
    return student_logp_BT - teacher_logp_BT


def sampled_token_pg_loss(student_logp_BT: Tensor, teacher_logp_BT: Tensor) -> Tensor:
    """Per-position surrogate A.detach() * log pi_s(y_t) whose gradient is that of reverse KL.

    With y ~ pi_s and A(y) = log pi_s(y) - log pi_t(y), KL = E_y[A(y)], so
    grad KL = sum_y grad(pi_s(y)) A(y) + sum_y pi_s(y) grad(A(y))
            = E_y[A(y) grad log pi_s(y)] + E_y[grad log pi_s(y)].
    The last term is sum_y grad pi_s(y) = grad 1 = 0, so the expected gradient of the surrogate
    A.detach() * log pi_s(y) under y ~ pi_s is exactly grad KL (REINFORCE with the per-token
    cost A). The teacher term is a constant and is detached too.
    """
    # Policy-gradient form of sampled-token OPD: arXiv 2603.25562.
    advantage_BT = sampled_token_advantage(student_logp_BT, teacher_logp_BT).detach()
    return advantage_BT * student_logp_BT


def power_token_cost(student_logp_BT: Tensor, teacher_logp_BT: Tensor, alpha: float) -> Tensor:
    """pi_s(y_t)^alpha - pi_t(y_t)^alpha: PowerOPD's bounded per-token cost, in [-1, 1].

    The negative of PowerOPD's reward r = p_T(y)^alpha - p_S(y)^alpha, with the sign of
    `sampled_token_advantage` (positive: the student over-weights its token). It is bounded by
    construction where the log-ratio is not, and has the log-ratio's sign.
    """
    # PowerOPD (arXiv 2606.17199), the bounded reward; EIT-NLP/PowerOPD opd_dynamics/trainer.py.
    if alpha <= 0:
        raise ValueError(f"alpha={alpha} is not accepted; use a number > 0")
    return (alpha * student_logp_BT).exp() - (alpha * teacher_logp_BT).exp()


def power_token_pg_loss(
    student_logp_BT: Tensor, teacher_logp_BT: Tensor, alpha: float = 5.0
) -> Tensor:
    """Per-position surrogate cost.detach() * log pi_s(y_t) with PowerOPD's bounded cost.

    `sampled_token_pg_loss` with the cost `power_token_cost` in place of the log-ratio: the
    released code's loss -(reward * log p_S(y)), reward detached.
    """
    # PowerOPD (arXiv 2606.17199): loss = -(r.detach() * log p_S(o_t)), r = p_T^a - p_S^a.
    cost_BT = power_token_cost(student_logp_BT, teacher_logp_BT, alpha).detach()
    return cost_BT * student_logp_BT


def topk_support_kl(
    student_logits: Tensor, teacher_logits: Tensor, k: int = 32, temperature: float = 1.0
) -> Tensor:
    """Reverse KL over the teacher's top-k ids, with both distributions renormalised there.

    Renormalising matters: without it the student's mass outside S is simply dropped and
    training collapses (arXiv 2603.25562). A vocabulary smaller than k uses all of it, so
    k >= V equals `reverse_kl`.
    """
    # Local support matching (teacher top-K, renormalised): arXiv 2603.25562.
    if k < 1:
        raise ValueError(f"topk={k} is not accepted; use an integer >= 1")
    k = min(k, teacher_logits.shape[-1])
    support_ids = teacher_logits.topk(k, dim=-1).indices
    return reverse_kl(
        student_logits.gather(-1, support_ids), teacher_logits.gather(-1, support_ids), temperature
    )


def sorted_probability_l1(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0
) -> Tensor:
    """ULD: sum_i |sort(p_s)_i - sort(p_t)_i| per position, [..., V_s] and [..., V_t] -> [...].

    Both distributions are sorted in decreasing order and the shorter one is padded with zeros,
    so the two vocabularies need not share a single id or string: this is the closed form of
    the Wasserstein-1 distance under a uniform transport cost. It ignores which token carries
    which probability, so it matches the shape of the teacher's distribution, not its content.
    """
    # Universal Logit Distillation: Boizard et al. 2024 (arXiv 2402.12030); TRL ULDLoss / GOLD.
    p_s = _log_probs(student_logits, temperature).exp().sort(-1, descending=True).values
    p_t = _log_probs(teacher_logits, temperature).exp().sort(-1, descending=True).values
    width = max(p_s.shape[-1], p_t.shape[-1])
    p_s = F.pad(p_s, (0, width - p_s.shape[-1]))
    p_t = F.pad(p_t, (0, width - p_t.shape[-1]))
    return (p_s - p_t).abs().sum(-1)


def per_position_loss(
    name: str,
    student_logits_BTV: Tensor | None,
    teacher_logits_BTV: Tensor | None,
    *,
    student_logp_BT: Tensor | None = None,
    teacher_logp_BT: Tensor | None = None,
    temperature: float = 1.0,
    beta: float = 0.5,
    topk: int = 32,
    power_alpha: float = 5.0,
) -> Tensor:
    """Per-position loss [B, T] by name; one of LOSSES.

    The SAMPLED_LOSSES ("sampled_token", "power_token") read only the log-probs of the sampled
    tokens (the logits may be None); every other loss reads only the logits.
    """
    if name not in LOSSES:
        raise ValueError(f"loss {name!r} is unknown; choose one of {', '.join(LOSSES)}")
    if name in SAMPLED_LOSSES:
        if student_logp_BT is None or teacher_logp_BT is None:
            raise ValueError(f"loss {name!r} needs student_logp_BT and teacher_logp_BT")
        if name == "power_token":
            return power_token_pg_loss(student_logp_BT, teacher_logp_BT, power_alpha)
        return sampled_token_pg_loss(student_logp_BT, teacher_logp_BT)
    if student_logits_BTV is None or teacher_logits_BTV is None:
        raise ValueError(f"loss {name!r} needs student and teacher logits")
    s, t = student_logits_BTV, teacher_logits_BTV
    losses = {
        "reverse_kl": lambda: reverse_kl(s, t, temperature),
        "forward_kl": lambda: forward_kl(s, t, temperature),
        "jsd": lambda: generalized_jsd(s, t, beta, temperature),
        "topk_support": lambda: topk_support_kl(s, t, topk, temperature),
    }
    return losses[name]()


def reduce_loss(
    per_pos_BT: Tensor, mask_BT: Tensor, mode: str = "sequence_sum", row_cap: float | None = None
) -> Tensor:
    """Scalar loss from per-position values over the selected positions.

    "sequence_sum" is the paper's objective as written: sum over each sequence's selected
    positions, then the mean over ALL sequences. A sequence with no selected position counts as
    0 in that mean rather than being dropped, so the step's scale depends on the batch size only
    and not on which rows happened to be empty.
    "sequence_mean" is the paper's released code: each trajectory's mean over its selected
    positions (`F.kl_div(..., reduction="batchmean")` on that trajectory), then the mean over
    trajectories. The code drops empty trajectories, so rows with no selected position are left
    out of the mean here too (0 when no row has any).
    "token_mean" is TRL's "batchmean": total over selected positions divided by their number
    (0 when there are none).
    Unselected positions are excluded with `where`, so NaN/inf there cannot leak into the sum.
    `row_cap` (the released code's cross-tokenizer clamp, `loss_traj.clamp(max=50)`): each
    row's mean over its selected positions is clamped at row_cap before the reduction, which
    then reads the row as count x that mean; a row above the cap gets no gradient.
    """
    if mode not in REDUCTIONS:
        raise ValueError(f"reduction {mode!r} is unknown; choose one of {', '.join(REDUCTIONS)}")
    mask_BT = mask_BT.bool()
    kept_BT = torch.where(mask_BT, per_pos_BT, torch.zeros_like(per_pos_BT))
    counts_B = mask_BT.sum(-1)
    sums_B = kept_BT.sum(-1)
    if row_cap is not None:
        sums_B = (sums_B / counts_B.clamp(min=1)).clamp(max=row_cap) * counts_B
    if mode == "sequence_sum":
        return sums_B.mean()
    if mode == "sequence_mean":
        means_B = sums_B / counts_B.clamp(min=1)
        return means_B.sum() / (counts_B > 0).sum().clamp(min=1)
    return sums_B.sum() / counts_B.sum().clamp(min=1)


def reduction_counts(selected_BT: Tensor) -> dict[str, int]:
    """What each reduction averages over: the selected positions (token_mean), the rows with
    one (sequence_mean), all rows (sequence_sum)."""
    return {
        "token_mean": int(selected_BT.sum()),
        "sequence_mean": int(selected_BT.any(-1).sum()),
        "sequence_sum": selected_BT.shape[0],
    }


def micro_batch_loss(
    per_pos_BT: Tensor,
    mask_BT: Tensor,
    mode: str,
    batch_count: int,
    row_cap: float | None = None,
) -> Tensor:
    """A micro-batch's part of the whole batch's loss: its own `reduce_loss`, weighted by its
    count of what `mode` averages over (`reduction_counts`) out of the whole batch's
    `batch_count` (summed over every micro-batch and process), so that the micro-batches'
    losses, and their gradients, add up to the loss of the batch reduced at once."""
    weight = reduction_counts(mask_BT.bool())[mode] / max(batch_count, 1)
    return reduce_loss(per_pos_BT, mask_BT, mode, row_cap) * weight


def _position_blocks(shape_BTV: torch.Size, chunk: int) -> list[tuple[int, slice]]:
    """(row, slice of positions) blocks; per-row slices are views, so nothing is copied."""
    if chunk < 1:
        raise ValueError(f"chunk={chunk} is not accepted; use an integer >= 1")
    B, T = shape_BTV[0], shape_BTV[1]
    return [(b, slice(t0, min(t0 + chunk, T))) for b in range(B) for t0 in range(0, T, chunk)]


@torch.no_grad()
def chunked_position_stats(
    student_logits_BTV: Tensor,
    teacher_logits_BTV: Tensor,
    chunk: int = 128,
    topk: int = 5,
    tokens_BT: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-position diagnostics [B, T] without ever holding full-vocab float32 for all positions.

    Keys: reverse_kl, forward_kl, student_entropy, teacher_entropy, student_top1_prob, and
    teacher_rank_of_student_top1 (how many ids the teacher scores strictly above the student's
    argmax: 0 = same as the teacher's top-1, 1..topk-1 = in the teacher's top 2..topk, topk =
    outside the teacher's top-k). With `tokens_BT`, also student_logp and teacher_logp of those
    tokens. All at temperature 1, float32.
    """
    B, T, _ = student_logits_BTV.shape
    device = student_logits_BTV.device
    names = ["reverse_kl", "forward_kl", "student_entropy", "teacher_entropy", "student_top1_prob"]
    if tokens_BT is not None:
        names += ["student_logp", "teacher_logp"]
    stats = {name: torch.zeros(B, T, dtype=torch.float32, device=device) for name in names}
    stats["teacher_rank_of_student_top1"] = torch.zeros(B, T, dtype=torch.long, device=device)
    for b, ts in _position_blocks(student_logits_BTV.shape, chunk):
        logp_s_CV = _log_probs(student_logits_BTV[b, ts], 1.0).float()
        logp_t_CV = _log_probs(teacher_logits_BTV[b, ts], 1.0).float()
        top1_logp_C, top1_id_C = logp_s_CV.max(-1)
        teacher_at_top1_C = logp_t_CV.gather(-1, top1_id_C[:, None])
        rank_C = (logp_t_CV > teacher_at_top1_C).sum(-1).clamp(max=topk)
        stats["reverse_kl"][b, ts] = _kl_from_logp(logp_s_CV, logp_t_CV)
        stats["forward_kl"][b, ts] = _kl_from_logp(logp_t_CV, logp_s_CV)
        stats["student_entropy"][b, ts] = _entropy_from_logp(logp_s_CV)
        stats["teacher_entropy"][b, ts] = _entropy_from_logp(logp_t_CV)
        stats["student_top1_prob"][b, ts] = top1_logp_C.exp()
        stats["teacher_rank_of_student_top1"][b, ts] = rank_C
        if tokens_BT is not None:
            ids_C1 = tokens_BT[b, ts, None].long()
            stats["student_logp"][b, ts] = logp_s_CV.gather(-1, ids_C1)[:, 0]
            stats["teacher_logp"][b, ts] = logp_t_CV.gather(-1, ids_C1)[:, 0]
    return stats


class _ChunkedReverseKL(torch.autograd.Function):
    """Reverse KL whose forward and backward each hold one block of float32 log-probs.

    Backward uses the closed form d KL / d z_s = p_s * (log p_s - log p_t - KL) / T and
    d KL / d z_t = (p_t - p_s) / T, recomputing the log-probs block by block instead of
    saving them.
    """

    @staticmethod
    def forward(ctx, student_BTV: Tensor, teacher_BTV: Tensor, chunk: int, temperature: float):
        ctx.save_for_backward(student_BTV, teacher_BTV)
        ctx.chunk, ctx.temperature = chunk, temperature
        out_dtype = torch.promote_types(student_BTV.dtype, torch.float32)
        kl_BT = student_BTV.new_zeros(student_BTV.shape[:2], dtype=out_dtype)
        for b, ts in _position_blocks(student_BTV.shape, chunk):
            kl_BT[b, ts] = reverse_kl(student_BTV[b, ts], teacher_BTV[b, ts], temperature)
        return kl_BT

    @staticmethod
    def backward(ctx, grad_BT: Tensor):
        student_BTV, teacher_BTV = ctx.saved_tensors
        need_s, need_t = ctx.needs_input_grad[:2]
        grad_s = torch.zeros_like(student_BTV) if need_s else None
        grad_t = torch.zeros_like(teacher_BTV) if need_t else None
        T = ctx.temperature
        for b, ts in _position_blocks(student_BTV.shape, ctx.chunk):
            logp_s_CV = _log_probs(student_BTV[b, ts], T)
            logp_t_CV = _log_probs(teacher_BTV[b, ts], T)
            p_s_CV = logp_s_CV.exp()
            g_C1 = grad_BT[b, ts, None].to(logp_s_CV.dtype) / T
            if need_s:
                kl_C1 = (p_s_CV * (logp_s_CV - logp_t_CV)).sum(-1, keepdim=True)
                grad_s[b, ts] = g_C1 * p_s_CV * (logp_s_CV - logp_t_CV - kl_C1)
            if need_t:
                grad_t[b, ts] = g_C1 * (logp_t_CV.exp() - p_s_CV)
        return grad_s, grad_t, None, None


def chunked_reverse_kl(
    student_logits_BTV: Tensor,
    teacher_logits_BTV: Tensor,
    chunk: int = 128,
    temperature: float = 1.0,
) -> Tensor:
    """`reverse_kl` [B, T] with gradient, holding float32 log-probs for one block at a time.

    Plain autograd would keep log-probs and probs of every position for the backward (two
    float32 copies of B*T*V); here the backward recomputes them per block from the logits.
    """
    # Reverse KL per position: ESR paper (arXiv 2605.27028); closed-form softmax-KL gradient.
    return _ChunkedReverseKL.apply(student_logits_BTV, teacher_logits_BTV, chunk, temperature)
