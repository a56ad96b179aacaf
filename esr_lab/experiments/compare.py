"""Beyond the paper: ESR, full OPD and the other position-selective OPD methods side by side, on
one world, with one training budget, over seeds.

Methods (README "Methods side by side" names each one's source and the choices made where its
paper is silent):
- esr: the first N tokens, the rollout stopped at N (the ESR paper, arXiv 2605.27028);
- full: full-rollout OPD;
- iw_opd: every position, weighted by IW-OPD's prefix discrepancy (arXiv 2606.22600);
- popd: the rollout horizon growing linearly over training (POPD, arXiv 2605.31490), from
  `popd_start` of its last horizon (TOPD's 10%) to the last;
- tip: positions drawn with odds growing with the student's entropy (TIP, arXiv 2604.14084);
- eopd: the reverse KL plus the forward KL where the teacher's entropy exceeds 0.8 nats (EOPD,
  arXiv 2603.07079);
- power_opd: PowerOPD's bounded sampled-token cost with alpha 5 (arXiv 2606.17199).
TOPD (arXiv 2605.31490) and Prefix-OPD (arXiv 2602.15260) truncate the rollout and train every
position of it: at a matched budget that is ESR's computation, so they are run once, as esr.

Two matched budgets, and each method's own form:
- tokens: at most N loss-carrying positions per rollout, N the ESR window. Methods that train
  every position of their rollout (iw_opd, eopd, power_opd) do so on ESR's window, POPD's
  horizon grows to N, and TIP draws N positions of a full rollout. Full OPD has no such version
  (on N tokens it is ESR): it stays as the unmatched reference (`matched` false).
- time: every method in its own form (full rollouts; TIP keeping `tip_keep` of them) with its
  rollout horizon set so that its seconds per step equal ESR's. Before training, each method's
  step is timed (as `profile` times one: warm-up steps, then the median of the measured steps)
  at horizons N and the full budget, and the horizon is read off the straight line through the
  two points at ESR's seconds per step, rounded and kept within [1, budget]. POPD's last
  horizon is the one whose ramp averages full OPD's matched horizon over the run's steps (the
  mean step then costs ESR's under that line). The timings are saved under
  `<results>/compare/calibrations/` by a hash of everything they depend on and reused, so that a
  rerun trains the same configs (and resumes); they hold for the machine they were taken on.
- own (`--budgets own`, not in the default): every method in its own form over the whole
  rollout budget, as its paper trains it, and ESR at N; nothing is matched (`matched` false but
  for ESR). It asks what each method does over whole rollouts, such as whether it goes through
  a collapse that full OPD goes through, not which is best for the compute.

Every variant is a content-addressed training run (common.train_family) trained once per seed;
rows: one per method, budget and seed in `methods.parquet` (best and final avg@k, the collapse
signature of the final evaluation, trained tokens, seconds per step, training seconds), the
seed tables give each method's mean and 95% interval over seeds and its paired difference with
ESR under the same budget.

Command: esr-lab compare --student capable-student --teacher capable-teacher
         esr-lab compare --student micro-student --teacher micro-teacher --steps 2 --seeds 1
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pandas as pd

from esr_lab.choices import progressive_n
from esr_lab.console import print_table
from esr_lab.errors import UserError
from esr_lab.experiments.common import measure_steps, train_family, with_seeds
from esr_lab.experiments.registry import Experiment, ExperimentResult, Figure, Paths
from esr_lab.figures import plot_compare
from esr_lab.options import (
    SEEDED_TRAINING_GROUPS,
    Given,
    Window,
    default_train_config,
    opt,
    settings,
)
from esr_lab.records import config_hash, declare, write_table

if TYPE_CHECKING:
    from esr_lab.train_config import TrainConfig

METHODS = ("esr", "full", "iw_opd", "popd", "tip", "eopd", "power_opd")
BUDGETS = ("tokens", "time", "own")
DEFAULT_BUDGETS = ("tokens", "time")  # `own` answers another question; asked for by name
DEFAULT_SEEDS = (0, 1, 2)
EOPD_COEF = 1.0  # EOPD's alpha (its released code's soft_kd_loss_coef default)
# Methods whose time-budget horizon is timed; POPD's follows from full OPD's, ESR's is N.
TIMED = ("full", "iw_opd", "tip", "eopd", "power_opd")

SCHEMAS = declare(
    {
        "compare_methods": (
            "run_id",
            "method",
            "budget",
            "matched",
            "seed",
            "train_run",
            "horizon",
            "best_avg_at_k",
            "best_step",
            "final_avg_at_k",
            "collapsed",
            "final_multi_boxed_pct",
            "final_repetitive_pct",
            "final_mean_tokens",
            "trained_tokens",
            "seconds_per_step",
            "train_seconds",
        ),
        "compare_calibration": ("method", "horizon", "seconds_per_step", "steps", "device"),
    }
)

FIGURE = Figure("compare.png", ("methods.parquet",), plot_compare)


def with_horizon(base: TrainConfig, horizon: int) -> TrainConfig:
    """`base` rolling out at most `horizon` tokens, evaluated with the budget it had before.
    At the full budget it is `base` itself, so that its runs are the ones other experiments
    train from the same settings (content-addressed: trained once, reused)."""
    base = replace(base, progressive=None)
    if horizon == base.sampling.max_new_tokens:
        return base
    budget = base.eval_max_new_tokens or base.sampling.max_new_tokens
    sampling = replace(base.sampling, max_new_tokens=horizon)
    return replace(base, sampling=sampling, eval_max_new_tokens=budget)


@dataclass(frozen=True)
class CompareConfig:
    base: TrainConfig = field(default_factory=default_train_config)
    methods: tuple[str, ...] = METHODS
    budgets: tuple[str, ...] = DEFAULT_BUDGETS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    popd_start: float = 0.1  # POPD's first horizon as a share of its last (TOPD's 10%)
    tip_keep: float = 0.5  # TIP's share of its rollout under the time budget (TIP's 50%)
    calibration_steps: int = 2  # measured steps per timing
    calibration_warmup: int = 1  # unmeasured steps before them

    @property
    def window(self) -> int:
        """N: the ESR window, and every method's loss-carrying positions under `tokens`."""
        return self.base.n

    @property
    def budget(self) -> int:
        """The full rollout budget in tokens."""
        return self.base.sampling.max_new_tokens

    def resolved(self) -> CompareConfig:
        """The config, every bad value a one-line error."""
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or "esr" not in self.methods:
            raise UserError(
                f"--methods takes esr (the reference) and any of {', '.join(METHODS)}; "
                f"got {', '.join(self.methods)}"
            )
        if not self.budgets or set(self.budgets) - set(BUDGETS):
            raise UserError(f"--budgets takes {', '.join(BUDGETS)}; got {', '.join(self.budgets)}")
        if not self.seeds:
            raise UserError("compare needs at least one seed (--seeds)")
        if self.base.n is None or not 1 <= self.base.n <= self.budget:
            raise UserError(
                f"--n must be between 1 and the rollout budget (--max-new-tokens "
                f"{self.budget}), got {self.base.n}"
            )
        if self.calibration_steps < 1 or self.calibration_warmup < 0:
            raise UserError(
                "calibration_steps must be >= 1 and calibration_warmup >= 0 in the preset"
            )
        for name, share in (("popd_start", self.popd_start), ("tip_keep", self.tip_keep)):
            if not 0 < share <= 1:
                raise UserError(f"{name} must be in (0, 1] in the preset, got {share}")
        self.base.resolved()
        return self

    def native(self, method: str, horizon: int) -> TrainConfig:
        """`method` in its own form, rolling out at most `horizon` tokens."""
        base = self.base
        rollout = with_horizon(base, horizon)
        full = replace(rollout, selector="all", n=None)
        forms = {
            "esr": lambda: replace(base, selector="first_n", n=horizon, progressive=None),
            "full": lambda: full,
            "iw_opd": lambda: replace(full, position_weights="iw_opd"),
            "eopd": lambda: replace(full, eopd_coef=EOPD_COEF),
            "power_opd": lambda: replace(full, loss="power_token"),
            "tip": lambda: replace(rollout, selector="tip", budget=_share(self.tip_keep, horizon)),
            "popd": lambda: replace(
                base,
                selector="first_n",
                n=None,
                progressive=(_share(self.popd_start, horizon), horizon),
                progressive_schedule="linear",
            ),
        }
        return forms[method]()

    def token_variant(self, method: str) -> TrainConfig:
        """`method` with at most N loss-carrying positions per rollout (full OPD: unmatched)."""
        window = self.native("esr", self.window)
        return {
            "esr": window,
            "full": self.native("full", self.budget),
            "iw_opd": replace(window, position_weights="iw_opd"),
            "eopd": replace(window, eopd_coef=EOPD_COEF),
            "power_opd": replace(window, loss="power_token"),
            "tip": replace(self.native("tip", self.budget), budget=self.window),
            "popd": self.native("popd", self.window),
        }[method]

    def time_variant(self, method: str, horizons: dict[str, int]) -> TrainConfig:
        """`method` in its own form at its time-matched horizon (`matched_horizons`)."""
        if method == "esr":
            return self.native("esr", self.window)
        if method == "popd":
            return self.native("popd", self.popd_horizon(horizons["full"]))
        return self.native(method, horizons[method])

    def own_variant(self, method: str) -> TrainConfig:
        """`method` in its own form over the whole rollout budget; ESR at N."""
        return self.native(method, self.window if method == "esr" else self.budget)

    def popd_horizon(self, matched: int) -> int:
        """POPD's last horizon: the smallest whose linear ramp (from `popd_start` of it)
        averages at least `matched` tokens over the run's steps, or the budget."""
        steps = self.base.steps

        def mean_horizon(last: int) -> float:
            first = _share(self.popd_start, last)
            return statistics.fmean(
                progressive_n(s, steps, first, last) for s in range(1, steps + 1)
            )

        last = matched
        while last < self.budget and mean_horizon(last) < matched:
            last += 1
        return last

    def timed_methods(self) -> list[str]:
        """The methods whose time-matched horizon is measured (POPD's needs full OPD's)."""
        if "time" not in self.budgets:
            return []
        wanted = set(self.methods) | ({"full"} if "popd" in self.methods else set())
        return [m for m in TIMED if m in wanted]

    def variants(self, horizons: dict[str, int]) -> list[tuple[str, str, TrainConfig]]:
        """(method, budget, config) of every variant, budget-major, in `methods` order."""
        self.resolved()
        out = []
        for budget in self.budgets:
            for method in self.methods:
                if budget == "tokens":
                    cfg = self.token_variant(method)
                elif budget == "time":
                    cfg = self.time_variant(method, horizons)
                else:
                    cfg = self.own_variant(method)
                out.append((method, budget, cfg))
        return out


