"""Per-position loss weights and extra per-position loss terms: the one hook the training step
applies to whatever loss a run trains, so that methods which reweight positions (IW-OPD) or add a
divergence where a condition holds (EOPD) need no branch of their own in the step.

A run's per-position loss l_t becomes

    w_t * (l_t + sum_k c_k,t * L_k,t)

with w_t the position weights and each extra term a named per-position loss L_k (one of
`choices.LOSSES`, computed by the trainer exactly as it computes the main loss: fused from hidden
states or from logits) scaled by a coefficient c_k,t. Weights and coefficients are constants (no
gradient flows through them) and each is computed from its own row's positions only, so
micro-batches still add up to the whole batch, and the reduction stays `divergences.reduce_loss`:
it sums the weighted values over the selected positions and divides by the same counts as
without weights (TRL's IW-OPD, too, divides its weighted loss by the number of tokens).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from esr_lab.train_config import TrainConfig

# TRL's `iw_opd_epsilon` default: the floor of a row's total discrepancy, so that a row whose
# student already matches the teacher on every sampled token gets weights 1 + gamma, not 0 / 0.
IW_EPSILON = 1e-8


def iw_opd_weights(
    student_logp_BT: Tensor, teacher_logp_BT: Tensor, mask_BT: Tensor, gamma: float
) -> Tensor:
    """IW-OPD's weights w_t = 1 + gamma * (1 - D_<t / D) per position [B, T].

    d_t = |log pi_t(y_t) - log pi_s(y_t)| is the discrepancy at a sampled token, D_<t the sum of
    d over the row's earlier positions of `mask_BT` (not counting t) and D = max(sum of d over
    the row, IW_EPSILON). The first position gets 1 + gamma, and a position's weight falls as the
    prefix before it drifts from the teacher: later tokens, whose teacher signal is read on an
    ever less teacher-like prefix, weigh less. Positions outside `mask_BT` add nothing to D.
    """
    # IW-OPD (arXiv 2606.22600, Algorithm 1); TRL trl/experimental/iw_opd/iw_opd_trainer.py
    # `_compute_iw_opd_loss`: weights = 1 + gamma * (1 - prefix_abs / total_abs), detached.
    if gamma < 0:
        raise ValueError(f"gamma={gamma} is not accepted; use a number >= 0")
    gap_BT = (teacher_logp_BT - student_logp_BT).abs().detach()
    gap_BT = torch.where(mask_BT.bool(), gap_BT, torch.zeros_like(gap_BT))
    before_BT = gap_BT.cumsum(-1) - gap_BT
    total_B1 = gap_BT.sum(-1, keepdim=True).clamp(min=IW_EPSILON)
    return 1.0 + gamma * (1.0 - before_BT / total_B1)


def eopd_coefficients(teacher_entropy_BT: Tensor, threshold: float, coef: float) -> Tensor:
    """EOPD's coefficient on the forward KL per position: `coef` where the teacher's entropy
    (nats) exceeds `threshold`, 0 elsewhere."""
    # EOPD (arXiv 2603.07079): forward KL added on tokens where the teacher's entropy is high;
    # its released code (WLS04/EOPD, verl core_algos `soft_kd_entropy_threshold` 0.8,
    # `soft_kd_loss_coef` 1.0) adds the gated term to the reverse-KL loss.
    return coef * (teacher_entropy_BT > threshold).to(teacher_entropy_BT.dtype)


def active(cfg: TrainConfig) -> bool:
    """Whether the run weights positions or adds a term (and so needs position statistics)."""
    return cfg.position_weights != "uniform" or cfg.eopd_coef > 0


def needs_token_logps(cfg: TrainConfig) -> bool:
    """Whether the hook reads the sampled tokens' log-probs from the position statistics."""
    return cfg.position_weights == "iw_opd"


def position_weights(cfg: TrainConfig, stats: dict, mask_BT: Tensor) -> Tensor | None:
    """The run's weights [B, T] over the rows of `stats`, or None (uniform). `mask_BT`: the
    positions that may carry loss, over which IW-OPD accumulates its discrepancy."""
    if cfg.position_weights == "uniform":
        return None
    if cfg.position_weights == "iw_opd":
        mask_BT = mask_BT.to(stats["student_logp"].device)
        return iw_opd_weights(stats["student_logp"], stats["teacher_logp"], mask_BT, cfg.iw_gamma)
    raise ValueError(f"position weights {cfg.position_weights!r} are unknown")


def extra_terms(cfg: TrainConfig, stats: dict) -> list[tuple[str, Tensor]]:
    """The run's extra terms: (loss name, coefficient [B, T]) pairs, none by default."""
    if cfg.eopd_coef > 0:
        coefficient_BT = eopd_coefficients(
            stats["teacher_entropy"], cfg.eopd_threshold, cfg.eopd_coef
        )
        return [("forward_kl", coefficient_BT)]
    return []
