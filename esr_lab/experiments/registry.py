"""The experiment contract, and the registry that the CLI, `reproduce` and `plot` read.

Every module in `esr_lab/experiments/` that defines `EXPERIMENT = Experiment(...)` is one
subcommand. The module holds, beside each other:
- `Options`: a dataclass of the command's own options (typer options via `Annotated`);
- a frozen `Config` whose `resolved()` fills every default and validates (one-line errors);
- `configure(options, given) -> Config`: command line, then preset, then recipe, then the
  dataclass defaults, through `options.settings`;
- `run(cfg, paths) -> ExperimentResult`: the work, writing the run folder and returning its tables;
- `print_summary(result)`: the short terminal table;
- its table schemas (`records.declare`, which `write_table` checks) and its figure (a plot
  function from `esr_lab.figures` and the saved tables it reads).
Adding a finding is one new module plus its preset section: the CLI builds the subcommand from
the registry, `reproduce` runs every experiment with a `finding`, and `plot` redraws every
`figure` from saved tables.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from esr_lab.figures import latest_run
from esr_lab.records import Paths, RunDir, read_table


@dataclass
class ExperimentResult:
    """What an experiment's run leaves: its folder, the tables it wrote (by file stem), and the
    figure drawn."""

    run_dir: RunDir
    tables: dict[str, pd.DataFrame]
    figure: Path | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # numbers a summary prints besides tables


@dataclass(frozen=True)
class Figure:
    """A figure drawn from saved tables alone: `plot(*frames, targets)`, one frame per file of
    `reads` (parquet files of the run folder, in order). A run folder is complete for the figure
    once its first table exists. `draw` and `save` both read the run folder's tables, so the
    figure a run draws is the one `esr-lab plot` redraws."""

    file: str
    reads: tuple[str, ...]
    plot: Callable[..., None]

    def draw(self, run_folder: Path, targets: list[Path]) -> None:
        """Draw from the run folder's saved tables into the files `targets` (`esr-lab plot`)."""
        self.plot(*(read_table(run_folder / name) for name in self.reads), targets)

    def save(self, run_folder: Path, paths: Paths) -> Path:
        """Draw as a run ends, once it has saved the tables of `reads`, into the run folder (and
        the figures folder, where one was asked for); returns the last copy written. Committed
        figures change only through `plot` and `reproduce --figures-dir`."""
        targets = [run_folder / self.file]
        if paths.figures_dir is not None:
            targets.append(paths.figures_dir / self.file)
        self.draw(run_folder, targets)
        return targets[-1]


@dataclass(frozen=True)
class Experiment:
    """One subcommand: what the CLI, reproduce and plot need to know about it."""

    command: str  # the subcommand, e.g. "sweep-n"
    folder: str  # its runs live in <results>/<folder>/<run_id>/
    help: str
    options: type  # dataclass of the command's own options
    groups: tuple[type, ...]  # shared option groups it takes (esr_lab.options)
    configure: Callable[[Any, Any], Any]
    run: Callable[[Any, Paths], ExperimentResult | None]
    print_summary: Callable[[ExperimentResult], None]
    figure: Figure | None = None
    order: int = 100  # position in `esr-lab --help`
    finding: str | None = None  # the paper finding `reproduce` runs it for; None: not a step
    step: int = 0  # position in `reproduce`: cheap scans first, then training


def experiments() -> list[Experiment]:
    """Every experiment module's EXPERIMENT, in `order`."""
    package = importlib.import_module("esr_lab.experiments")
    found = []
    for module in pkgutil.iter_modules(package.__path__):
        loaded = importlib.import_module(f"esr_lab.experiments.{module.name}")
        if isinstance(getattr(loaded, "EXPERIMENT", None), Experiment):
            found.append(loaded.EXPERIMENT)
    return sorted(found, key=lambda e: (e.order, e.command))


def figures() -> dict[str, Figure]:
    """Each experiment's figure by its results folder, for `esr-lab plot`."""
    return {e.folder: e.figure for e in experiments() if e.figure is not None}


def reproduction_steps() -> list[Experiment]:
    """The experiments `reproduce` runs, cheap scans first, then training."""
    return sorted((e for e in experiments() if e.finding is not None), key=lambda e: e.step)


def rebuild_all(results_dir: Path, out_dir: Path) -> list[Path]:
    """Every figure whose experiment has a complete run in `results_dir`, drawn into `out_dir`
    from its saved tables (`esr-lab plot`)."""
    written = []
    for folder, figure in figures().items():
        run = latest_run(Path(results_dir) / folder, *figure.reads)
        if run is not None:
            figure.draw(run, [Path(out_dir) / figure.file])
            written.append(Path(out_dir) / figure.file)
    return written
