"""Running a family of training variants for one experiment, once per seed where asked.

Each variant is an ordinary training run stored by content under `<results>/runs/<label>-<hash
of its config>/`: a killed sweep resumes mid-variant, and a variant that another experiment
already trained with the same config (the ESR and full-OPD runs shared by `sweep-n`, `select`,
`cascade` and `submode`) is reused, not retrained. The experiment's own folder holds its
config.json (naming its variant runs) and the combined tables.

With `--seeds`, every variant is trained once per seed (the seed is part of the config, so each
is its own content-addressed run) and three more tables answer how much of a difference is
noise: `seeds.parquet` (one row per variant and seed), `seed_aggregate.parquet` (per variant,
the mean, standard deviation and 95% interval over seeds of its best and final avg@k, and the
same for the paired differences the experiment's finding makes) and `seed_differences.parquet`
(those differences seed by seed). The interval is a Student-t interval over seeds: training
runs, not problems, are the unit, and with a handful of seeds the normal interval would be far
too narrow. Differences are paired by seed (variant and reference trained from the same seed
share prompts and sampling randomness), which removes the seed-to-seed spread both share.
Without `--seeds` nothing of this is written and the run is exactly what it always was.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, NamedTuple

import pandas as pd

from esr_lab.console import print_table, progress_bar
from esr_lab.intervals import t_interval
from esr_lab.records import Paths, RunDir, declare, open_run, write_table

if TYPE_CHECKING:
    from esr_lab.experiments.registry import ExperimentResult
    from esr_lab.train_config import TrainConfig

SEED_METRICS = ("best_avg_at_k", "final_avg_at_k")
SCHEMAS = declare(
    {
        "seed_runs": ("run_id", "variant", "seed", "train_run", *SEED_METRICS),
        # reference "": the variant's own accuracy; else the paired difference variant - reference
        "seed_aggregate": (
            "run_id",
            "variant",
            "reference",
            "metric",
            "n_seeds",
            "mean",
            "sd",
            "ci_low",
            "ci_high",
        ),
        "seed_differences": ("run_id", "variant", "reference", "metric", "seed", "difference"),
    }
)


class Trained(NamedTuple):
    """An experiment's training: its run, the summaries and evaluations of every training run
    (variant-major, then seed), and the seed tables by file stem (empty without --seeds)."""

    parent: RunDir
    summary: pd.DataFrame
    evals: pd.DataFrame
    seed_tables: dict[str, pd.DataFrame]


def with_seeds(variants: Sequence[TrainConfig], seeds: Sequence[int] | None) -> list:
    """Every variant once per seed (variant-major), or the variants as they are."""
    if seeds is None:
        return list(variants)
    return [replace(v, seed=seed) for v in variants for seed in seeds]


def run_variants(
    experiment: str,
    config: dict,
    variants: Sequence[TrainConfig],
    paths: Paths,
    seeds: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    comparisons: Sequence[tuple[str, str]] = (),
) -> Trained:
    """Train every variant (once per seed of `seeds`, `paths.jobs` at a time); with seeds, also
    tabulate each variant (by `names`, default its label) over seeds and each (variant,
    reference) of `comparisons` as paired differences."""
    from esr_lab import train, workers
    from esr_lab.loop import variant_run_id

    names = list(names) if names is not None else [v.label for v in variants]
    runs = with_seeds(variants, seeds)
    config = dict(config, variant_runs=[variant_run_id(v) for v in runs])
    if seeds is not None:  # only then: a single-seed run keeps its config, so its run id
        config["seeds"] = list(seeds)
    train.check_inputs(runs[0].resolved())  # bad input fails before anything is written
    parent = open_run(paths.results_dir, experiment, config, paths.run_id)
    trained = workers.train_all(experiment, runs, paths)
    summary = pd.concat([t.summary for t in trained], ignore_index=True)
    write_table(parent.path / "summary.parquet", summary, "train_summary")
    all_evals = pd.concat([t.evals for t in trained], ignore_index=True)
    write_table(parent.path / "evals.parquet", all_evals, "train_evals")
    tables = {}
    if seeds is not None:
        names_per_run = [name for name in names for _ in seeds]
        seeds_per_run = [seed for _ in names for seed in seeds]
        tables = seed_tables(parent.run_id, summary, names_per_run, seeds_per_run, comparisons)
        for stem, table in tables.items():
            write_table(parent.path / f"{stem}.parquet", table, SEED_SCHEMAS[stem])
    return Trained(parent, summary, all_evals, tables)


def measure_steps(cfg: TrainConfig, warmup: int, show_progress: bool) -> tuple[list[dict], str]:
    """Metrics of each measured step of `cfg` (a fresh student on the run's prompts, nothing
    saved): its `cfg.steps` steps, the first `warmup` of them unmeasured (first-call
    allocations, kernel selection); and the device it ran on."""
    from esr_lab import train

    trainer = train.setup(cfg.resolved())
    device, rows = str(trainer.student.loaded.device), []
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"timing {cfg.label}", total=cfg.steps)
        for step in range(1, cfg.steps + 1):
            metrics = train.train_step(trainer, step)
            if step > warmup:
                rows.append(metrics)
            bar.advance(task)
    del trainer
    gc.collect()
    return rows, device


def train_family(
    experiment: str,
    cfg,
    paths: Paths,
    variants: Sequence[TrainConfig] | None = None,
    names: Sequence[str] | None = None,
    comparisons: Sequence[tuple[str, str]] | None = None,
    extra: dict | None = None,
) -> Trained:
    """Train an experiment config's variants (its `variants()`, or those given under `names`)
    once per seed of its `seeds`, tabulating its `comparisons()` (or those given); its
    config.json holds the config, the variants' names and `extra` (the seeds only where given:
    run_variants records them)."""
    variants = cfg.variants() if variants is None else variants
    names = [v.label for v in variants] if names is None else list(names)
    config = dict(asdict(cfg), variants=names, **(extra or {}))
    config.pop("seeds")
    comparisons = cfg.comparisons() if comparisons is None else comparisons
    return run_variants(experiment, config, variants, paths, cfg.seeds, names, comparisons)


SEED_SCHEMAS = {
    "seeds": "seed_runs",
    "seed_aggregate": "seed_aggregate",
    "seed_differences": "seed_differences",
}


def seed_tables(
    run_id: str,
    summary: pd.DataFrame,
    names: Sequence[str],
    seeds: Sequence[int],
    comparisons: Sequence[tuple[str, str]],
) -> dict[str, pd.DataFrame]:
    """The per-seed rows, their aggregate over seeds, and the paired differences; `names` and
    `seeds` name each row of `summary` (one per training run, in order)."""
    per_seed = pd.DataFrame(
        {
            "run_id": run_id,
            "variant": list(names),
            "seed": list(seeds),
            "train_run": summary.run_id.to_numpy(),
            **{m: summary[m].to_numpy() for m in SEED_METRICS},
        }
    )
    aggregate, differences = [], []
    for name, part in per_seed.groupby("variant", sort=False):
        for metric in SEED_METRICS:
            aggregate.append(_aggregate_row(run_id, name, "", metric, part[metric].tolist()))
    indexed = per_seed.set_index(["variant", "seed"])
    for name, reference in comparisons:
        for metric in SEED_METRICS:
            gaps = indexed.loc[name, metric] - indexed.loc[reference, metric]  # paired by seed
            aggregate.append(_aggregate_row(run_id, name, reference, metric, gaps.tolist()))
            differences += [
                {
                    "run_id": run_id,
                    "variant": name,
                    "reference": reference,
                    "metric": metric,
                    "seed": int(seed),
                    "difference": float(gap),
                }
                for seed, gap in gaps.items()
            ]
    columns = SCHEMAS["seed_differences"]
    return {
        "seeds": per_seed,
        "seed_aggregate": pd.DataFrame(aggregate, columns=SCHEMAS["seed_aggregate"]),
        "seed_differences": pd.DataFrame(differences, columns=columns),
    }


def _aggregate_row(run_id, name, reference, metric, values: list[float]) -> dict:
    mean, sd, low, high = t_interval(values)
    return {
        "run_id": run_id,
        "variant": name,
        "reference": reference,
        "metric": metric,
        "n_seeds": len(values),
        "mean": mean,
        "sd": sd,
        "ci_low": low,
        "ci_high": high,
    }


def summary_table(summary: pd.DataFrame, seeds: pd.DataFrame | None = None) -> pd.DataFrame:
    """The terminal view: accuracies in percent; with the seeds table, each row's seed."""
    seed = {} if seeds is None else {"seed": seeds.seed.to_numpy()}
    return pd.DataFrame(
        {
            "variant": summary.label,
            **seed,
            "base %": summary.base_avg_at_k * 100,
            "best avg@k %": summary.best_avg_at_k * 100,
            "best step": summary.best_step,
            "pass@k %": summary.best_pass_at_k * 100,
            "final %": summary.final_avg_at_k * 100,
            "collapsed": summary.collapsed.map({True: "yes", False: "no"}),
        }
    )


