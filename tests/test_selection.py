"""Exact tests for esr_lab.selection on hand-built masks and scores."""

import pytest
import torch
from torch import Tensor

from esr_lab.choices import progressive_n
from esr_lab.selection import (
    SELECTORS,
    all_positions,
    first_n,
    random_k,
    select_positions,
    tip_sample,
    top_k_by_score,
    weighted_sample_k,
)


def _mask(*rows: str) -> Tensor:
    """'.' = prompt/padding/after-EOS, 'x' = real response token."""
    return torch.tensor([[c == "x" for c in row] for row in rows])


# Left padding + prompt, right padding, early EOS, and an empty row.
RESPONSE_BT = _mask(
    "...xxxxx",
    "xxxxxx..",
    "xx......",
    "........",
)


def test_first_n_padding_and_early_eos() -> None:
    assert (
        first_n(RESPONSE_BT, 3).tolist()
        == _mask(
            "...xxx..",
            "xxx.....",
            "xx......",
            "........",
        ).tolist()
    )
    assert first_n(RESPONSE_BT, 1).sum(-1).tolist() == [1, 1, 1, 0]


def test_first_n_long_enough_equals_all_positions() -> None:
    for n in (6, 8, 1000):
        assert torch.equal(first_n(RESPONSE_BT, n), all_positions(RESPONSE_BT))
    assert not torch.equal(first_n(RESPONSE_BT, 4), all_positions(RESPONSE_BT))


def test_first_n_rejects_zero() -> None:
    with pytest.raises(ValueError, match="n=0"):
        first_n(RESPONSE_BT, 0)


def test_all_positions_is_a_bool_copy() -> None:
    out = all_positions(RESPONSE_BT.int())
    assert out.dtype == torch.bool and torch.equal(out, RESPONSE_BT)


def test_top_k_by_score_picks_highest_within_mask_and_breaks_ties_early() -> None:
    score_BT = torch.tensor(
        [
            [9.0, 9.0, 9.0, 1.0, 5.0, 3.0, 5.0, 2.0],  # 9s are prompt: must not be chosen
            [2.0, 2.0, 7.0, 2.0, 0.0, 1.0, 8.0, 8.0],  # tie at 2: earliest wins
            [0.0, -1.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],  # shorter than k: all real positions
            [1.0] * 8,
        ]
    )
    # row 0: 5 @ 4, 5 @ 6, 3 @ 5; row 1: 7 @ 2, then the tie at 2 goes to ids 0 and 1
    assert (
        top_k_by_score(score_BT, RESPONSE_BT, 3).tolist()
        == _mask(
            "....xxx.",
            "xxx.....",
            "xx......",
            "........",
        ).tolist()
    )
    assert top_k_by_score(score_BT, RESPONSE_BT, 100).tolist() == RESPONSE_BT.tolist()


def test_top_k_by_score_ties_are_deterministic_on_long_rows() -> None:
    # Many ties over thousands of positions: an unstable sort would reorder equal scores.
    gen = torch.Generator().manual_seed(0)
    score_BT = torch.randint(0, 3, (3, 3000), generator=gen).float()
    mask_BT = torch.rand(3, 3000, generator=gen) < 0.8
    got = top_k_by_score(score_BT, mask_BT, 700)
    for b in range(3):
        real = [t for t in range(3000) if mask_BT[b, t]]
        best = sorted(real, key=lambda t: (-score_BT[b, t].item(), t))[:700]
        assert got[b].nonzero()[:, 0].tolist() == sorted(best)


def _gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_random_k_is_reproducible_and_respects_mask() -> None:
    a = random_k(RESPONSE_BT, 2, _gens(7, 8, 9, 10))
    b = random_k(RESPONSE_BT, 2, _gens(7, 8, 9, 10))
    assert torch.equal(a, b)
    assert not (a & ~RESPONSE_BT).any()
    assert a.sum(-1).tolist() == [2, 2, 2, 0]
    draws = {tuple(random_k(RESPONSE_BT, 2, _gens(s, 0, 0, 0))[0].tolist()) for s in range(10)}
    assert len(draws) > 1