def is_matched(method: str, budget: str) -> bool:
    """Whether the variant is matched to ESR under its budget: full OPD has no token-matched
    version (on N tokens it is ESR), and in their own forms only ESR, the reference, is."""
    if budget == "own":
        return method == "esr"
    return not (method == "full" and budget == "tokens")


def _share(share: float, horizon: int) -> int:
    """ceil(share x horizon), at least 1: a horizon's share in whole tokens."""
    return max(1, math.ceil(share * horizon))


def matched_horizon(window: int, budget: int, t_window: float, t_budget: float, target: float):
    """The horizon at which the straight line through (window, t_window) and (budget, t_budget)
    reaches `target` seconds per step, rounded and kept within [1, budget]. A step that is no
    slower at the full budget (timing noise, or rollouts that end early) gets the budget."""
    if budget <= window or t_budget <= t_window:
        return budget
    slope = (t_budget - t_window) / (budget - window)
    return int(min(max(round(window + (target - t_window) / slope), 1), budget))


def calibration_key(cfg: CompareConfig) -> str:
    """What the timings depend on: the base training config (the first seed's), the methods
    timed, the horizons and the timing's steps."""
    from esr_lab import train

    base = replace(cfg.base, seed=cfg.seeds[0]).resolved()
    return config_hash(
        {
            "base": train.config_dict(base),
            "methods": cfg.timed_methods(),
            "horizons": [cfg.window, cfg.budget],
            "steps": [cfg.calibration_warmup, cfg.calibration_steps],
            "tip_keep": cfg.tip_keep,
        }
    )


