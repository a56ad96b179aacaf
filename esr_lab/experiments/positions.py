"""Finding 4, the per-position profile: on student rollouts, reverse KL to the teacher, student
entropy H_s and teacher entropy H_t, each averaged over position bins.

Claim (PAPER.md, Qwen2.5-Math-1.5B -> Qwen3-1.7B, ~1k rollouts, bins ~10 wide up to 500): all
three are highest at the first positions (KL ~4.5 nats in the first bin, under 1 after ~100;
H_s ~1.0 falling to ~0.2), which is where ESR(N=100) spends its whole loss
(`paper_three_curves_by_position.png`). The toy world is built so that its plan tokens come
first; its arithmetic slips later in the answer keep KL high there too, so the toy profile is
not expected to fall monotonically.

Command: esr-lab positions --student Qwen/Qwen2.5-Math-1.5B --teacher Qwen/Qwen3-1.7B
         --bin-width 10            (no options: the toy world's preset)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated

from esr_lab import analysis
from esr_lab.config import ModelPair, Sampling
from esr_lab.console import print_table
from esr_lab.experiments.registry import Experiment, Figure, Paths, Result
from esr_lab.figures import MIN_BIN_SHARE, plot_positions, reached_bins
from esr_lab.options import (
    BinWidth,
    Given,
    ModelOptions,
    RunOptions,
    SamplingOptions,
    ScanDataset,
    ScanPreset,
    ScanRollouts,
    opt,
    settings,
)
from esr_lab.records import open_run, write_table

FIGURE = Figure("positions.png", ("bins.parquet",), plot_positions)


@dataclass(frozen=True)
class PositionsConfig:
    pair: ModelPair = field(default_factory=ModelPair)
    sampling: Sampling = field(default_factory=Sampling)
    recipe: str = "esr-lab"  # the recipe the sampling came from (recipes.RECIPES)
    preset: str | None = None  # the preset named on the command line
    dataset: str | None = None  # None: the toy world's training prompts, else math500
    rollouts: int = 1000
    bin_width: int = 10
    window: int = 100  # the ESR window shaded in the figure
    seed: int = 0
    batch_size: int = 64

    def resolved(self) -> PositionsConfig:
        analysis.check_rollouts(self.rollouts)
        analysis.check_bin_width(self.bin_width)
        return self


@dataclass
class Options:
    dataset: ScanDataset = None
    rollouts: ScanRollouts = None
    bin_width: BinWidth = None
    window: Annotated[int | None, opt("ESR window to shade [default: the preset's N].")] = None
    preset: ScanPreset = None


def configure(options: Options, given: Given) -> PositionsConfig:
    student = given.models.student
    given_values = {"rollouts": options.rollouts, "bin_width": options.bin_width}
    values = settings("positions", student, given_values, options.preset)
    window = options.window or settings("train", student, {}, options.preset).get("n")
    return PositionsConfig(
        **given.sampled_as_training(options.preset),
        dataset=options.dataset,
        seed=given.run.seed,
        **values,
        **({"window": window} if window else {}),
    )


def run(cfg: PositionsConfig, paths: Paths) -> Result:
    """Scan, bin, write bins.parquet and the figure; returns the run and its bins."""
    cfg = cfg.resolved()
    problems = analysis.scan_problems(cfg.dataset, cfg.pair.student, cfg.rollouts)
    student, teacher = analysis.load_pair(cfg.pair, cfg.batch_size)
    run_dir = open_run(paths.results_dir, "positions", asdict(cfg), paths.run_id)
    scan = analysis.scan(
        student, teacher, problems, cfg.rollouts, cfg.sampling, cfg.seed, paths.show_progress
    )
    bins = analysis.tagged_bins(scan.tokens, cfg.bin_width, "base", cfg.window, run_dir.run_id)
    write_table(run_dir.path / "bins.parquet", bins, "position_bins")
    figure = FIGURE.save((bins,), paths, run_dir.path)
    return Result(run_dir, {"bins": bins}, figure)


def print_summary(result: Result) -> None:
    """The bins most rollouts reach; the sparse tail stays in bins.parquet."""
    bins, run_dir = result.tables["bins"], result.run_dir
    shown = reached_bins(bins)
    shown = shown.assign(
        positions=[f"{s}-{e - 1}" for s, e in zip(shown.bin_start, shown.bin_end, strict=True)]
    )
    shown = shown[["positions", "tokens", "reverse_kl", "student_entropy", "teacher_entropy"]]
    print_table(shown, f"Per-position profile (nats), run {run_dir.run_id}")
    if len(shown) < len(bins):
        hidden = len(bins) - len(shown)
        print(f"({hidden} bins reached by under {MIN_BIN_SHARE:.0%} of rollouts not shown)")


EXPERIMENT = Experiment(
    command="positions",
    folder="positions",
    help="Finding 4: per-position reverse KL, student and teacher entropy of student rollouts.",
    options=Options,
    groups=(ModelOptions, SamplingOptions, RunOptions),
    configure=configure,
    run=run,
    print_summary=print_summary,
    figure=FIGURE,
    order=90,
    finding="4 per-position KL",
    step=2,
)
