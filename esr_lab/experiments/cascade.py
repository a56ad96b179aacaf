"""Finding 5, the cascade: training only the first N positions (ESR) lowers the student's KL
to the teacher at the later, untrained positions too.

Claim (PAPER.md, ESR-100, Qwen2.5-Math-1.5B -> Qwen3-1.7B, bins ~50 wide up to ~700): KL on the
trained window drops by about half, and on the untrained positions 100+ by 30-40%
(`paper_kl_cascade_curves.png`). Each student is scored on its own rollouts (same seeds), as in
training; the gap closed per region is 100 * (base - trained) / base of the token-weighted mean
KL there, a bin counting as trained when it starts before N.

The trained student is `--esr-checkpoint` (an adapter folder from `esr-lab train`, trained with
`--n`), or else an ESR(N) run trained here with the preset's settings under its
content-addressed id in `<results>/runs/`, so `sweep-n` and `submode` share it. A trained run's
final checkpoint is used: "after training", independent of noisy per-step evaluations.

Command: esr-lab cascade --student Qwen/Qwen2.5-Math-1.5B --teacher Qwen/Qwen3-1.7B --n 100
         --bin-width 50 [--esr-checkpoint results/train/<run>/checkpoints/step-000200/model]
         (no options: the toy world's preset)
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from esr_lab import analysis
from esr_lab.adapters import check_checkpoint, load_adapter, trained_adapter
from esr_lab.console import print_table
from esr_lab.experiments.registry import Experiment, ExperimentResult, Figure, Paths
from esr_lab.experiments.scans import (
    TrainedScanConfig,
    TrainedScanOptions,
    configure_trained_scan,
    open_scan,
)
from esr_lab.figures import plot_cascade
from esr_lab.options import TRAINING_GROUPS, BinWidth, Given
from esr_lab.records import declare, write_table

SCHEMAS = declare(
    {"cascade_summary": ("run_id", "region", "window", "base_kl", "trained_kl", "closed_pct")}
)


FIGURE = Figure("cascade.png", ("bins.parquet", "summary.parquet"), plot_cascade)


@dataclass(frozen=True)
class CascadeConfig(TrainedScanConfig):
    bin_width: int = 50

    def resolved(self) -> CascadeConfig:
        super().resolved()
        analysis.check_bin_width(self.bin_width)
        check_checkpoint(self.esr_checkpoint, self.esr(), "--esr-checkpoint")
        return self


@dataclass
class Options(TrainedScanOptions):
    bin_width: BinWidth = None


def configure(options: Options, given: Given) -> CascadeConfig:
    own = {"bin_width": options.bin_width}
    return configure_trained_scan(CascadeConfig, "cascade", options, given, own)


def run(cfg: CascadeConfig, paths: Paths) -> ExperimentResult:
    """Train (or take) ESR, scan base and trained students, bin, summarise, plot."""
    cfg = cfg.resolved()
    adapter = trained_adapter(cfg.esr(), cfg.esr_checkpoint, paths.results_dir, paths.show_progress)
    window = cfg.base.n
    opened = open_scan("cascade", cfg, paths, esr_adapter=adapter)
    run_dir = opened.run_dir
    frames = []
    for model in ("base", "esr"):
        if model == "esr":
            load_adapter(opened.student, adapter)
        scan = opened.scan(label=f"{model} student")
        frames.append(
            analysis.tagged_bins(scan.tokens, cfg.bin_width, model, window, run_dir.run_id)
        )
    bins = pd.concat(frames, ignore_index=True)
    write_table(run_dir.path / "bins.parquet", bins, "position_bins")
    summary = analysis.cascade_summary(bins, window).assign(run_id=run_dir.run_id, window=window)
    summary = summary[["run_id", "region", "window", "base_kl", "trained_kl", "closed_pct"]]
    write_table(run_dir.path / "summary.parquet", summary, "cascade_summary")
    figure = FIGURE.save(run_dir.path, paths)
    return ExperimentResult(run_dir, {"bins": bins, "summary": summary}, figure)


def print_summary(result: ExperimentResult) -> None:
    summary, run_dir = result.tables["summary"], result.run_dir
    window = int(summary.window.iloc[0])
    shown = pd.DataFrame(
        {
            "positions": summary.region.map(
                {"trained": f"trained 0-{window - 1}", "untrained": f"untrained {window}+"}
            ),
            "base KL": summary.base_kl,
            "ESR KL": summary.trained_kl,
            "gap closed %": summary.closed_pct,
        }
    )
    print_table(
        shown, f"Cascade: KL to the teacher before and after ESR-{window}, run {run_dir.run_id}"
    )


EXPERIMENT = Experiment(
    command="cascade",
    folder="cascade",
    help="Finding 5: per-position KL before and after ESR training; the gap closed past N.",
    options=Options,
    groups=TRAINING_GROUPS,
    configure=configure,
    run=run,
    print_summary=print_summary,
    figure=FIGURE,
    order=120,
    finding="5 cascade",
    step=7,
)
