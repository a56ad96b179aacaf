"""Running a family of training variants inside one parent run folder.

A sweep's folder holds its own config.json and summary, and one sub-run per variant under
`runs/<label>/`; each sub-run resumes on its own, so a killed sweep picks up mid-variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from esr_lab import loop
from esr_lab.console import console
from esr_lab.records import RunDir, open_run, write_table
from esr_lab.train import TrainConfig


def run_variants(
    experiment: str,
    config: dict,
    variants: Sequence[TrainConfig],
    results_dir: Path,
    run_id: str | None,
    show_progress: bool,
) -> tuple[RunDir, pd.DataFrame, pd.DataFrame]:
    """Train every variant; returns the parent run, the summaries, and all evaluations."""
    parent = open_run(results_dir, experiment, config, run_id)
    summaries, evals = [], []
    for index, variant in enumerate(variants, start=1):
        console.print(f"[bold]{experiment}[/] variant {index}/{len(variants)}: {variant.label}")
        run_dir, summary = loop.run(variant, parent.path, variant.label, show_progress, "runs")
        summaries.append(summary)
        evals.append(pd.read_parquet(run_dir.path / "evals.parquet"))
    summary = pd.concat(summaries, ignore_index=True)
    write_table(parent.path / "summary.parquet", summary, "train_summary")
    all_evals = pd.concat(evals, ignore_index=True)
    write_table(parent.path / "evals.parquet", all_evals, "train_evals")
    return parent, summary, all_evals


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The terminal view: accuracies in percent."""
    return pd.DataFrame(
        {
            "variant": summary.label,
            "base %": summary.base_avg_at_k * 100,
            "best avg@k %": summary.best_avg_at_k * 100,
            "best step": summary.best_step,
            "pass@k %": summary.best_pass_at_k * 100,
            "final %": summary.final_avg_at_k * 100,
            "collapsed": summary.collapsed.map({True: "yes", False: "no"}),
        }
    )
