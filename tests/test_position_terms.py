"""Exact tests for esr_lab.position_terms: IW-OPD's weights and EOPD's gate on hand cases."""

from __future__ import annotations

import pytest
import torch

from esr_lab.position_terms import (
    eopd_coefficients,
    extra_terms,
    iw_opd_weights,
    position_weights,
)
from esr_lab.train_config import TrainConfig


def test_iw_opd_weights_hand_computed() -> None:
    # Row 0: response at positions 0-2 (3 is padding). Discrepancies |log pi_t - log pi_s|:
    # |-1.5 + 1| = 0.5, |-1 + 2| = 1, 0, (padding: ignored). D = 1.5; the prefixes before each
    # position are 0, 0.5, 1.5, so with gamma 0.5: 1.5, 1 + 0.5 * (1 - 1/3) = 4/3, and 1.0.
    # Row 1: left padding, student equals teacher: D is floored at 1e-8, every weight 1 + gamma.
    s = torch.tensor([[-1.0, -2.0, -1.0, -9.0], [-3.0, -1.0, -2.0, -0.5]])
    t = torch.tensor([[-1.5, -1.0, -1.0, -0.1], [-7.0, -1.0, -2.0, -0.5]])
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    w = iw_opd_weights(s, t, mask, gamma=0.5)
    torch.testing.assert_close(w[0, :3], torch.tensor([1.5, 4 / 3, 1.0]))
    torch.testing.assert_close(w[1, 1:], torch.full((3,), 1.5))
    assert torch.equal(iw_opd_weights(s, t, mask, gamma=0.0), torch.ones(2, 4))
    with pytest.raises(ValueError, match="gamma=-1"):
        iw_opd_weights(s, t, mask, gamma=-1.0)


def test_iw_opd_weights_are_trls_formula_and_carry_no_gradient() -> None:
    """TRL's `_compute_iw_opd_loss` (trl/experimental/iw_opd), written out: advantages
    a = teacher - student log-prob of the sampled token, zero off the mask."""
    g = torch.Generator().manual_seed(0)
    s = (-3 * torch.rand(3, 6, generator=g)).requires_grad_()
    t = -3 * torch.rand(3, 6, generator=g)
    mask = torch.rand(3, 6, generator=g) > 0.3
    a = torch.where(mask, t - s.detach(), torch.zeros(3, 6)).abs()
    prefix = a.cumsum(dim=1) - a
    total = a.sum(dim=1, keepdim=True).clamp_min(1e-8)
    trl = 1.0 + 0.7 * (1.0 - prefix / total)
    w = iw_opd_weights(s, t, mask, gamma=0.7)
    torch.testing.assert_close(w, trl)
    assert not w.requires_grad


def test_eopd_gate_is_strictly_above_the_threshold() -> None:
    entropy = torch.tensor([[0.5, 0.8, 1.2], [0.0, 2.0, 0.81]])
    torch.testing.assert_close(
        eopd_coefficients(entropy, threshold=0.8, coef=2.0),
        torch.tensor([[0.0, 0.0, 2.0], [0.0, 2.0, 2.0]]),
    )


def test_a_config_names_its_terms() -> None:
    stats = {
        "student_logp": torch.tensor([[-1.0, -2.0]]),
        "teacher_logp": torch.tensor([[-1.5, -1.0]]),
        "teacher_entropy": torch.tensor([[0.5, 1.0]]),
    }
    mask = torch.tensor([[True, True]])
    plain = TrainConfig()
    assert position_weights(plain, stats, mask) is None and extra_terms(plain, stats) == []
    iw = TrainConfig(position_weights="iw_opd", iw_gamma=1.0)
    # d = 0.5, 1: weights 1 + 1 * (1 - 0) = 2 and 1 + (1 - 0.5 / 1.5) = 5/3
    torch.testing.assert_close(position_weights(iw, stats, mask), torch.tensor([[2.0, 5 / 3]]))
    [(loss, coefficient)] = extra_terms(TrainConfig(eopd_coef=1.0), stats)
    assert loss == "forward_kl"
    torch.testing.assert_close(coefficient, torch.tensor([[0.0, 1.0]]))