def test_random_k_rows_do_not_depend_on_their_batch() -> None:
    """A row's positions come from its own seed: split into micro-batches, or padded wider,
    it gets the same positions (the old selector drew one noise tensor per batch, so rows in
    different micro-batches shared positions and the choice depended on --micro-batch)."""
    mask_BT = torch.ones(4, 30, dtype=torch.bool)
    whole = random_k(mask_BT, 5, _gens(1, 2, 3, 4), width=64)
    halves = torch.cat(
        [random_k(mask_BT[:2], 5, _gens(1, 2), width=64), random_k(mask_BT[2:], 5, _gens(3, 4), 64)]
    )
    assert torch.equal(whole, halves)
    wider = random_k(
        torch.ones(4, 40, dtype=torch.bool) & (torch.arange(40) < 30),
        5,
        _gens(1, 2, 3, 4),
        width=64,
    )
    assert torch.equal(wider[:, :30], whole)
    assert len({tuple(row.tolist()) for row in whole}) == 4  # rows differ from each other


def test_weighted_sample_takes_the_largest_keys_log_u_over_w() -> None:
    # One row of 4 response positions (and one of padding), weights 1, 2, 3, 4. With the row's
    # own uniforms u, the keys log(u) / w decide: the two largest are the sample of size 2.
    mask_BT = _mask("xxxx.")
    weight_BT = torch.tensor([[1.0, 2.0, 3.0, 4.0, 9.0]])
    u = torch.rand(8, generator=torch.Generator().manual_seed(5))[:5].double()
    keys = (u.log() / weight_BT[0].double())[:4]
    expected = torch.zeros(1, 5, dtype=torch.bool)
    expected[0, keys.topk(2).indices] = True
    assert torch.equal(weighted_sample_k(weight_BT, mask_BT, 2, _gens(5), width=8), expected)


def test_weighted_sample_first_draw_follows_the_weights() -> None:
    # Without replacement, the first position taken is i with probability w_i / sum(w):
    # 0.1, 0.2, 0.3, 0.4 here. 4,000 rows, each its own seed: within 0.03 (about 4 sd).
    mask_BT = torch.ones(4000, 4, dtype=torch.bool)
    weight_BT = torch.tensor([1.0, 2.0, 3.0, 4.0]).expand(4000, 4)
    first = weighted_sample_k(weight_BT, mask_BT, 1, _gens(*range(4000))).float().mean(0)
    torch.testing.assert_close(first, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.03, rtol=0)


def test_weighted_sample_zero_weights_come_last_but_rows_stay_full() -> None:
    # Row 0: only position 4 has weight; a sample of 1 is always it, a sample of 3 still takes
    # three positions. Row 1 is all zeros: any 3 of its 6, never an unmasked one.
    weight_BT = torch.tensor([[0, 0, 0, 0, 5.0, 0, 0, 0], [0.0] * 8])
    for seed in range(20):
        one = weighted_sample_k(weight_BT, RESPONSE_BT[:2], 1, _gens(seed, seed + 1))
        assert one[0].tolist() == _mask("....x...")[0].tolist()
        three = weighted_sample_k(weight_BT, RESPONSE_BT[:2], 3, _gens(seed, seed + 1))
        assert three.sum(-1).tolist() == [3, 3] and not (three & ~RESPONSE_BT[:2]).any()


def test_tip_draws_by_student_entropy_to_a_power() -> None:
    # entropy 0 at 3 of 5 positions: a sample of 2 is always the two with entropy; power 2
    # weighs entropies 1 and 3 as 1 and 9, i.e. the same keys as weights (1, 9) by hand.
    entropy_BT = torch.tensor([[0.0, 1.0, 0.0, 3.0, 0.0]])
    mask_BT = _mask("xxxxx")
    assert tip_sample(entropy_BT, mask_BT, 2, _gens(3)).tolist() == _mask(".x.x.").tolist()
    squared = tip_sample(entropy_BT, mask_BT, 1, _gens(4), power=2.0)
    by_hand = weighted_sample_k(entropy_BT**2, mask_BT, 1, _gens(4))
    assert torch.equal(squared, by_hand)
    with pytest.raises(ValueError, match="power=0"):
        tip_sample(entropy_BT, mask_BT, 1, _gens(3), power=0.0)


