"""`esr-lab reproduce`: every experiment of the paper, in order, on one pair.

The steps are the registry's experiments that name a paper finding, in their `step` order. Each
step is the ordinary experiment with a fixed run id (`reproduce-<preset>`), so a killed
reproduction resumes where it stopped: finished steps are rebuilt from their saved parts, and
the training runs behind `sweep-n`, `select`, `cascade` and `submode` are shared through
their content-addressed folders under `results/runs/`, so each is trained once.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from esr_lab.console import console, print_table
from esr_lab.errors import UserError
from esr_lab.experiments.registry import Experiment


def pick_steps(only: str | None, steps: Sequence[Experiment]) -> list[Experiment]:
    """All steps, or the comma-separated subset named by --only (kept in run order)."""
    if not only:
        return list(steps)
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    unknown = wanted - {step.command for step in steps}
    if unknown or not wanted:
        raise UserError(
            f"--only names unknown steps {sorted(unknown)}; choose from "
            f"{', '.join(step.command for step in steps)}"
        )
    return [step for step in steps if step.command in wanted]


def run(steps: Sequence[Experiment], invoke: Callable[[Experiment], None]) -> pd.DataFrame:
    """Run each step through `invoke(step)`, with an overall progress header and timing table."""
    started, rows = time.time(), []
    for index, step in enumerate(steps, start=1):
        elapsed = time.time() - started
        eta = elapsed / (index - 1) * (len(steps) - index + 1) if index > 1 else float("nan")
        console.rule(
            f"[bold]reproduce {index}/{len(steps)}: {step.command}[/] (finding {step.finding}) - "
            f"elapsed {elapsed / 60:.1f} min, remaining ~{eta / 60:.0f} min"
        )
        step_start = time.time()
        invoke(step)
        minutes = (time.time() - step_start) / 60
        rows.append({"step": step.command, "finding": step.finding, "minutes": minutes})
    table = pd.DataFrame(rows)
    print_table(table, f"Reproduction finished in {(time.time() - started) / 60:.1f} min")
    return table


SMALL_TABLE_BYTES = 1 << 20


def export_summaries(results_dir: Path, run_id: str, dest: Path) -> list[Path]:
    """Copy each experiment's config.json and small tables (not samples, parts, checkpoints)
    of run `run_id` to `dest/<experiment>/<run_id>/`: what a figure or a README table needs,
    small enough to commit."""
    copied = []
    for run in sorted(Path(results_dir).glob(f"*/{run_id}")):
        for file in sorted(run.iterdir()):
            small_table = file.suffix == ".parquet" and file.stat().st_size < SMALL_TABLE_BYTES
            if file.name == "config.json" or small_table:
                target = dest / run.parent.name / run_id / file.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, target)
                copied.append(target)
    return copied
