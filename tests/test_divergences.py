"""Exact-maths tests for esr_lab.divergences: hand values, TRL's formula, gradients, chunking."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from esr_lab.divergences import (
    LOSSES,
    chunked_position_stats,
    chunked_reverse_kl,
    entropy,
    forward_kl,
    generalized_jsd,
    micro_batch_loss,
    per_position_loss,
    power_token_cost,
    power_token_pg_loss,
    reduce_loss,
    reduction_counts,
    reverse_kl,
    sampled_token_advantage,
    sampled_token_pg_loss,
    sorted_probability_l1,
    topk_support_kl,
)


def trl_generalized_jsd(
    student_logits: Tensor, teacher_logits: Tensor, beta: float, temperature: float
) -> Tensor:
    """Independent reference: TRL GKDTrainer.generalized_jsd_loss (huggingface/trl), per position.

    Written as TRL writes it with F.kl_div(input, target, log_target=True) = KL(target || input),
    then summed over the vocabulary instead of TRL's batch reduction.
    """
    student_logits = student_logits / temperature
    teacher_logits = teacher_logits / temperature
    student_log_probs = F.log_softmax(student_logits, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1)
    if beta == 0:
        jsd = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(teacher_log_probs, student_log_probs, reduction="none", log_target=True)
    else:
        beta_t = torch.tensor(beta, dtype=student_log_probs.dtype)
        mixture_log_probs = torch.logsumexp(
            torch.stack(
                [student_log_probs + torch.log(1 - beta_t), teacher_log_probs + torch.log(beta_t)]
            ),
            dim=0,
        )
        kl_teacher = F.kl_div(
            mixture_log_probs, teacher_log_probs, reduction="none", log_target=True
        )
        kl_student = F.kl_div(
            mixture_log_probs, student_log_probs, reduction="none", log_target=True
        )
        jsd = beta_t * kl_teacher + (1 - beta_t) * kl_student
    return jsd.sum(-1)


def _logits(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (2.0 * torch.randn(*shape, generator=gen)).to(dtype)


# --- hand-computed values -------------------------------------------------------------------


def test_hand_computed_kl_both_directions() -> None:
    s = torch.tensor([0.1, 0.9]).log()
    t = torch.tensor([0.9, 0.1]).log()
    expected = 0.8 * math.log(9)
    assert expected == pytest.approx(1.757780, abs=1e-6)
    assert reverse_kl(s, t).item() == pytest.approx(expected, abs=1e-5)
    assert forward_kl(s, t).item() == pytest.approx(expected, abs=1e-5)


def test_hand_computed_kl_is_asymmetric() -> None:
    # KL([.5,.5] || [.9,.1]) = .5 ln(.5/.9) + .5 ln(.5/.1); the reverse is .9 ln(1.8) + .1 ln(.2)
    s = torch.tensor([0.5, 0.5]).log()
    t = torch.tensor([0.9, 0.1]).log()
    assert reverse_kl(s, t).item() == pytest.approx(
        0.5 * math.log(5 / 9) + 0.5 * math.log(5), abs=1e-6
    )
    assert forward_kl(s, t).item() == pytest.approx(
        0.9 * math.log(1.8) + 0.1 * math.log(0.2), abs=1e-6
    )


def test_entropy_uniform_is_log_v_and_one_hot_is_zero() -> None:
    assert entropy(torch.zeros(3, 7)).tolist() == pytest.approx([math.log(7)] * 3, abs=1e-6)
    assert entropy(torch.tensor([0.0, -1e4, -1e4])).item() == pytest.approx(0.0, abs=1e-6)


def test_shapes_and_float32_upcast() -> None:
    s, t = _logits(2, 3, 11, dtype=torch.bfloat16), _logits(2, 3, 11, seed=1).bfloat16()
    out = reverse_kl(s, t)
    assert out.shape == (2, 3) and out.dtype == torch.float32
    assert reverse_kl(s.double(), t.double()).dtype == torch.float64
    assert (reverse_kl(s, t) >= -1e-6).all() and (reverse_kl(s, s) < 1e-6).all()


def test_temperature_scales_logits() -> None:
    s, t = _logits(4, 9), _logits(4, 9, seed=1)
    torch.testing.assert_close(reverse_kl(s, t, temperature=2.0), reverse_kl(s / 2, t / 2))
    with pytest.raises(ValueError, match="temperature"):
        reverse_kl(s, t, temperature=0.0)


# --- the JSD family against TRL --------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_generalized_jsd_matches_trl(beta: float, temperature: float) -> None:
    s, t = _logits(3, 5, 13), _logits(3, 5, 13, seed=1)
    ours = generalized_jsd(s, t, beta, temperature)
    torch.testing.assert_close(
        ours, trl_generalized_jsd(s, t, beta, temperature), atol=1e-5, rtol=1e-5
    )


def test_jsd_endpoints_are_the_kls_and_middle_is_bounded() -> None:
    s, t = _logits(3, 5, 13), _logits(3, 5, 13, seed=1)
    torch.testing.assert_close(generalized_jsd(s, t, 1.0), reverse_kl(s, t))
    torch.testing.assert_close(generalized_jsd(s, t, 0.0), forward_kl(s, t))
    jsd = generalized_jsd(s, t, 0.5)
    assert (jsd >= -1e-6).all() and (jsd <= math.log(2) + 1e-6).all()
    assert not torch.allclose(jsd, reverse_kl(s, t))
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(s, t, 1.5)


# --- gradients --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        lambda s, t: reverse_kl(s, t, temperature=1.5),
        lambda s, t: forward_kl(s, t, temperature=1.5),
        lambda s, t: generalized_jsd(s, t, 0.3, temperature=1.5),
        lambda s, t: topk_support_kl(s, t, k=3, temperature=1.5),
        lambda s, t: chunked_reverse_kl(s, t, chunk=2, temperature=1.5),
        lambda s, t: sorted_probability_l1(s, t, temperature=1.5),
    ],
    ids=["reverse_kl", "forward_kl", "jsd", "topk_support", "chunked_reverse_kl", "uld"],
)
def test_gradcheck_float64(fn) -> None:
    s = _logits(2, 3, 5, dtype=torch.float64).requires_grad_()
    t = _logits(2, 3, 5, seed=1, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(fn, (s, t))


def test_gradcheck_entropy() -> None:
    # The sampled-token surrogate is deliberately not its own derivative (the advantage is
    # detached), so gradcheck does not apply to it; its gradient is tested by expectation below.
    z = _logits(2, 3, 5, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(entropy, (z,))


def test_sampled_token_expected_gradient_equals_reverse_kl_gradient() -> None:
    V = 6
    z_s = _logits(V, dtype=torch.float64).requires_grad_()
    z_t = _logits(V, seed=1, dtype=torch.float64)
    logp_s_V = F.log_softmax(z_s, -1)
    logp_t_V = F.log_softmax(z_t, -1)
    # Enumerate every sampled token y, weighted by its (constant) probability under the student.
    surrogate_V = sampled_token_pg_loss(logp_s_V, logp_t_V)
    expected_grad = torch.autograd.grad((logp_s_V.exp().detach() * surrogate_V).sum(), z_s)[0]
    kl_grad = torch.autograd.grad(reverse_kl(z_s, z_t), z_s)[0]
    torch.testing.assert_close(expected_grad, kl_grad)
    # and the advantage is an unbiased estimate of the value itself
    advantage_V = sampled_token_advantage(logp_s_V, logp_t_V)
    expected_value = (logp_s_V.exp() * advantage_V).sum()
    torch.testing.assert_close(expected_value, reverse_kl(z_s, z_t))


def test_sampled_token_pg_loss_detaches_the_advantage() -> None:
    lp_s = torch.tensor([-0.5, -2.0], requires_grad=True)
    lp_t = torch.tensor([-1.0, -1.0])
    sampled_token_pg_loss(lp_s, lp_t).sum().backward()
    torch.testing.assert_close(lp_s.grad, torch.tensor([0.5, -1.0]))


def test_power_token_hand_computed() -> None:
    # alpha 2: p_s 0.5, p_t 0.25 -> 0.25 - 0.0625 = 0.1875; alpha 1: p_s 0.2, p_t 0.6 -> -0.4
    lp_s = torch.tensor([0.5, 0.2]).log().requires_grad_()
    lp_t = torch.tensor([0.25, 0.6]).log()
    torch.testing.assert_close(power_token_cost(lp_s[:1], lp_t[:1], 2.0), torch.tensor([0.1875]))
    torch.testing.assert_close(power_token_cost(lp_s[1:], lp_t[1:], 1.0), torch.tensor([-0.4]))
    loss = power_token_pg_loss(lp_s, lp_t, alpha=2.0)  # costs 0.1875 and 0.04 - 0.36 = -0.32
    torch.testing.assert_close(loss, torch.tensor([0.1875, -0.32]) * lp_s.detach())
    loss.sum().backward()  # the cost is a constant: d/d log p_s is the cost itself
    torch.testing.assert_close(lp_s.grad, torch.tensor([0.1875, -0.32]))
    with pytest.raises(ValueError, match="alpha=0"):
        power_token_cost(lp_s, lp_t, 0.0)


def test_power_token_is_bounded_and_tends_to_the_log_ratio() -> None:
    # the log-ratio of 1e-30 against 1 is -69; the power cost stays in [-1, 1] with its sign
    lp_s, lp_t = torch.tensor([0.0, math.log(1e-30)]), torch.tensor([math.log(1e-30), 0.0])
    cost = power_token_cost(lp_s, lp_t, 5.0)
    assert cost.abs().max() <= 1.0 and torch.equal(cost.sign(), torch.tensor([1.0, -1.0]))
    # (p_s^a - p_t^a) / a -> log p_s - log p_t as a -> 0: PowerOPD's log-ratio limit
    lp_s = torch.tensor([-0.3, -2.0], dtype=torch.float64)
    lp_t = torch.tensor([-1.2, -0.1], dtype=torch.float64)
    limit = power_token_cost(lp_s, lp_t, 1e-7) / 1e-7
    torch.testing.assert_close(limit, sampled_token_advantage(lp_s, lp_t), rtol=1e-5, atol=0)


# --- top-k support ---------------------------------------------------------------------------


def test_uld_hand_computed() -> None:
    # Sorted and zero-padded: [.9, .1, 0] vs [.5, .3, .2] -> .4 + .2 + .2 = 0.8, either order.
    p_s, p_t = torch.tensor([0.1, 0.9]).log(), torch.tensor([0.2, 0.5, 0.3]).log()
    assert sorted_probability_l1(p_s, p_t).item() == pytest.approx(0.8, abs=1e-6)
    assert sorted_probability_l1(p_t, p_s).item() == pytest.approx(0.8, abs=1e-6)
    # Blind to which token holds which probability: a permuted distribution costs nothing.
    p = torch.tensor([0.3, 0.7]).log()
    assert sorted_probability_l1(p, p.flip(-1)).item() == pytest.approx(0.0, abs=1e-7)


def test_topk_support_full_vocab_equals_reverse_kl() -> None:
    s, t = _logits(2, 4, 10), _logits(2, 4, 10, seed=1)
    torch.testing.assert_close(topk_support_kl(s, t, k=10), reverse_kl(s, t))
    torch.testing.assert_close(topk_support_kl(s, t, k=50), reverse_kl(s, t))


def test_topk_support_renormalises_over_teacher_top_k() -> None:
    # teacher top-2 = ids {0, 1}; renormalised student [.2,.2]->[.5,.5], teacher [.6,.2]->[.75,.25]
    s = torch.tensor([0.2, 0.2, 0.6]).log()
    t = torch.tensor([0.6, 0.2, 0.2]).log()
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert topk_support_kl(s, t, k=2).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="topk"):
        topk_support_kl(s, t, k=0)


# --- dispatch and reduction ------------------------------------------------------------------


def test_per_position_loss_dispatch() -> None:
    s, t = _logits(2, 3, 8), _logits(2, 3, 8, seed=1)
    torch.testing.assert_close(per_position_loss("reverse_kl", s, t), reverse_kl(s, t))
    torch.testing.assert_close(
        per_position_loss("forward_kl", s, t, temperature=2.0), forward_kl(s, t, 2.0)
    )
    torch.testing.assert_close(per_position_loss("jsd", s, t, beta=0.2), generalized_jsd(s, t, 0.2))
    torch.testing.assert_close(
        per_position_loss("topk_support", s, t, topk=3), topk_support_kl(s, t, 3)
    )
    lp_s, lp_t = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(
        per_position_loss("sampled_token", None, None, student_logp_BT=lp_s, teacher_logp_BT=lp_t),
        (lp_s - lp_t) * lp_s,
    )
    torch.testing.assert_close(
        per_position_loss(
            "power_token", None, None, student_logp_BT=lp_s, teacher_logp_BT=lp_t, power_alpha=3.0
        ),
        power_token_pg_loss(lp_s, lp_t, 3.0),
    )
    assert len(LOSSES) == 6
    with pytest.raises(ValueError, match="reverse_kl"):
        per_position_loss("kl", s, t)
    with pytest.raises(ValueError, match="student_logp_BT"):
        per_position_loss("sampled_token", s, t)


def test_reduce_loss_hand_example() -> None:
    per_pos_BT = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, float("nan")], [7.0, 8.0, 9.0]])
    mask_BT = torch.tensor([[True, True, False], [False, True, False], [False, False, False]])
    # sequence sums 3, 5, 0 (the empty row still counts) -> mean 8/3
    assert reduce_loss(per_pos_BT, mask_BT).item() == pytest.approx(8 / 3)
    # selected values 1, 2, 5 -> 8 / 3 tokens as well; change one row to tell them apart
    mask2_BT = mask_BT.clone()
    mask2_BT[2, 2] = True
    assert reduce_loss(per_pos_BT, mask2_BT, "sequence_sum").item() == pytest.approx(17 / 3)
    assert reduce_loss(per_pos_BT, mask2_BT, "token_mean").item() == pytest.approx(17 / 4)
    empty = torch.zeros_like(mask_BT)
    assert reduce_loss(per_pos_BT, empty, "token_mean").item() == 0.0
    assert reduce_loss(per_pos_BT, empty, "sequence_sum").item() == 0.0
    with pytest.raises(ValueError, match="token_mean"):
        reduce_loss(per_pos_BT, mask_BT, "mean")


def test_sequence_mean_is_the_released_codes_per_trajectory_mean() -> None:
    per_pos_BT = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    mask_BT = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    # trajectory means (1 + 2 + 3) / 3 = 2 and 4 / 1 = 4 -> mean 3
    assert reduce_loss(per_pos_BT, mask_BT, "sequence_mean").item() == pytest.approx(3.0)
    # a trajectory with no selected position is left out, as the released code drops it
    with_empty_BT = torch.cat([mask_BT, torch.zeros(1, 4, dtype=torch.long)])
    three_BT = torch.cat([per_pos_BT, torch.full((1, 4), 7.0)])
    assert reduce_loss(three_BT, with_empty_BT, "sequence_mean").item() == pytest.approx(3.0)
    assert reduce_loss(per_pos_BT, torch.zeros_like(mask_BT), "sequence_mean").item() == 0.0
    # equal to F.kl_div's "batchmean" per trajectory, then a mean over trajectories
    s_logits, t_logits = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    rkl_BT = reverse_kl(s_logits, t_logits)
    per_traj = [
        F.kl_div(
            torch.log_softmax(t_logits[b][mask_BT[b].bool()], -1),
            torch.log_softmax(s_logits[b][mask_BT[b].bool()], -1),
            log_target=True,
            reduction="batchmean",
        )
        for b in range(2)
    ]
    expected = torch.stack(per_traj).mean()
    torch.testing.assert_close(reduce_loss(rkl_BT, mask_BT, "sequence_mean"), expected)


def test_reduce_loss_gradient_only_on_selected() -> None:
    per_pos_BT = torch.ones(2, 3, requires_grad=True)
    mask_BT = torch.tensor([[True, False, False], [True, True, True]])
    reduce_loss(per_pos_BT, mask_BT).backward()
    torch.testing.assert_close(per_pos_BT.grad, mask_BT.float() / 2)


# --- chunked versions ------------------------------------------------------------------------


def test_chunked_reverse_kl_matches_plain_in_value_and_gradient() -> None:
    s1 = _logits(3, 10, 50).requires_grad_()
    t1 = _logits(3, 10, 50, seed=1).requires_grad_()
    s2, t2 = s1.detach().clone().requires_grad_(), t1.detach().clone().requires_grad_()
    weights_BT = torch.rand(3, 10, generator=torch.Generator().manual_seed(2))
    plain = reverse_kl(s1, t1, temperature=0.7)
    chunked = chunked_reverse_kl(s2, t2, chunk=4, temperature=0.7)
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-5)
    (plain * weights_BT).sum().backward()
    (chunked * weights_BT).sum().backward()
    torch.testing.assert_close(s2.grad, s1.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(t2.grad, t1.grad, atol=1e-5, rtol=1e-5)


def test_chunked_reverse_kl_on_noncontiguous_bf16_slice() -> None:
    full_s = _logits(2, 12, 30, dtype=torch.bfloat16)
    s = full_s[:, 2:-1].clone().requires_grad_()
    sliced = full_s[:, 2:-1]  # a view, as when cutting the prompt off model logits
    t = _logits(2, 12, 30, seed=1, dtype=torch.bfloat16)[:, 2:-1]
    torch.testing.assert_close(chunked_reverse_kl(sliced, t, chunk=5), reverse_kl(sliced, t))
    chunked_reverse_kl(s, t, chunk=5).sum().backward()
    assert s.grad is not None and s.grad.dtype == torch.bfloat16


def test_chunked_stats_match_plain_functions() -> None:
    s, t = _logits(2, 9, 40), _logits(2, 9, 40, seed=1)
    tokens_BT = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(3))
    stats = chunked_position_stats(s, t, chunk=4, tokens_BT=tokens_BT)
    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats["reverse_kl"], reverse_kl(s, t), **close)
    torch.testing.assert_close(stats["forward_kl"], forward_kl(s, t), **close)
    torch.testing.assert_close(stats["student_entropy"], entropy(s), **close)
    torch.testing.assert_close(stats["teacher_entropy"], entropy(t), **close)
    logp_s, logp_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
    torch.testing.assert_close(stats["student_top1_prob"], logp_s.max(-1).values.exp(), **close)
    ids_BT1 = tokens_BT[..., None]
    torch.testing.assert_close(stats["student_logp"], logp_s.gather(-1, ids_BT1)[..., 0])
    torch.testing.assert_close(stats["teacher_logp"], logp_t.gather(-1, ids_BT1)[..., 0])
    assert "student_logp" not in chunked_position_stats(s, t)


def test_chunked_stats_rank_membership_on_hand_built_logits() -> None:
    # teacher ranks ids 0 > 1 > ... > 7 at every position.
    teacher_V = torch.arange(8, 0, -1).float()
    student_argmax = [0, 1, 4, 5, 7]  # same as top-1 / top-2 / top-5 / just outside / far outside
    student_TV = torch.full((5, 8), -5.0)
    student_TV[torch.arange(5), student_argmax] = math.log(0.7) - math.log(0.3 / 7) - 5.0
    stats = chunked_position_stats(student_TV[None], teacher_V.expand(1, 5, 8), chunk=2, topk=5)
    assert stats["teacher_rank_of_student_top1"].tolist() == [[0, 1, 4, 5, 5]]
    torch.testing.assert_close(stats["student_top1_prob"], torch.full((1, 5), 0.7))
    rank = stats["teacher_rank_of_student_top1"][0]
    assert [
        (rank == 0).sum().item(),
        ((rank >= 1) & (rank < 5)).sum().item(),
        (rank == 5).sum().item(),
    ] == [1, 2, 2]


@pytest.mark.parametrize("mode", ["sequence_sum", "sequence_mean", "token_mean"])
@pytest.mark.parametrize("row_cap", [None, 2.0])
def test_micro_batch_losses_add_up_to_the_whole_batchs(mode, row_cap) -> None:
    torch.manual_seed(0)
    per_pos_BT = torch.rand(5, 7) * 4
    mask_BT = torch.rand(5, 7) > 0.4
    mask_BT[2] = False  # a row with nothing selected
    whole = reduce_loss(per_pos_BT, mask_BT, mode, row_cap)
    count = reduction_counts(mask_BT)[mode]
    parts = [
        micro_batch_loss(per_pos_BT[rows], mask_BT[rows], mode, count, row_cap)
        for rows in (slice(0, 2), slice(2, 3), slice(3, 5))
    ]
    torch.testing.assert_close(sum(parts), whole)