def calibrate(cfg: CompareConfig, paths: Paths) -> pd.DataFrame:
    """Seconds per step of ESR at N and of every timed method at N and at the full budget;
    taken once per calibration key, then read back."""
    folder = Path(paths.results_dir) / "compare" / "calibrations"
    stored = folder / f"{calibration_key(cfg)}.parquet"
    if stored.is_file():
        return pd.read_parquet(stored)
    points = [("esr", cfg.window)]
    points += [(m, h) for m in cfg.timed_methods() for h in sorted({cfg.window, cfg.budget})]
    steps = cfg.calibration_warmup + cfg.calibration_steps
    rows = []
    for method, horizon in points:
        variant = replace(cfg.native(method, horizon), seed=cfg.seeds[0], steps=steps)
        measured, device = measure_steps(variant, cfg.calibration_warmup, paths.show_progress)
        seconds = statistics.median(m["time_total_s"] for m in measured)
        rows.append(
            {
                "method": method,
                "horizon": horizon,
                "seconds_per_step": seconds,
                "steps": len(measured),
                "device": device,
            }
        )
    table = pd.DataFrame(rows)
    write_table(stored, table, "compare_calibration")
    return table


def matched_horizons(cfg: CompareConfig, calibration: pd.DataFrame) -> dict[str, int]:
    """Each timed method's horizon at ESR's seconds per step (`matched_horizon`)."""
    seconds = calibration.set_index(["method", "horizon"]).seconds_per_step
    target = seconds[("esr", cfg.window)]
    return {
        m: matched_horizon(
            cfg.window, cfg.budget, seconds[(m, cfg.window)], seconds[(m, cfg.budget)], target
        )
        for m in cfg.timed_methods()
    }


