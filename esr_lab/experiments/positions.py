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
from pathlib import Path

import pandas as pd

from esr_lab import analysis
from esr_lab.config import ModelPair, Sampling
from esr_lab.console import print_table
from esr_lab.figures import MIN_BIN_SHARE, plot_positions, reached_bins
from esr_lab.records import RunDir, open_run, write_table


@dataclass(frozen=True)
class PositionsConfig:
    pair: ModelPair = field(default_factory=ModelPair)
    sampling: Sampling = field(default_factory=Sampling)
    dataset: str | None = None  # None: the toy world's training prompts, else math500
    rollouts: int = 1000
    bin_width: int = 10
    window: int = 100  # the ESR window shaded in the figure
    seed: int = 0
    batch_size: int = 64


def run(
    cfg: PositionsConfig,
    results_dir: Path = Path("results"),
    figures_dir: Path = Path("figures"),
    run_id: str | None = None,
    show_progress: bool = True,
) -> tuple[RunDir, pd.DataFrame]:
    """Scan, bin, write bins.parquet and the figure; returns the run and its bins."""
    analysis.check_rollouts(cfg.rollouts)
    analysis.check_bin_width(cfg.bin_width)
    problems = analysis.scan_problems(cfg.dataset, cfg.pair.student, cfg.rollouts)
    student, teacher = analysis.load_pair(cfg.pair, cfg.batch_size)
    run_dir = open_run(results_dir, "positions", asdict(cfg), run_id)
    scan = analysis.scan(
        student, teacher, problems, cfg.rollouts, cfg.sampling, cfg.seed, show_progress
    )
    bins = analysis.tagged_bins(scan.tokens, cfg.bin_width, "base", cfg.window, run_dir.run_id)
    write_table(run_dir.path / "bins.parquet", bins, "position_bins")
    plot_positions(bins, [figures_dir / "positions.png", run_dir.path / "positions.png"])
    return run_dir, bins


def print_summary(bins: pd.DataFrame, run_dir: RunDir) -> None:
    """The bins most rollouts reach; the sparse tail stays in bins.parquet."""
    shown = reached_bins(bins)
    shown = shown.assign(
        positions=[f"{s}-{e - 1}" for s, e in zip(shown.bin_start, shown.bin_end, strict=True)]
    )
    shown = shown[["positions", "tokens", "reverse_kl", "student_entropy", "teacher_entropy"]]
    print_table(shown, f"Per-position profile (nats), run {run_dir.run_id}")
    if len(shown) < len(bins):
        hidden = len(bins) - len(shown)
        print(f"({hidden} bins reached by under {MIN_BIN_SHARE:.0%} of rollouts not shown)")
