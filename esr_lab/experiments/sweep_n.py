"""Finding 3, the N sweep: ESR for several window lengths N, against full OPD and a
progressive schedule.

Claim (PAPER.md, best MATH-500 avg@4): ESR-5 56.50, -10 59.50, -20 60.20, -50 62.45,
-100 64.25, -150 65.70, -200 66.75; progressive 62.30; full OPD 65.60 at step 50, then
collapsing to 43.80. Accuracy plateaus for N in [50, 200]: a short window is enough.

Command: esr-lab sweep-n --student Qwen/Qwen2.5-Math-1.5B --teacher Qwen/Qwen3-1.7B
         (no options: the toy world's preset)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated

from esr_lab.errors import UserError
from esr_lab.experiments.common import print_trained_summary, train_family, trained_tables
from esr_lab.experiments.registry import Experiment, ExperimentResult, Figure, Paths
from esr_lab.figures import plot_sweep_n
from esr_lab.options import (
    SEEDED_TRAINING_GROUPS,
    Given,
    default_train_config,
    int_list,
    opt,
    settings,
)

if TYPE_CHECKING:
    from esr_lab.train_config import TrainConfig

PAPER_NS = (5, 10, 20, 50, 100, 150, 200)


FIGURE = Figure("sweep_n.png", ("summary.parquet",), plot_sweep_n)


@dataclass(frozen=True)
class SweepConfig:
    base: TrainConfig = field(default_factory=default_train_config)
    ns: tuple[int, ...] = PAPER_NS
    full: bool = True
    progressive: bool = True
    seeds: tuple[int, ...] | None = None  # --seeds; None: the base config's one seed

    def resolved(self) -> SweepConfig:
        if not self.ns or min(self.ns) < 1:
            raise UserError(f"--ns must be integers >= 1, got {list(self.ns)}")
        return self

    @property
    def progressive_range(self) -> tuple[int, int]:
        """(N at step 1, largest N): the sweep's own range for the linear schedule; from 1 for
        the released code's N = step (step 1 trains on 1 token, as its progressive run did)."""
        start = 1 if self.base.progressive_schedule == "step" else min(self.ns)
        return start, max(self.ns)

    def variants(self) -> list[TrainConfig]:
        self.resolved()  # every bad value a one-line error before anything is built
        esr = [replace(self.base, selector="first_n", n=n) for n in sorted(set(self.ns))]
        extra = []
        if self.full:
            extra.append(replace(self.base, selector="all", n=None))
        if self.progressive:
            extra.append(
                replace(self.base, selector="first_n", n=None, progressive=self.progressive_range)
            )
        return esr + extra

    def comparisons(self) -> list[tuple[str, str]]:
        """The finding's paired differences: each ESR window minus full OPD."""
        if not self.full:
            return []
        return [(v.label, "full") for v in self.variants() if v.selector == "first_n" and v.n]


@dataclass
class Options:
    ns: Annotated[str | None, opt("ESR windows to train [paper: 5,...,200].")] = None
    full: Annotated[bool, opt("Also train full OPD.")] = True
    progressive: Annotated[bool, opt("Also train a progressive-N schedule.")] = True


def configure(options: Options, given: Given) -> SweepConfig:
    values = settings(
        "sweep_n",
        given.models.student,
        {"ns": int_list(options.ns or None, "--ns")},
        given.train.preset,
    )
    return SweepConfig(
        base=given.train.config(given),
        ns=tuple(values.get("ns", PAPER_NS)),
        full=options.full,
        progressive=options.progressive,
        seeds=given.seeds,
    )


def run(cfg: SweepConfig, paths: Paths) -> ExperimentResult:
    cfg = cfg.resolved()
    trained = train_family("sweep_n", cfg, paths)
    figure = FIGURE.save(trained.parent.path, paths)
    return ExperimentResult(trained.parent, trained_tables(trained), figure)


def print_summary(result: ExperimentResult) -> None:
    title = f"N sweep, run {result.run_dir.run_id}"
    print_trained_summary(result, title)


EXPERIMENT = Experiment(
    command="sweep-n",
    folder="sweep_n",
    help="Finding 3: best accuracy of ESR for several N, against full OPD and progressive N.",
    options=Options,
    groups=SEEDED_TRAINING_GROUPS,
    configure=configure,
    run=run,
    print_summary=print_summary,
    figure=FIGURE,
    order=50,
    finding="3 N sweep",
    step=5,
)
