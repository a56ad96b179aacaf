"""Finding 8, efficiency: wall time and peak memory per phase of an ESR(N) step against full OPD.

Claim (PAPER.md, one A6000, batch 16, ESR vs full per step): teacher scoring 1 s vs 7 s,
student generation 5 s vs 180 s, training 2 s vs 7 s, total 8 s vs 194 s (24x less); peak
memory 7.3/14.9, 7.2/8.9, 9.6/39.5 GB by phase, 24.1 vs 63.3 GB overall (2.6x less).

Every variant trains from the same student on the same prompts (step k reads the same slice of
the seeded shuffle), so the only difference is where rollouts stop. Warm-up steps run first and
are not measured (first-call allocations, kernel selection). On a CPU, tiny models run many
times faster on one torch thread than on several contending for busy cores, so toy students
run on one thread (`--threads` in the model options). Times are medians with min-max over
the measured steps; a step's total memory is the highest of its phases. On CPU, memory is
the process's peak resident set (see `esr_lab.memory`); variants run one after another in
one process, the cheapest first, so a later variant never inherits a larger one's freed
pages.

Command: esr-lab profile --student Qwen/Qwen2.5-Math-1.5B --teacher Qwen/Qwen3-1.7B --ns 100
         (no options: the toy world's preset)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Annotated

import pandas as pd

from esr_lab.config import PHASES
from esr_lab.console import print_table
from esr_lab.errors import UserError
from esr_lab.experiments.common import measure_steps
from esr_lab.experiments.registry import Experiment, ExperimentResult, Figure, Paths
from esr_lab.figures import plot_profile
from esr_lab.options import TRAINING_GROUPS, Given, default_train_config, int_list, opt, settings
from esr_lab.records import declare, open_run, write_table

if TYPE_CHECKING:
    from esr_lab.train_config import TrainConfig

STEP_PHASES = (*PHASES, "total")
SCHEMAS = declare(
    {
        "profile_steps": (
            "run_id",
            "label",
            "n",
            "step",
            "phase",
            "time_s",
            "peak_memory_mb",
            "rollout_tokens_mean",
            "device",
        ),
        "profile_summary": (
            "run_id",
            "label",
            "phase",
            "n",
            "steps",
            "rollout_tokens",
            "time_median_s",
            "time_min_s",
            "time_max_s",
            "peak_median_mb",
            "peak_min_mb",
            "peak_max_mb",
            "time_ratio",
            "peak_ratio",
        ),
    }
)


FIGURE = Figure("profile.png", ("summary.parquet",), plot_profile)


@dataclass(frozen=True)
class ProfileConfig:
    base: TrainConfig = field(default_factory=default_train_config)
    ns: tuple[int, ...] = (100,)
    steps: int = 3
    warmup: int = 1

    def resolved(self) -> ProfileConfig:
        """The config, every bad value a one-line error."""
        budget = self.base.sampling.max_new_tokens
        if self.steps < 1:
            raise UserError(f"--steps must be at least 1 measured step, got {self.steps}")
        if self.warmup < 0:
            raise UserError(f"--warmup must be 0 or more, got {self.warmup}")
        if not self.ns or min(self.ns) < 1:
            raise UserError(f"--ns must be integers >= 1, got {list(self.ns)}")
        if max(self.ns) > budget:
            raise UserError(
                f"N={max(self.ns)} is larger than the full rollout budget "
                f"(--max-new-tokens {budget}); ESR would then be full OPD"
            )
        return self

    def variants(self) -> list[TrainConfig]:
        """ESR for each N (smallest first), then full OPD."""
        self.resolved()  # every bad value a one-line error before anything is built
        base = replace(self.base, steps=self.warmup + self.steps, progressive=None)
        esr = [replace(base, selector="first_n", n=n) for n in sorted(set(self.ns))]
        return [*esr, replace(base, selector="all", n=None)]


def long_rows(metrics: dict, run_id: str, cfg: TrainConfig, device: str) -> list[dict]:
    """One step's metrics as one row per phase, plus the step's total."""
    times = {p: metrics[f"time_{p}_s"] for p in PHASES}
    peaks = {p: metrics[f"peak_{p}_mb"] for p in PHASES}
    times["total"], peaks["total"] = sum(times.values()), max(peaks.values())
    return [
        {
            "run_id": run_id,
            "label": cfg.label,
            "n": cfg.n if cfg.selector == "first_n" else cfg.sampling.max_new_tokens,
            "step": int(metrics["step"]),
            "phase": name,
            "time_s": times[name],
            "peak_memory_mb": peaks[name],
            "rollout_tokens_mean": metrics["rollout_tokens_mean"],
            "device": device,
        }
        for name in STEP_PHASES
    ]


def phase_summary(steps: pd.DataFrame) -> pd.DataFrame:
    """Median (min-max) time and peak memory per variant and phase, and each ESR/full ratio."""
    grouped = steps.groupby(["run_id", "label", "phase"], sort=False)
    summary = grouped.agg(
        n=("n", "first"),
        steps=("step", "count"),
        rollout_tokens=("rollout_tokens_mean", "median"),
        time_median_s=("time_s", "median"),
        time_min_s=("time_s", "min"),
        time_max_s=("time_s", "max"),
        peak_median_mb=("peak_memory_mb", "median"),
        peak_min_mb=("peak_memory_mb", "min"),
        peak_max_mb=("peak_memory_mb", "max"),
    ).reset_index()
    full = summary[summary.label == "full"].set_index("phase")
    summary["time_ratio"] = summary.time_median_s / summary.phase.map(full.time_median_s)
    summary["peak_ratio"] = summary.peak_median_mb / summary.phase.map(full.peak_median_mb)
    return summary


@dataclass
class Options:
    ns: Annotated[str | None, opt("ESR windows to profile against full OPD [paper: 100].")] = None
    warmup: Annotated[int | None, opt("Unmeasured steps before the measured --steps.")] = None


def configure(options: Options, given: Given) -> ProfileConfig:
    base = given.train.config(given)
    given_values = {
        "ns": int_list(options.ns or None, "--ns"),
        "steps": given.train.steps,  # --steps counts measured steps here
        "warmup": options.warmup,
    }
    values = settings("profile", given.models.student, given_values, given.train.preset)
    values["ns"] = tuple(values.get("ns", [base.n or ProfileConfig.ns[0]]))
    return ProfileConfig(base=base, **values)


def run(cfg: ProfileConfig, paths: Paths) -> ExperimentResult:
    """Profile every variant; writes steps.parquet, summary.parquet and profile.png."""
    cfg = cfg.resolved()
    variants = cfg.variants()
    config = dict(asdict(cfg), variants=[v.label for v in variants])
    run_dir = open_run(paths.results_dir, "profile", config, paths.run_id)
    rows = []
    for variant in variants:
        measured, device = measure_steps(variant, cfg.warmup, paths.show_progress)
        for metrics in measured:
            rows += long_rows(metrics, run_dir.run_id, variant, device)
    steps = pd.DataFrame(rows)
    write_table(run_dir.path / "steps.parquet", steps, "profile_steps")
    summary = phase_summary(steps)
    write_table(run_dir.path / "summary.parquet", summary, "profile_summary")
    figure = FIGURE.save(run_dir.path, paths)
    return ExperimentResult(run_dir, {"steps": steps, "summary": summary}, figure)


def print_summary(result: ExperimentResult) -> None:
    title = f"Cost per step, run {result.run_dir.run_id}"
    print_table(paper_table(result.tables["summary"]), title)


def paper_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The terminal view, laid out like finding 8: one row per variant and phase."""
    return pd.DataFrame(
        {
            "variant": summary.label,
            "phase": summary.phase,
            "time s (median)": summary.time_median_s,
            "min-max s": [
                f"{a:.2f}-{b:.2f}"
                for a, b in zip(summary.time_min_s, summary.time_max_s, strict=True)
            ],
            "x of full": summary.time_ratio,
            "peak MiB": summary.peak_median_mb,
            "min-max MiB": [
                f"{a:.0f}-{b:.0f}"
                for a, b in zip(summary.peak_min_mb, summary.peak_max_mb, strict=True)
            ],
            "mem x of full": summary.peak_ratio,
        }
    )


EXPERIMENT = Experiment(
    command="profile",
    folder="profile",
    help="Finding 8: per-phase wall time and peak memory of ESR(N) steps against full OPD.",
    options=Options,
    groups=TRAINING_GROUPS,
    configure=configure,
    run=run,
    print_summary=print_summary,
    figure=FIGURE,
    order=80,
    finding="8 efficiency",
    step=9,
)