def seed_table(aggregate: pd.DataFrame) -> pd.DataFrame:
    """The terminal view of seed_aggregate: one row per variant (or paired difference), best
    and final avg@k in percent: mean, standard deviation and 95% interval over seeds ("-" where
    undefined: one seed)."""
    rows = []
    for (name, reference), part in aggregate.groupby(["variant", "reference"], sort=False):
        cells = part.set_index("metric")
        row = {"variant": f"{name} - {reference}" if reference else name}
        row["seeds"] = int(part.n_seeds.iloc[0])
        for metric, title in (("best_avg_at_k", "best"), ("final_avg_at_k", "final")):
            cell = cells.loc[metric]
            row[f"{title} % ±sd"] = f"{_pct(cell['mean'])}±{_pct(cell.sd)}"
            row[f"{title} 95% CI"] = f"{_pct(cell.ci_low)}..{_pct(cell.ci_high)}"
        rows.append(row)
    return pd.DataFrame(rows)


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 100:.2f}"


def print_seed_summary(tables: dict[str, pd.DataFrame], title: str) -> None:
    """The aggregate over seeds, where the run had --seeds (nothing otherwise)."""
    if "seed_aggregate" in tables:
        print_table(seed_table(tables["seed_aggregate"]), f"{title}: over seeds (95% t-interval)")


def print_trained_summary(result: ExperimentResult, title: str) -> None:
    """The training summary (a row per seed, with --seeds) and the aggregate over seeds."""
    print_table(summary_table(result.tables["summary"], result.tables.get("seeds")), title)
    print_seed_summary(result.tables, title)


def trained_tables(trained: Trained) -> dict[str, pd.DataFrame]:
    """The tables an ExperimentResult carries: summary, evals and, with --seeds, the seed tables."""
    return {"summary": trained.summary, "evals": trained.evals, **trained.seed_tables}
