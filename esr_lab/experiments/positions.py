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

from dataclasses import dataclass
from typing import Annotated

from esr_lab import analysis
from esr_lab.console import print_table
from esr_lab.experiments.registry import Experiment, ExperimentResult, Figure, Paths
from esr_lab.experiments.scans import ScanConfig, ScanOptions, configure_scan, open_scan
from esr_lab.figures import MIN_BIN_SHARE, plot_positions, reached_bins
from esr_lab.options import SAMPLING_GROUPS, BinWidth, Given, opt, settings
from esr_lab.records import write_table

FIGURE = Figure("positions.png", ("bins.parquet",), plot_positions)


@dataclass(frozen=True)
class PositionsConfig(ScanConfig):
    bin_width: int = 10
    window: int = 100  # the ESR window shaded in the figure

    def resolved(self) -> PositionsConfig:
        super().resolved()
        analysis.check_bin_width(self.bin_width)
        return self


@dataclass
class Options(ScanOptions):
    bin_width: BinWidth = None
    window: Annotated[int | None, opt("ESR window to shade [default: the preset's N].")] = None


def configure(options: Options, given: Given) -> PositionsConfig:
    window = options.window or settings("train", given.models.student, {}, options.preset).get("n")
    own = {"bin_width": options.bin_width}
    return configure_scan(
        PositionsConfig, "positions", options, given, own, **({"window": window} if window else {})
    )


def run(cfg: PositionsConfig, paths: Paths) -> ExperimentResult:
    """Scan, bin, write bins.parquet and the figure; returns the run and its bins."""
    cfg = cfg.resolved()
    opened = open_scan("positions", cfg, paths)
    run_dir = opened.run_dir
    scan = opened.scan()
    bins = analysis.tagged_bins(scan.tokens, cfg.bin_width, "base", cfg.window, run_dir.run_id)
    write_table(run_dir.path / "bins.parquet", bins, "position_bins")
    figure = FIGURE.save(run_dir.path, paths)
    return ExperimentResult(run_dir, {"bins": bins}, figure)


def print_summary(result: ExperimentResult) -> None:
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
    groups=SAMPLING_GROUPS,
    configure=configure,
    run=run,
    print_summary=print_summary,
    figure=FIGURE,
    order=90,
    finding="4 per-position KL",
    step=2,
)
