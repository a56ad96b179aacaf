"""The per-position statistics behind positions, cascade, submode, tokens and suggest-n, on
hand-built logits and values with answers worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from esr_lab import analysis
from esr_lab.divergences import chunked_position_stats
from esr_lab.errors import UserError


def tokens(**columns) -> pd.DataFrame:
    """A per-token table with defaults for the columns a test does not care about."""
    n = len(next(iter(columns.values())))
    base = {
        "row": [0] * n,
        "position": list(range(n)),
        "token_id": [0] * n,
        "reverse_kl": [0.0] * n,
        "student_entropy": [0.0] * n,
        "teacher_entropy": [0.0] * n,
        "student_top1_prob": [0.5] * n,
        "teacher_rank_of_student_top1": [0] * n,
    }
    return pd.DataFrame({**base, **columns})


def test_teacher_rank_buckets_from_hand_built_logits():
    # Teacher ranks ids 0 > 1 > ... > 7; the student's argmax is id 0, 3 and 6 at the three
    # positions: the teacher's top-1, inside its top 2-5, outside its top 5.
    teacher_BTV = torch.arange(8, 0, -1, dtype=torch.float32).repeat(1, 3, 1)
    student_BTV = torch.zeros(1, 3, 8)
    for t, argmax in enumerate((0, 3, 6)):
        student_BTV[0, t, argmax] = 5.0
    stats = chunked_position_stats(student_BTV, teacher_BTV)
    ranks = pd.Series(stats["teacher_rank_of_student_top1"][0].tolist())
    assert ranks.tolist() == [0, 3, 5]
    assert analysis.rank_bucket(ranks).tolist() == list(analysis.RANK_BUCKETS)
    top1 = math.exp(5) / (math.exp(5) + 7)
    assert stats["student_top1_prob"][0].tolist() == pytest.approx([top1] * 3, rel=1e-5)


def test_entropies_of_uniform_and_one_hot_logits_bin_by_position():
    student_BTV = torch.zeros(1, 4, 4)  # uniform over 4 ids: entropy ln 4
    teacher_BTV = torch.tensor([0.0, 0.0, 0.0, 40.0]).repeat(1, 4, 1)  # ~one-hot: entropy ~0
    stats = chunked_position_stats(student_BTV, teacher_BTV)
    table = tokens(
        student_entropy=stats["student_entropy"][0].tolist(),
        teacher_entropy=stats["teacher_entropy"][0].tolist(),
    )
    bins = analysis.position_bins(table, 3)
    assert bins.bin_start.tolist() == [0, 3] and bins.bin_end.tolist() == [3, 6]
    assert bins.tokens.tolist() == [3, 1]
    assert bins.student_entropy.tolist() == pytest.approx([math.log(4)] * 2, rel=1e-5)
    assert bins.teacher_entropy.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_position_bins_average_within_each_bin():
    table = tokens(reverse_kl=[float(k) for k in range(10)])
    bins = analysis.position_bins(table, 4)
    assert bins.bin_start.tolist() == [0, 4, 8]
    assert bins.tokens.tolist() == [4, 4, 2]
    assert bins.reverse_kl.tolist() == pytest.approx([1.5, 5.5, 8.5])


@pytest.mark.parametrize("width", [0, -3])
def test_bin_width_below_one_is_a_user_error(width):
    with pytest.raises(UserError, match="--bin-width must be at least 1"):
        analysis.position_bins(tokens(reverse_kl=[1.0]), width)


def test_cumulative_rule_pools_rollouts_and_picks_the_first_n_reaching_the_threshold():
    # Row 0 has KL 3, 2, 1 and row 1 has KL 1, 1 at positions 0.. : position sums 4, 3, 1.
    table = tokens(
        row=[0, 0, 0, 1, 1], position=[0, 1, 2, 0, 1], reverse_kl=[3.0, 2.0, 1.0, 1.0, 1.0]
    )
    curve = analysis.cumulative_kl(table)
    assert curve.tokens.tolist() == [2, 2, 1]
    assert curve.mean_kl.tolist() == pytest.approx([2.0, 1.5, 1.0])
    assert curve.cumulative_share.tolist() == pytest.approx([0.5, 0.875, 1.0])
    assert analysis.pick_n(curve, 0.45) == 1
    assert analysis.pick_n(curve, 0.5) == 1  # reaching the threshold exactly is enough
    assert analysis.pick_n(curve, 0.51) == 2
    assert analysis.pick_n(curve, 1.0) == 3
    with pytest.raises(UserError, match="--threshold must be in"):
        analysis.pick_n(curve, 0.0)


def test_submode_stats_look_at_the_top_fraction_of_kl_only():
    table = tokens(
        reverse_kl=[float(k) for k in range(10)],
        student_top1_prob=[0.1] * 8 + [0.9, 0.7],
        teacher_rank_of_student_top1=[5] * 8 + [0, 2],
    )
    stats = analysis.submode_stats(table, fraction=0.2)  # the two highest-KL positions: 9, 8
    assert stats["positions"] == 2 and stats["kl_threshold"] == 8.0
    assert stats["top1_prob"] == pytest.approx(0.8)
    assert stats["teacher_top1_pct"] == pytest.approx(50.0)
    assert stats["teacher_top2_5_pct"] == pytest.approx(50.0)
    assert stats["outside_top5_pct"] == 0.0


def test_length_stats():
    stats = analysis.length_stats(list(range(1, 11)))
    assert stats == pytest.approx(
        {"length_p10": 1.9, "length_p50": 5.5, "length_p90": 9.1, "length_mean": 5.5}
    )


def test_cascade_summary_weights_bins_by_tokens_and_splits_at_the_window():
    bins = pd.DataFrame(
        {
            "model": ["base", "base", "base", "esr", "esr", "esr"],
            "bin_start": [0, 10, 20] * 2,
            "tokens": [10, 30, 10, 10, 30, 10],
            "reverse_kl": [2.0, 1.0, 3.0, 1.0, 0.5, 3.0],
        }
    )
    summary = analysis.cascade_summary(bins, window=10).set_index("region")
    assert summary.loc["trained", "closed_pct"] == pytest.approx(50.0)
    # untrained: base (30*1 + 10*3)/40 = 1.5, esr (30*0.5 + 10*3)/40 = 1.125 -> 25% closed
    assert summary.loc["untrained", "base_kl"] == pytest.approx(1.5)
    assert summary.loc["untrained", "trained_kl"] == pytest.approx(1.125)
    assert summary.loc["untrained", "closed_pct"] == pytest.approx(25.0)


def test_edge_bins_and_labels():
    edges = (0, 5, 20, 200)
    starts = analysis.edge_bins(pd.Series([0, 4, 5, 19, 20, 250]), edges)
    assert starts.tolist() == [0, 0, 5, 5, 20, 200]
    assert [analysis.edge_label(s, edges) for s in edges] == ["0-4", "5-19", "20-199", "200+"]


@pytest.mark.parametrize("edges", [(), (5, 10), (0, 10, 10), (0, 20, 5)])
def test_bad_edges_are_a_user_error(edges):
    with pytest.raises(UserError, match="--edges must be increasing"):
        analysis.check_edges(edges)


def test_default_categories():
    texts = pd.Series([" 12", " +", "\\boxed", "{", ".\n", " plan", " so", " cat", "Step"])
    assert analysis.categorize(texts, analysis.DEFAULT_CATEGORIES).tolist() == [
        "numbers",
        "operators",
        "latex_delimiters",
        "latex_delimiters",
        "structural",
        "planning",
        "continuation",
        "other",
        "planning",
    ]


def test_custom_categories_and_a_bad_pattern():
    custom = {"digits": r"^\d$", "words": r"^[a-z]+$"}
    assert analysis.categorize(pd.Series(["7", "ab", "+"]), custom).tolist() == [
        "digits",
        "words",
        "other",
    ]
    with pytest.raises(UserError, match="category 'bad'"):
        analysis.categorize(pd.Series(["x"]), {"bad": "("})


def test_category_table_and_top_tokens_with_a_minimum_count():
    texts = {1: " 7", 2: " plan", 3: " +"}
    table = tokens(
        token_id=[2, 1, 1, 3, 1, 2],
        position=[0, 1, 6, 7, 8, 30],
        reverse_kl=[4.0, 1.0, 2.0, 0.5, 3.0, 2.0],
    )
    cells = analysis.category_table(table, texts, analysis.DEFAULT_CATEGORIES, (0, 5, 20))
    got = {(c.category, c.position_bin): (c.tokens, c.mean_kl) for c in cells.itertuples()}
    assert got == {
        ("planning", "0-4"): (1, 4.0),
        ("numbers", "0-4"): (1, 1.0),
        ("numbers", "5-19"): (2, 2.5),
        ("operators", "5-19"): (1, 0.5),
        ("planning", "20+"): (1, 2.0),
    }
    top = analysis.top_tokens(table, texts, min_count=2, k=20)
    assert top.token.tolist() == [" plan", " 7"]  # mean 3.0 and 2.0; " +" is seen once
    assert top["count"].tolist() == [2, 3] and top["rank"].tolist() == [1, 2]
    assert top.mean_kl.tolist() == pytest.approx([3.0, 2.0])
