"""`esr-lab compare`: the methods' configs under each budget, the time-matched horizons on hand
cases, and the command on the micro world (one row per method, budget and seed; a rerun reads
its timings back and retrains nothing)."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

from esr_lab.config import Sampling
from esr_lab.errors import UserError
from esr_lab.experiments.compare import (
    METHODS,
    CompareConfig,
    calibration_noise,
    is_matched,
    matched_horizon,
)
from esr_lab.train_config import TrainConfig
from tests.helpers import MICRO, run_cli

BASE = TrainConfig(n=8, steps=3, sampling=Sampling(max_new_tokens=40))


def test_matched_horizon_reads_the_line_through_two_timings():
    # (10 tokens, 1.0 s) and (110, 3.0 s): 0.02 s per token. ESR's 2.0 s is reached at 60.
    assert matched_horizon(10, 110, 1.0, 3.0, target=2.0) == 60
    assert matched_horizon(10, 110, 1.0, 3.0, target=1.0) == 10
    assert matched_horizon(10, 110, 1.0, 3.0, target=2.01) == 60  # 60.5 rounds to even
    # slower than ESR even at N: 10 - 0.5 / 0.02 = -15, kept at one token; faster: the budget
    assert matched_horizon(10, 110, 1.0, 3.0, target=0.5) == 1
    assert matched_horizon(10, 110, 1.0, 3.0, target=5.0) == 110
    # no slower at the budget (rollouts end early, or noise): the budget costs no more
    assert matched_horizon(10, 110, 1.0, 0.9, target=2.0) == 110
    assert matched_horizon(110, 110, 1.0, 1.0, target=2.0) == 110


def test_popd_horizon_averages_the_matched_horizon():
    # 3 steps, first horizon ceil(L / 2): L = 12 ramps 6, 9, 12 (mean 9 < 10); L = 13 ramps
    # 7, 10, 13 (mean 10): the smallest last horizon averaging 10 is 13
    cfg = CompareConfig(base=BASE, popd_start=0.5)
    assert cfg.popd_horizon(10) == 13
    assert cfg.popd_horizon(40) == 40  # never past the budget
    assert cfg.time_variant("popd", {"full": 10}).progressive == (7, 13)


def test_token_budget_gives_every_method_at_most_n_positions():
    cfg = CompareConfig(base=BASE, budgets=("tokens",))
    variants = {m: v for m, _, v in cfg.variants({})}
    for method in ("esr", "iw_opd", "eopd", "power_opd", "popd"):
        assert variants[method].selector == "first_n", method
        assert max(variants[method].rollout_tokens(s) for s in (1, 2, 3)) == 8
    assert variants["popd"].progressive == (1, 8)  # ceil(0.1 x 8) = 1
    assert variants["iw_opd"].position_weights == "iw_opd"
    assert variants["eopd"].eopd_coef == 1.0 and variants["power_opd"].loss == "power_token"
    # TIP draws N of a full rollout; full OPD is the unmatched reference on the full budget
    assert (variants["tip"].selector, variants["tip"].budget) == ("tip", 8)
    assert variants["tip"].rollout_tokens(1) == variants["full"].rollout_tokens(1) == 40
    # ESR and full OPD are the very configs sweep-n and select train: their runs are shared
    assert variants["esr"] == replace(BASE, selector="first_n", n=8)
    assert variants["full"] == replace(BASE, selector="all", n=None)


def test_time_budget_keeps_each_form_at_its_horizon_and_the_evaluation_as_it_was():
    cfg = CompareConfig(base=BASE, budgets=("time",))
    horizons = {"full": 20, "iw_opd": 18, "tip": 25, "eopd": 16, "power_opd": 30}
    assert cfg.timed_methods() == ["full", "iw_opd", "tip", "eopd", "power_opd"]
    variants = {m: v for m, _, v in cfg.variants(horizons)}
    assert variants["esr"] == cfg.token_variant("esr")
    for method in ("full", "iw_opd", "eopd", "power_opd", "tip"):
        assert variants[method].rollout_tokens(1) == horizons[method]
        assert variants[method].eval_sampling.max_new_tokens == 40
    assert variants["iw_opd"].selector == "all" and variants["eopd"].selector == "all"
    assert variants["tip"].budget == 13  # TIP keeps half its rollout: ceil(25 / 2)
    assert variants["popd"].progressive[1] == cfg.popd_horizon(20)
    assert CompareConfig(base=BASE, budgets=("tokens",)).timed_methods() == []


def test_own_budget_trains_every_form_over_the_whole_rollout():
    cfg = CompareConfig(base=BASE, budgets=("own",))
    assert cfg.timed_methods() == []  # nothing to time: no horizon is matched
    variants = {m: v for m, _, v in cfg.variants({})}
    assert variants["esr"] == cfg.token_variant("esr")  # ESR at N, the reference
    for method in ("full", "iw_opd", "eopd", "power_opd", "tip"):
        assert variants[method].rollout_tokens(1) == 40, method
    assert variants["full"] == replace(BASE, selector="all", n=None)  # sweep-n's own full run
    assert variants["iw_opd"].selector == "all" and variants["iw_opd"].position_weights == "iw_opd"
    assert variants["tip"].budget == 20  # TIP keeps half of its 40-token rollout
    assert variants["popd"].progressive == (4, 40)  # ceil(0.1 x 40) = 4, up to the budget
    assert [is_matched(m, "own") for m in ("esr", "full", "tip")] == [True, False, False]
    assert not is_matched("full", "tokens") and is_matched("full", "time")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": ("full", "tip")}, "--methods takes esr"),
        ({"methods": ("esr", "topd")}, "--methods takes esr"),
        ({"budgets": ("flops",)}, "--budgets takes tokens, time"),
        ({"base": replace(BASE, n=41)}, "--n must be between 1 and the rollout budget"),
        ({"tip_keep": 0.0}, "tip_keep must be in (0, 1]"),
        ({"seeds": ()}, "at least one seed"),
    ],
)
def test_bad_settings_are_one_line_errors(change, message):
    with pytest.raises(UserError) as err:
        replace(CompareConfig(base=BASE), **change).resolved()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_compare_writes_one_row_per_method_budget_and_seed(monkeypatch, capsys, tmp_path):
    """The issue's done-when, on the micro world's preset (window 8, seed 0)."""
    args = ("compare", *MICRO, "--steps", "2", "--eval-every", "2", "--run-id", "c")
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, *args)
    assert code == 0, err
    assert "Methods side by side" in out
    run = tmp_path / "results" / "compare" / "c"
    methods = pd.read_parquet(run / "methods.parquet")
    assert len(methods) == len(METHODS) * 2
    assert set(zip(methods.method, methods.budget, methods.seed, strict=True)) == {
        (m, b, 0) for m in METHODS for b in ("tokens", "time")
    }
    tokens = methods[methods.budget == "tokens"].set_index("method")
    # every matched method trains at most N = 8 positions per rollout: 4 rollouts x 2 steps
    assert (tokens.drop("full").trained_tokens <= 8 * 4 * 2).all()
    assert tokens.trained_tokens["full"] > tokens.trained_tokens["esr"]
    assert not tokens.matched["full"] and methods.drop(index=1).matched.all()
    assert (methods.seconds_per_step > 0).all() and methods.train_seconds.notna().all()
    config = json.loads((run / "config.json").read_text())
    assert set(config["time_horizons"]) == {"full", "iw_opd", "tip", "eopd", "power_opd"}
    aggregate = pd.read_parquet(run / "seed_aggregate.parquet")
    assert {"iw_opd/tokens|esr/tokens", "tip/time|esr/time"} <= set(
        aggregate.variant + "|" + aggregate.reference
    )
    assert (tmp_path / "figures" / "compare.png").is_file()
    # a rerun reads its timings back: the same variants, every run reused, nothing retrained
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, *args)
    assert code == 0 and err.count("reused finished run") == methods.train_run.count()
    assert json.loads((run / "config.json").read_text())["time_horizons"] == config["time_horizons"]


def test_calibration_noise_is_the_largest_shortfall_against_esr_at_its_horizon() -> None:
    """At ESR's horizon no method does less than ESR's work, so coming out faster is noise."""
    rows = [("esr", 20, 0.244), ("full", 20, 0.220), ("tip", 20, 0.171), ("full", 400, 0.791)]
    calibration = pd.DataFrame(rows, columns=["method", "horizon", "seconds_per_step"])
    assert calibration_noise(calibration) == pytest.approx(0.171 / 0.244 - 1)  # -29.9%
    slower = calibration.assign(seconds_per_step=[0.2, 0.25, 0.3, 0.8])
    assert calibration_noise(slower) == 0.0
    assert calibration_noise(calibration[calibration.method == "esr"]) is None
