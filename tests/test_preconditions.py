"""The collapse preconditions: hand-made tables for the late signal, the micro world for (a)."""

from __future__ import annotations

import pandas as pd
import pytest

from esr_lab.preconditions import after_turn_text, late_signal


def _write(folder, name, frame):
    path = folder / name
    path.parent.mkdir(parents=True)
    frame.to_parquet(path)


def test_late_signal_from_hand_made_tables(tmp_path):
    bins = pd.DataFrame(
        {
            "model": ["base", "base", "base", "trained"],
            "bin_start": [0, 10, 20, 20],
            "tokens": [100, 100, 50, 999],
            "teacher_entropy": [0.2, 0.4, 1.0, 9.0],
        }
    )
    decay = pd.DataFrame(
        {
            "condition": ["teacher_alone", "teacher_from_prefix", "teacher_from_prefix"],
            "prefix_tokens": [0, 25, 200],
            "avg_at_k": [0.9, 0.5, 0.25],
        }
    )
    _write(tmp_path, "positions/r/bins.parquet", bins)
    _write(tmp_path, "decay/r/summary.parquet", decay)
    got = late_signal(tmp_path, window=20)
    assert got["past_window_share"] == pytest.approx(50 / 250)  # the trained row is ignored
    assert got["teacher_entropy_in_window"] == pytest.approx((0.2 * 100 + 0.4 * 100) / 200)
    assert got["teacher_entropy_past_window"] == pytest.approx(1.0)
    assert (got["shortest_prefix_tokens"], got["longest_prefix_tokens"]) == (25, 200)
    assert got["teacher_from_shortest_prefix_avg"] == 0.5
    assert got["teacher_from_longest_prefix_avg"] == 0.25
    assert got["teacher_alone_avg"] == 0.9


def test_after_turn_text_on_the_micro_world():
    got = after_turn_text("micro", samples=4, max_new_tokens=48)
    shares = ("after_turn_text_share", "ends_at_budget_share", "end_of_turn_share")
    assert all(0 <= got[key] <= 1 for key in shares)
    assert got["after_turn_text_tokens_mean"] >= 0