def method_rows(
    run_id: str,
    variants: list[tuple[str, str, TrainConfig]],
    seeds: tuple[int, ...],
    summary: pd.DataFrame,
    evals: pd.DataFrame,
    results_dir: Path,
) -> pd.DataFrame:
    """One row per method, budget and seed, in the order run_variants trained them."""
    rows = []
    runs = [(m, b, cfg) for m, b, v in variants for cfg in with_seeds([v], seeds)]
    for (method, budget, cfg), (_, run) in zip(runs, summary.iterrows(), strict=True):
        steps = pd.read_parquet(Path(results_dir) / "runs" / run.run_id / "steps.parquet")
        final = evals[(evals.run_id == run.run_id) & (evals.step == run.final_step)].iloc[0]
        rows_per_step = cfg.batch * cfg.rollouts_per_prompt
        rows.append(
            {
                "run_id": run_id,
                "method": method,
                "budget": budget,
                "matched": is_matched(method, budget),
                "seed": cfg.seed,
                "train_run": run.run_id,
                "horizon": int(cfg.rollout_tokens(cfg.steps)),
                "best_avg_at_k": run.best_avg_at_k,
                "best_step": int(run.best_step),
                "final_avg_at_k": run.final_avg_at_k,
                "collapsed": bool(run.collapsed),
                "final_multi_boxed_pct": final.multi_boxed_pct,
                "final_repetitive_pct": final.repetitive_pct,
                "final_mean_tokens": final.mean_tokens,
                "trained_tokens": int(round(steps.selected_tokens_mean.sum() * rows_per_step)),
                "seconds_per_step": float(steps.time_total_s.median()),
                "train_seconds": float(steps.time_total_s.sum()),
            }
        )
    return pd.DataFrame(rows)


@dataclass
class Options:
    n: Window = None
    methods: Annotated[
        str | None, opt(f"Comma-separated methods [default: {','.join(METHODS)}].")
    ] = None
    budgets: Annotated[
        str | None,
        opt(
            "Budgets: tokens, time (matched to ESR's), own (each method's own form over the "
            "whole rollout) [default: tokens,time]."
        ),
    ] = None


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(p.strip() for p in text.split(",") if p.strip())


def configure(options: Options, given: Given) -> CompareConfig:
    given_values = {"methods": _names(options.methods), "budgets": _names(options.budgets)}
    values = settings("compare", given.models.student, given_values, given.train.preset)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    preset_seeds = values.pop("seeds", DEFAULT_SEEDS)
    preset_n = values.pop("n", None)  # the preset's window for this comparison
    base = given.train.config(given, n=options.n or preset_n)
    return CompareConfig(base=base, seeds=given.seeds or preset_seeds, **values)


