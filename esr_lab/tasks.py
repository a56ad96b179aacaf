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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from esr_lab import bfcl, bfcl_paper, grading, humaneval
from esr_lab.console import print_table
from esr_lab.errors import UserError
from esr_lab.metrics import majority_correct, mean_pass_at_k
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


def _grade_math(
    samples: pd.DataFrame,
    problems: Sequence,
    protocol: str = "chat",
    extraction: str = "last_boxed",
) -> pd.DataFrame:
    """Correctness under the chosen and the other extractions, the extracted answer (for
    maj@k), and the collapse markers."""
    gold = {p.id: p.answer for p in problems}
    out = samples.copy()
    texts, answers = out.completion.tolist(), out.problem_id.map(gold).tolist()
    out["correct"] = [
        grading.grade_math(t, a, extraction) for t, a in zip(texts, answers, strict=True)
    ]
    out["correct_relaxed"] = [
        grading.grade_math(t, a, "relaxed") for t, a in zip(texts, answers, strict=True)
    ]
    out["correct_first_boxed"] = [
        grading.grade_math(t, a, "first_boxed") for t, a in zip(texts, answers, strict=True)
    ]
    which = "first" if extraction == "first_boxed" else "last"
    out["answer"] = [grading.extract_boxed(t, which) for t in texts]
    return with_collapse_markers(out)


def with_collapse_markers(graded: pd.DataFrame) -> pd.DataFrame:
    """Finding 9's per-response markers, whatever the task: boxes, repetition, length."""
    texts = graded.completion.tolist()
    graded["n_boxed"] = [grading.count_boxed(t) for t in texts]
    graded["repetitive"] = [grading.is_repetitive(t) for t in texts]
    graded["chars"] = [len(t) for t in texts]
    return graded


def _math_metrics(graded: pd.DataFrame) -> dict[str, float]:
    by_problem = graded.groupby("problem_id", sort=False)
    return {
        "maj_at_k": float(by_problem.apply(majority_correct, include_groups=False).mean()),
        "relaxed_avg_at_k": float(by_problem.correct_relaxed.mean().mean()),
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


def grade_samples(
    task: str,
    samples: pd.DataFrame,
    problems: Sequence,
    protocol: str = "chat",
    extraction: str = "last_boxed",
) -> pd.DataFrame:
    """The one way sampled answers are graded (training evaluations, `eval`): math under every
    extraction; a code or function-calling task by its grader's `correct`, which every
    extraction column holds (there is one way to read a program or a call), no answer to vote
    on; and, for every task, the collapse markers (boxes are counted as they stand)."""
    if task == "math":
        return _grade_math(samples, problems, protocol, extraction)
    graded = grade(task, samples[["problem_id", "sample", "completion"]], problems, protocol)
    out = samples.copy()
    for column in ("correct", "correct_relaxed", "correct_first_boxed"):
        out[column] = graded.correct.to_numpy(dtype=bool)
    out["answer"] = None
    return with_collapse_markers(out)


def metrics(task: str, graded: pd.DataFrame) -> dict[str, float]:
    """avg@k (mean over problems of the share correct; pass@1 where k is 1), pass@k for k = the
    fewest samples any problem has, counts, and the task's own metrics."""
    counts = graded.groupby("problem_id", sort=False).correct.size()
    return {
        "avg_at_k": mean_pass_at_k(graded, 1),
        "k": float(counts.min()),
        "pass_at_k": mean_pass_at_k(graded),
        "n_problems": float(len(counts)),
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
    k = int(row.k)
    names = {"avg_at_k": f"avg@{k} %", "name_match": "name match %", "full_match": "full match %"}
    # Both protocols' grades of the same responses, where the task has two.
    names |= {f"avg_at_k_{p}": f"avg@{k} {p} %" for p in PROTOCOLS}
    names |= {f"full_match_{p}": f"full match {p} %" for p in PROTOCOLS}
    names |= {"parse_rate_paper": "JSON parsed %"}
    if k > 1:
        names |= {"pass_at_k": f"pass@{k} %", "maj_at_k": f"maj@{k} %"}
    shown |= {
        label: row[key] * 100 for key, label in names.items() if key in row and pd.notna(row[key])
    }
    shown |= {"problems": int(row.n_problems), "samples": int(row.n_samples)}
    print_table(pd.DataFrame([shown]), f"Grades, run {run_dir.run_id}")
