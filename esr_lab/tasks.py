"""Tasks: what a benchmark asks of a model and how its responses are graded.

One entry per task (math, humaneval, bfcl): how to load its problems, the instruction that
follows every problem in the user turn, how to grade a table of responses, and the task's own
metrics. `esr-lab grade` and `esr-lab eval` go through `load_task_problems`, `grade` and
`metrics`; the trainer's per-step evaluation can call the same three with a task name. Both
commands write their graded samples and summary with `write_graded` and show them with
`print_summary`.

Every problem has `id`, `problem` (the user-turn text) and `answer` (gold; for code the
canonical solution, for BFCL the possible answers); the rest is the task's own.
Samples are a table with `problem_id`, `sample` and `completion` (the response text).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from esr_lab import bfcl, humaneval
from esr_lab.console import print_table
from esr_lab.errors import UserError
from esr_lab.prompts import DEFAULT_INSTRUCTION
from esr_lab.records import SCHEMAS, RunDir, write_table


def _load_math(dataset: str, limit: int | None) -> list:
    from esr_lab.data import load_problems

    return load_problems(dataset, limit=limit)


def _grade_math(samples: pd.DataFrame, problems: Sequence) -> pd.DataFrame:
    from esr_lab.metrics import grade_samples  # imports torch; math only

    return grade_samples(samples, problems, "last_boxed")


def _math_metrics(graded: pd.DataFrame) -> dict[str, float]:
    from esr_lab.metrics import majority_correct

    by_problem = graded.groupby("problem_id", sort=False)
    return {
        "maj_at_k": float(by_problem.apply(majority_correct, include_groups=False).mean()),
        "relaxed_accuracy": float(by_problem.correct_relaxed.mean().mean()),
    }


@dataclass(frozen=True)
class Task:
    """A benchmark's loader, prompt instruction, grader and extra metrics."""

    default_dataset: str
    instruction: str
    load: Callable[[str, int | None], list]
    grade: Callable[[pd.DataFrame, Sequence], pd.DataFrame]
    extra_metrics: Callable[[pd.DataFrame], dict[str, float]]


TASKS: dict[str, Task] = {
    "math": Task("math500", DEFAULT_INSTRUCTION, _load_math, _grade_math, _math_metrics),
    "humaneval": Task(
        "humaneval",
        humaneval.INSTRUCTION,
        humaneval.load_code_problems,
        humaneval.grade_code,
        lambda graded: {},
    ),
    "bfcl": Task(
        "bfcl", bfcl.INSTRUCTION, bfcl.load_call_problems, bfcl.grade_calls, bfcl.call_metrics
    ),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; use one of {', '.join(TASKS)}")
    return TASKS[name]


def task_for_dataset(dataset: str) -> str:
    """humaneval/humaneval_plus -> humaneval, bfcl -> bfcl, anything else -> math."""
    if dataset in humaneval.DATASETS:
        return "humaneval"
    return "bfcl" if dataset == "bfcl" else "math"


def load_task_problems(task: str, dataset: str | None = None, limit: int | None = None) -> list:
    """The task's problems from `dataset` (default: the task's benchmark)."""
    if limit is not None and limit < 1:
        raise UserError(f"limit={limit} is not valid; use a positive number of problems or none")
    spec = get_task(task)
    return spec.load(dataset or spec.default_dataset, limit)


def grade(task: str, samples: pd.DataFrame, problems: Sequence) -> pd.DataFrame:
    """The samples with the task's grading columns added, `correct` among them."""
    return get_task(task).grade(samples, problems)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    # Chen et al. 2021 (Codex paper), eq. 1, in its numerically stable product form.
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def metrics(task: str, graded: pd.DataFrame) -> dict[str, float]:
    """accuracy (mean over problems of the share correct: pass@1, avg@k), pass@k for k = the
    fewest samples any problem has, counts, and the task's own metrics."""
    counts = graded.groupby("problem_id", sort=False).correct.agg(["size", "sum"])
    k = int(counts["size"].min())
    pairs = list(counts.itertuples(index=False))
    accuracy = sum(pass_at_k(n, c, 1) for n, c in pairs) / len(pairs)
    return {
        "accuracy": accuracy,
        "pass_at_1": accuracy,
        "k": float(k),
        "pass_at_k": sum(pass_at_k(n, c, k) for n, c in pairs) / len(pairs),
        "n_problems": float(len(pairs)),
        "n_samples": float(len(graded)),
        **get_task(task).extra_metrics(graded),
    }


def write_graded(
    run_dir: RunDir, task: str, dataset: str, samples: pd.DataFrame, problems: list
) -> pd.DataFrame:
    """Grade, write samples.parquet and summary.parquet; returns the one-row summary."""
    graded = grade(task, samples, problems)
    graded.insert(0, "run_id", run_dir.run_id)
    write_table(run_dir.path / "samples.parquet", graded, f"graded_{task}")
    row = {"run_id": run_dir.run_id, "task": task, "dataset": dataset}
    summary = pd.DataFrame([{**row, **metrics(task, graded)}])
    summary = summary.reindex(columns=list(SCHEMAS["grade_summary"]))
    write_table(run_dir.path / "summary.parquet", summary, "grade_summary")
    return summary


def print_summary(summary: pd.DataFrame, run_dir: RunDir) -> None:
    """Percentages of the metrics this task has, and the counts."""
    row = summary.iloc[0]
    shown = {"task": row.task, "dataset": Path(str(row.dataset)).name}
    names = {"accuracy": "accuracy %", "name_match": "name match %", "full_match": "full match %"}
    if row.k > 1:
        names |= {"pass_at_k": f"pass@{int(row.k)} %", "maj_at_k": f"maj@{int(row.k)} %"}
    shown |= {label: row[key] * 100 for key, label in names.items() if pd.notna(row[key])}
    shown |= {"problems": int(row.n_problems), "samples": int(row.n_samples)}
    print_table(pd.DataFrame([shown]), f"Grades, run {run_dir.run_id}")