def run(cfg: CompareConfig, paths: Paths) -> ExperimentResult:
    """Time the methods (or read their timings), train every variant once per seed, tabulate."""
    from esr_lab import train

    cfg = cfg.resolved()
    train.check_inputs(cfg.base.resolved())  # bad input fails before any timing
    calibration = calibrate(cfg, paths) if cfg.timed_methods() else pd.DataFrame()
    horizons = matched_horizons(cfg, calibration) if len(calibration) else {}
    variants = cfg.variants(horizons)
    names = [f"{method}/{budget}" for method, budget, _ in variants]
    comparisons = [(f"{m}/{b}", f"esr/{b}") for m, b, _ in variants if m != "esr"]
    trained = train_family(
        "compare",
        cfg,
        paths,
        [v for _, _, v in variants],
        names,
        comparisons=comparisons,
        extra={"time_horizons": horizons},
    )
    parent = trained.parent
    methods = method_rows(
        parent.run_id, variants, cfg.seeds, trained.summary, trained.evals, paths.results_dir
    )
    write_table(parent.path / "methods.parquet", methods, "compare_methods")
    tables = {"methods": methods, **trained.seed_tables}
    if len(calibration):
        write_table(parent.path / "calibration.parquet", calibration, "compare_calibration")
        tables["calibration"] = calibration
    figure = FIGURE.save(parent.path, paths)
    return ExperimentResult(parent, tables, figure)


def terminal_table(methods: pd.DataFrame, aggregate: pd.DataFrame) -> pd.DataFrame:
    """One line per method and budget: best and final avg@k (mean, 95% interval over seeds),
    collapsed seeds, trained tokens (mean over seeds), seconds per step (median) and the
    rollout horizon."""
    own = aggregate[aggregate.reference == ""].set_index(["variant", "metric"])
    rows = []
    for (method, budget), part in methods.groupby(["method", "budget"], sort=False):
        unmatched = "" if part.matched.all() or budget == "own" else " (ref)"
        row = {"method": method, "same": budget + unmatched}
        for metric, title in (("best_avg_at_k", "best"), ("final_avg_at_k", "final")):
            cell = own.loc[(f"{method}/{budget}", metric)]
            row[f"{title} % (CI)"] = _with_interval(cell["mean"], cell.ci_low, cell.ci_high)
        row["collapsed"] = f"{int(part.collapsed.sum())}/{len(part)}"
        row["tokens"] = int(part.trained_tokens.mean())
        row["s/step"] = f"{part.seconds_per_step.median():.3f}"
        row["horizon"] = int(part.horizon.iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def _with_interval(mean: float, low: float, high: float) -> str:
    """'61.25 (58.10..64.40)' in percent; the mean alone with one seed (no interval)."""
    interval = "" if math.isnan(low) else f" ({low * 100:.2f}..{high * 100:.2f})"
    return f"{mean * 100:.2f}{interval}"


NOISE_TOLERANCE = 0.10  # how much faster than ESR a timing at ESR's horizon may come out


def calibration_noise(calibration: pd.DataFrame) -> float | None:
    """The calibration's own noise, read off its timings at ESR's horizon: there every method
    does at least ESR's work (the same rollout and teacher scoring; full OPD exactly ESR's
    computation), so a method timed faster than ESR means the machine was busy with other
    work while it timed. Returns the largest such shortfall as a (negative) share of ESR's
    seconds per step, 0 when none is faster, None when no other method was timed there."""
    window = int(calibration[calibration.method == "esr"].horizon.iloc[0])
    at_window = calibration[calibration.horizon == window].set_index("method").seconds_per_step
    others = at_window.drop("esr")
    if others.empty:
        return None
    return min(0.0, float(others.min() / at_window["esr"] - 1))


def print_summary(result: ExperimentResult) -> None:
    title = f"Methods side by side, run {result.run_dir.run_id} (intervals: t over seeds)"
    aggregate = result.tables["seed_aggregate"]
    print_table(terminal_table(result.tables["methods"], aggregate), title)
    calibration = result.tables.get("calibration")
    noise = None if calibration is None else calibration_noise(calibration)
    if noise is not None and noise < -NOISE_TOLERANCE:
        print(
            f"warning: the time budget is unreliable: at ESR's horizon a method that does at "
            f"least ESR's work timed {noise:.0%} against ESR in the calibration; time again on "
            f"a quiet machine (delete {Path(result.run_dir.path).parent / 'calibrations'})"
        )


EXPERIMENT = Experiment(
    command="compare",
    folder="compare",
    help=(
        "Beyond the paper: ESR, full OPD, IW-OPD, POPD, TIP, EOPD and PowerOPD at the same "
        "trained tokens and the same seconds per step (or each in its own form), over seeds."
    ),
    options=Options,
    groups=SEEDED_TRAINING_GROUPS,
    configure=configure,
    run=run,
    print_summary=print_summary,
    figure=FIGURE,
    order=90,
)
