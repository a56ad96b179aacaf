"""Running a family of training variants for one experiment.

Each variant is an ordinary training run stored by content under `<results>/runs/<label>-<hash
of its config>/`: a killed sweep resumes mid-variant, and a variant that another experiment
already trained with the same config (the ESR and full-OPD runs shared by `sweep-n`, `select`,
`cascade` and `submode`) is reused, not retrained. The experiment's own folder holds its
config.json (naming its variant runs) and the combined tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from esr_lab.console import console
from esr_lab.records import RunDir, open_run, write_table

if TYPE_CHECKING:
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
    from esr_lab import train
    from esr_lab.loop import train_variant, variant_run_id

    config = dict(config, variant_runs=[variant_run_id(v) for v in variants])
    train.check_inputs(variants[0].resolved())  # bad input fails before anything is written
    parent = open_run(results_dir, experiment, config, run_id)
    summaries, evals = [], []
    for index, variant in enumerate(variants, start=1):
        console.print(f"[bold]{experiment}[/] variant {index}/{len(variants)}: {variant.label}")
        trained = train_variant(variant, results_dir, show_progress)
        summaries.append(trained.summary)
        evals.append(trained.evals)
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
