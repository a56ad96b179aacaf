"""Finding 10, choosing N before training: the ESR plateau starts where the first N positions
hold ~45% of a trajectory's summed per-position KL.

Claim (PAPER.md): measured on ~1k pre-training rollouts, the cumulative per-position KL reaches
45% of the whole trajectory's at about the N where accuracy stops improving (N=50-100 for
Qwen2.5-Math-1.5B -> Qwen3-1.7B, whose plateau is N in [50, 200]). The share is pooled over
rollouts: KL summed over every rollout's positions < N, over KL summed over all positions.

Command: esr-lab suggest-n --student Qwen/Qwen2.5-Math-1.5B --teacher Qwen/Qwen3-1.7B
         --threshold 0.45          (no options: the toy world's preset)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pandas as pd

from esr_lab import analysis
from esr_lab.console import print_table
from esr_lab.experiments.registry import Experiment, ExperimentResult, Figure, Paths
from esr_lab.experiments.scans import ScanConfig, ScanOptions, configure_scan, open_scan
from esr_lab.figures import plot_suggest_n
from esr_lab.options import SAMPLING_GROUPS, Given, opt
from esr_lab.records import declare, write_table

SHOWN_SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


SCHEMAS = declare(
    {
        "cumulative_kl": (
            "run_id",
            "position",
            "tokens",
            "mean_kl",
            "cumulative_share",
            "threshold",
        ),
        "suggest_n": ("run_id", "threshold", "n", "rollouts", "mean_length"),
    }
)


FIGURE = Figure("suggest_n.png", ("curve.parquet", "summary.parquet"), plot_suggest_n)


@dataclass(frozen=True)
class SuggestConfig(ScanConfig):
    threshold: float = 0.45

    def resolved(self) -> SuggestConfig:
        super().resolved()
        analysis.check_share("--threshold", self.threshold)
        return self


@dataclass
class Options(ScanOptions):
    threshold: Annotated[float | None, opt("Share of the total KL the window holds.")] = None


def configure(options: Options, given: Given) -> SuggestConfig:
    own = {"threshold": options.threshold}
    return configure_scan(SuggestConfig, "suggest_n", options, given, own)


def run(cfg: SuggestConfig, paths: Paths) -> ExperimentResult:
    """Scan, write the cumulative curve and the suggested N; returns run, curve and summary."""
    cfg = cfg.resolved()
    opened = open_scan("suggest_n", cfg, paths)
    run_dir = opened.run_dir
    scan = opened.scan()
    curve = analysis.cumulative_kl(scan.tokens).assign(threshold=cfg.threshold)
    curve.insert(0, "run_id", run_dir.run_id)
    write_table(run_dir.path / "curve.parquet", curve, "cumulative_kl")
    summary = pd.DataFrame(
        {
            "run_id": [run_dir.run_id],
            "threshold": [cfg.threshold],
            "n": [analysis.pick_n(curve, cfg.threshold)],
            "rollouts": [cfg.rollouts],
            "mean_length": [float(pd.Series(scan.lengths).mean())],
        }
    )
    write_table(run_dir.path / "summary.parquet", summary, "suggest_n")
    figure = FIGURE.save(run_dir.path, paths)
    return ExperimentResult(run_dir, {"curve": curve, "summary": summary}, figure)


def print_summary(result: ExperimentResult) -> None:
    """The curve at round shares, with the suggested N's row marked."""
    curve, summary, run_dir = result.tables["curve"], result.tables["summary"], result.run_dir
    n = int(summary.n.iloc[0])
    rows = [analysis.pick_n(curve, share) for share in SHOWN_SHARES]
    shown = curve.set_index(curve.position + 1).loc[sorted({*rows, n})]
    table = pd.DataFrame(
        {
            "N": shown.index,
            "cumulative KL %": shown.cumulative_share.values * 100,
            "mean KL at N": shown.mean_kl.values,
            "rollouts reaching N": shown.tokens.values,
            "": ["<- suggested" if i == n else "" for i in shown.index],
        }
    )
    print_table(table, f"Cumulative per-position KL, run {run_dir.run_id}")
    row = summary.iloc[0]
    print(
        f"suggested N = {n}: the first {n} positions hold {row.threshold * 100:.0f}% of the "
        f"trajectory's KL ({int(row.rollouts)} rollouts, mean length {row.mean_length:.0f} tokens)"
    )


EXPERIMENT = Experiment(
    command="suggest-n",
    folder="suggest_n",
    help="Finding 10: pick N where the first N positions hold 45% of the rollouts' KL.",
    options=Options,
    groups=SAMPLING_GROUPS,
    configure=configure,
    run=run,
    print_summary=print_summary,
    figure=FIGURE,
    order=100,
    finding="10 choosing N",
    step=3,
)
