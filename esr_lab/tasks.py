"""Tasks: what a benchmark asks of a model and how its responses are graded.

One entry per task (math, humaneval, bfcl): how to load its problems, the instruction that
follows every problem in the user turn, how to grade a table of responses, and the task's own
metrics. `esr-lab grade` and `esr-lab eval` go through `load_task_problems`, `grade` and
`metrics`; the trainer's per-step evaluation can call the same three with a task name. Both
commands write their graded samples and summary with `write_graded` and show them with
`print_summary`.

Code and function calling have two protocols (PROTOCOLS): "chat", esr-lab's (a chat turn with
the task's instruction, graded soundly), and "paper", the released code's (PAPER.md, "The
paper's released code": HumanEval as raw completion, BFCL as a JSON array graded leniently,
greedy, 512 tokens). A protocol sets the problems' text, the prompt (`Prompting`) and which
grade is `correct`; both grades are kept where the responses allow reading them both ways.

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

from esr_lab import bfcl, bfcl_paper, humaneval
from esr_lab.console import print_table
from esr_lab.errors import UserError
from esr_lab.prompts import DEFAULT_INSTRUCTION
from esr_lab.records import SCHEMAS, RunDir, write_table

PROTOCOLS = ("chat", "paper")
PAPER_MAX_NEW_TOKENS = 512  # the released code's budget for code and function calling


@dataclass(frozen=True)
class Prompting:
    """How a protocol prompts: the instruction and where it goes (prompts.PLACEMENTS), and for
    the paper's protocol greedy decoding within a token budget (None: the run's own sampling)."""

    instruction: str
    placement: str | None = None  # None: the run's own placement
    greedy: bool = False
    max_new_tokens: int | None = None


def _load_math(dataset: str, limit: int | None, protocol: str = "chat") -> list:
    from esr_lab.data import load_problems

    return load_problems(dataset, limit=limit)


def _grade_math(samples: pd.DataFrame, problems: Sequence, protocol: str = "chat") -> pd.DataFrame:
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
    """A benchmark's loader, prompt instruction, grader and extra metrics; load and grade take
    the protocol, `prompting` says how each protocol prompts (math has one, "chat")."""

    default_dataset: str
    instruction: str
    load: Callable[[str, int | None, str], list]
    grade: Callable[..., pd.DataFrame]
    extra_metrics: Callable[[pd.DataFrame], dict[str, float]]
    prompting: dict[str, Prompting]


def _grade_humaneval(samples: pd.DataFrame, problems: Sequence, protocol: str) -> pd.DataFrame:
    return humaneval.grade_code(samples, problems, protocol=protocol)


_PAPER = {"greedy": True, "max_new_tokens": PAPER_MAX_NEW_TOKENS}
TASKS: dict[str, Task] = {
    "math": Task(
        "math500",
        DEFAULT_INSTRUCTION,
        _load_math,
        _grade_math,
        _math_metrics,
        {"chat": Prompting(DEFAULT_INSTRUCTION)},
    ),
    "humaneval": Task(
        "humaneval",
        humaneval.INSTRUCTION,
        humaneval.load_code_problems,
        _grade_humaneval,
        humaneval.code_metrics,
        {
            "chat": Prompting(humaneval.INSTRUCTION),
            "paper": Prompting("", "raw", **_PAPER),
        },
    ),
    "bfcl": Task(
        "bfcl",
        bfcl.INSTRUCTION,
        bfcl.load_call_problems,
        bfcl.grade_calls,
        bfcl.call_metrics,
        {
            "chat": Prompting(bfcl.INSTRUCTION),
            "paper": Prompting(bfcl_paper.SYSTEM_PROMPT, "system", **_PAPER),
        },
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


def prompting(task: str, protocol: str = "chat") -> Prompting:
    """How `protocol` prompts `task`; a protocol the task lacks is a one-line error."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; use {', '.join(PROTOCOLS)}")
    spec = get_task(task)
    if protocol not in spec.prompting:
        raise UserError(f"task {task} has no {protocol} protocol; use {', '.join(spec.prompting)}")
    return spec.prompting[protocol]


def load_task_problems(
    task: str, dataset: str | None = None, limit: int | None = None, protocol: str = "chat"
) -> list:
    """The task's problems from `dataset` (default: the task's benchmark), worded for
    `protocol`."""
    if limit is not None and limit < 1:
        raise UserError(f"limit={limit} is not valid; use a positive number of problems or none")
    prompting(task, protocol)
    spec = get_task(task)
    return spec.load(dataset or spec.default_dataset, limit, protocol)


def grade(task: str, samples: pd.DataFrame, problems: Sequence, protocol: str = "chat"):
    """The samples with the task's grading columns added, `correct` (under `protocol`) among
    them."""
    return get_task(task).grade(samples, problems, protocol)


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
    run_dir: RunDir,
    task: str,
    dataset: str,
    samples: pd.DataFrame,
    problems: list,
    protocol: str = "chat",
) -> pd.DataFrame:
    """Grade, write samples.parquet and summary.parquet (the columns their schemas declare);
    returns the one-row summary with every metric, both protocols' among them."""
    graded = grade(task, samples, problems, protocol)
    graded.insert(0, "run_id", run_dir.run_id)
    samples_schema = f"graded_{task}"
    written = graded.reindex(columns=list(SCHEMAS[samples_schema]))
    write_table(run_dir.path / "samples.parquet", written, samples_schema)
    row = {"run_id": run_dir.run_id, "task": task, "dataset": dataset, "protocol": protocol}
    summary = pd.DataFrame([{**row, **metrics(task, graded)}])
    written = summary.reindex(columns=list(SCHEMAS["grade_summary"]))
    write_table(run_dir.path / "summary.parquet", written, "grade_summary")
    return summary


def print_summary(summary: pd.DataFrame, run_dir: RunDir) -> None:
    """Percentages of the metrics this task has, and the counts."""
    row = summary.iloc[0]
    shown = {"task": row.task, "dataset": Path(str(row.dataset)).name}
    shown |= {"protocol": row.protocol} if "protocol" in row else {}
    names = {"accuracy": "accuracy %", "name_match": "name match %", "full_match": "full match %"}
    # Both protocols' grades of the same responses, where the task has two.
    names |= {f"accuracy_{p}": f"pass@1 {p} %" for p in PROTOCOLS}
    names |= {f"full_match_{p}": f"full match {p} %" for p in PROTOCOLS}
    names |= {"parse_rate_paper": "JSON parsed %"}
    if row.k > 1:
        names |= {"pass_at_k": f"pass@{int(row.k)} %", "maj_at_k": f"maj@{int(row.k)} %"}
    shown |= {
        label: row[key] * 100 for key, label in names.items() if key in row and pd.notna(row[key])
    }
    shown |= {"problems": int(row.n_problems), "samples": int(row.n_samples)}
    print_table(pd.DataFrame([shown]), f"Grades, run {run_dir.run_id}")
