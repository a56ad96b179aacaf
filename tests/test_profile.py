"""`esr-lab profile` end to end on the micro world; its summary maths; one-line errors."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from esr_lab.config import Sampling
from esr_lab.errors import UserError
from esr_lab.experiments.profile import ProfileConfig, phase_summary
from tests.helpers import MICRO, run_cli
from tests.test_train import BASE

FAST = ["--max-new-tokens", "24", "--batch", "2", "--micro-batch", "2"]


def test_profile_command(monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        "profile",
        *MICRO,
        *FAST,
        "--ns",
        "4",
        "--steps",
        "2",
        "--warmup",
        "0",
    )
    assert code == 0, err
    assert "Cost per step" in out and "esr-4" in out
    run = next((tmp_path / "results" / "profile").iterdir())
    steps = pd.read_parquet(run / "steps.parquet")
    assert set(steps.phase) == {"generation", "teacher", "training", "total"}
    assert len(steps) == 2 * 2 * 4  # variants x measured steps x phases
    assert (steps.time_s > 0).all() and (steps.peak_memory_mb > 100).all()
    summary = pd.read_parquet(run / "summary.parquet").set_index(["label", "phase"])
    assert summary.loc[("esr-4", "total"), "rollout_tokens"] <= 4
    assert summary.loc[("full", "total"), "rollout_tokens"] > 4
    assert summary.loc[("full", "generation"), "time_ratio"] == 1.0
    assert (tmp_path / "figures" / "profile.png").is_file()


def test_summary_medians_ranges_and_ratios():
    rows = [
        {
            "run_id": "r",
            "label": label,
            "n": n,
            "step": step,
            "phase": "generation",
            "time_s": t,
            "peak_memory_mb": m,
            "rollout_tokens_mean": float(n),
            "device": "cpu",
        }
        for label, n, values in (
            ("esr-5", 5, [(1, 10), (2, 30), (9, 20)]),
            ("full", 50, [(10, 40), (20, 40), (30, 40)]),
        )
        for step, (t, m) in enumerate(values, start=1)
    ]
    summary = phase_summary(pd.DataFrame(rows)).set_index("label")
    assert summary.loc["esr-5", "time_median_s"] == 2
    assert (summary.loc["esr-5", "time_min_s"], summary.loc["esr-5", "time_max_s"]) == (1, 9)
    assert summary.loc["esr-5", "time_ratio"] == pytest.approx(0.1)
    assert summary.loc["esr-5", "peak_ratio"] == pytest.approx(0.5)
    assert summary.loc["full", "steps"] == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ns": (25,)}, "N=25 is larger than the full rollout budget"),
        ({"steps": 0}, "--steps must be at least 1"),
        ({"warmup": -1}, "--warmup must be 0 or more"),
        ({"ns": ()}, "--ns must be integers >= 1"),
    ],
)
def test_bad_settings_are_one_line_errors(changes, message):
    cfg = replace(
        ProfileConfig(base=replace(BASE, sampling=Sampling(max_new_tokens=24))), **changes
    )
    with pytest.raises(UserError, match=message):
        cfg.variants()


@pytest.mark.parametrize("bad", [["--ns", "500"], ["--steps", "0"]])
def test_cli_bad_input_exits_2(monkeypatch, capsys, tmp_path, bad):
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, "profile", *MICRO, *FAST, *bad)
    assert code == 2
    assert err.startswith("esr-lab: error:") and len(err.strip().splitlines()) == 1