def test_select_positions_dispatch() -> None:
    rkl_BT = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5.0]] * 4)
    hs_BT = torch.tensor([[0, 0, 0, 5, 4, 3, 2, 1.0]] * 4)
    ht_BT = torch.tensor([[0, 0, 0, 1, 1, 1, 9, 1.0]] * 4)
    kw = dict(rkl_BT=rkl_BT, fkl_BT=hs_BT, student_entropy_BT=hs_BT, teacher_entropy_BT=ht_BT)
    # response ids 3..7 of row 0; each comment lists the scores there
    top_row = {
        "top_rkl": "......xx",  # 1 2 3 4 5
        "top_fkl": "...xx...",  # 5 4 3 2 1
        "top_student_entropy": "...xx...",  # 5 4 3 2 1
        "top_teacher_entropy": "...x..x.",  # 1 1 1 9 1: 9, then the earliest 1
        "rkl_x_hs": "....xx..",  # 5 8 9 8 5: 9, then the earlier 8
        "ht_x_hs": "...x..x.",  # 5 4 3 18 1
        "rkl_x_ht_x_hs": ".....xx.",  # 5 8 9 72 5
    }
    for name, row in top_row.items():
        got = select_positions(name, RESPONSE_BT, budget=2, **kw)
        assert not (got & ~RESPONSE_BT).any()
        assert got[0].tolist() == _mask(row)[0].tolist(), name
    assert torch.equal(select_positions("first_n", RESPONSE_BT, n=2), first_n(RESPONSE_BT, 2))
    assert torch.equal(select_positions("first_n", RESPONSE_BT, budget=2), first_n(RESPONSE_BT, 2))
    assert torch.equal(select_positions("all", RESPONSE_BT), RESPONSE_BT)
    gens = _gens(1, 2, 3, 4)
    assert select_positions("random", RESPONSE_BT, budget=2, generators=gens).sum().item() == 6
    tip = select_positions("tip", RESPONSE_BT, budget=2, generators=_gens(1, 2, 3, 4), **kw)
    assert torch.equal(tip, tip_sample(hs_BT, RESPONSE_BT, 2, _gens(1, 2, 3, 4)))
    assert set(top_row) | {"first_n", "all", "random", "tip"} == set(SELECTORS)


def test_select_positions_errors() -> None:
    with pytest.raises(ValueError, match="first_n"):
        select_positions("top_kl", RESPONSE_BT, budget=2)
    with pytest.raises(ValueError, match="rkl_BT"):
        select_positions("top_rkl", RESPONSE_BT, budget=2)
    with pytest.raises(ValueError, match="budget"):
        select_positions("top_rkl", RESPONSE_BT, rkl_BT=torch.ones(4, 8))
    with pytest.raises(ValueError, match="n"):
        select_positions("first_n", RESPONSE_BT)
    with pytest.raises(ValueError, match="Generator"):
        select_positions("random", RESPONSE_BT, budget=2)
    with pytest.raises(ValueError, match="Generator"):
        select_positions("tip", RESPONSE_BT, budget=2, student_entropy_BT=torch.ones(4, 8))
    with pytest.raises(ValueError, match="student_entropy_BT"):
        select_positions("tip", RESPONSE_BT, budget=2, generators=_gens(1, 2, 3, 4))
    with pytest.raises(ValueError, match="k=0"):
        select_positions("top_rkl", RESPONSE_BT, budget=0, rkl_BT=torch.ones(4, 8))


def test_progressive_n_linear_schedule() -> None:
    # Steps are 1-based: the first step trains on n_start, the last on n_end.
    assert [progressive_n(s, 5, 10, 50) for s in range(1, 8)] == [10, 20, 30, 40, 50, 50, 50]
    assert progressive_n(1, 1, 10, 50) == 10
    assert progressive_n(4, 4, 100, 20) == 20
    # The paper's 5 -> 200 over 200 steps: 5 at step 1 (was 6), 200 only at step 200 (was 199).
    assert progressive_n(1, 200, 5, 200) == 5
    assert progressive_n(199, 200, 5, 200) == 199
    assert progressive_n(200, 200, 5, 200) == 200


def test_progressive_n_step_schedule_is_the_step_number() -> None:
    assert [progressive_n(s, 200, 1, 200, "step") for s in (1, 2, 50, 200, 250)] == [
        1,
        2,
        50,
        200,
        200,
    ]
    assert progressive_n(2, 200, 5, 200, "step") == 5
    with pytest.raises(ValueError, match="unknown progressive schedule 'cubic'"):
        progressive_n(1, 10, 1, 5, "cubic")
    with pytest.raises(ValueError, match="n_start"):
        progressive_n(0, 10, 0, 50)
    with pytest.raises(ValueError, match="step"):
        progressive_n(-1, 10, 1, 50)
