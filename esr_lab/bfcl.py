"""Function calling: the paper's 600 BFCL problems (categories simple and multiple).

The model sees the question and the functions' JSON schemas and answers in BFCL's Python-call
syntax, `[name(arg=value, ...)]`. Responses are parsed with `ast` (never evaluated) and checked as
BFCL's AST checker does, rewritten here because the `bfcl-eval` package pins old numpy and pulls
in API clients: a call must name the expected function, give every required argument, no
argument the schema or the answer key lacks, each value among the allowed ones ("" allowed
means the argument may be left out). Values must have the schema's type, except that an int
passes for a float; strings compare after BFCL's standardisation (lower case, no spaces or
`,./-_*^`); lists and dicts compare item by item. Full match is the paper's number; name match
only asks for the right function names. This is the "chat" protocol, esr-lab's; the paper's
JSON prompt and lenient grader (the "paper" protocol) are in esr_lab.bfcl_paper, and every
response is graded both ways.

The 600 rows ship as package data (from the bfcl-eval 2026.3.23 wheel, Apache-2.0); a folder
with the same files (e.g. from the hub dataset gorilla-llm/Berkeley-Function-Calling-Leaderboard)
works as well.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from esr_lab import bfcl_paper
from esr_lab.errors import UserError

CATEGORY_RE = re.compile(r"BFCL_v\d+_(simple(_python)?|multiple)\.json")
INSTRUCTION = (
    "Answer with only the function call in Python syntax, for example "
    "[func_name(arg1=value1, arg2=value2)], and nothing else."
)
# BFCL's Python types per schema type; "any" values are treated as strings, as BFCL does.
_TYPES = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}
_STANDARDISE_RE = re.compile(r"[ ,./\-_*^]")


@dataclass(frozen=True)
class CallProblem:
    """One BFCL question; `answer` is the ground truth: [{name: {arg: [allowed values]}}]."""

    id: str
    problem: str
    functions: list[dict]
    answer: list[dict]


@dataclass(frozen=True)
class Call:
    name: str
    args: dict[str, Any]


def _read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _folder(dataset: str) -> Path:
    """The shipped copy for "bfcl", else a folder with the same layout."""
    if dataset == "bfcl":
        return Path(str(resources.files("esr_lab") / "data_files" / "bfcl"))
    folder = Path(dataset).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"no BFCL folder {dataset!r}; use bfcl (the shipped copy) or a folder holding "
            "BFCL_v*_simple_python.json, BFCL_v*_multiple.json and possible_answer/"
        )
    return folder


def render_problem(question: str, functions: list[dict]) -> str:
    """The user turn: the question, then the callable functions as JSON schemas."""
    schemas = "\n".join(json.dumps(f, ensure_ascii=False) for f in functions)
    return f"{question}\n\nYou can call these functions (JSON schemas):\n{schemas}"


def load_call_problems(
    dataset: str = "bfcl", limit: int | None = None, protocol: str = "chat"
) -> list[CallProblem]:
    """BFCL simple + multiple in file order (simple first), with their possible answers; the
    user turn as each protocol writes it."""
    folder = _folder(dataset)
    names = [p for p in folder.iterdir() if CATEGORY_RE.fullmatch(p.name)]
    files = sorted(names, key=lambda p: ("multiple" in p.name, p.name))
    if not files or not all((folder / "possible_answer" / p.name).is_file() for p in files):
        raise UserError(
            f"{folder} lacks BFCL_v*_simple_python.json / BFCL_v*_multiple.json with matching "
            "files in possible_answer/"
        )
    problems = []
    for path in files:
        answers = {
            r["id"]: r["ground_truth"] for r in _read_lines(folder / "possible_answer" / path.name)
        }
        for row in _read_lines(path):
            question = row["question"][0][-1]["content"]
            render = bfcl_paper.render_problem if protocol == "paper" else render_problem
            problem = render(question, row["function"])
            problems.append(CallProblem(row["id"], problem, row["function"], answers[row["id"]]))
    return problems[:limit]


def _call_name(node: ast.expr) -> str:
    """`a.b.c` from a Name/Attribute chain."""
    if isinstance(node, ast.Attribute):
        return f"{_call_name(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    raise ValueError("not a function name")


def _value(node: ast.expr) -> Any:
    """A literal argument value (tuples become lists); other expressions as their source text."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError):
        return ast.unparse(node)
    return _untuple(value)


def _untuple(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_untuple(v) for v in value]
    if isinstance(value, dict):
        return {k: _untuple(v) for k, v in value.items()}
    return value


def _strip_fences(text: str) -> str:
    """The inside of the last fenced block when there is one."""
    blocks = re.findall(r"```[\w]*\n?(.*?)```", text, re.DOTALL)
    return (blocks[-1] if blocks else text).strip()


def parse_calls(response: str) -> list[Call]:
    """Calls from `[f(a=1), g.h(b="x")]` (brackets optional); ValueError when not that syntax.

    When the whole text does not parse, the span from its first "[" to its last "]" is tried,
    so a sentence around the list does not hide it.
    """
    text = _strip_fences(response)
    candidates = [text if text.startswith("[") else f"[{text}]"]
    if "[" in text and "]" in text:
        candidates.append(text[text.index("[") : text.rindex("]") + 1])
    for candidate in candidates:
        try:
            tree = ast.parse(candidate, mode="eval").body
        except SyntaxError:
            continue
        if isinstance(tree, ast.List) and all(isinstance(e, ast.Call) for e in tree.elts):
            return [_to_call(e) for e in tree.elts]
    raise ValueError("not a list of function calls")


def _to_call(node: ast.Call) -> Call:
    if node.args:
        raise ValueError("positional arguments")
    return Call(_call_name(node.func), {kw.arg: _value(kw.value) for kw in node.keywords})


def standardise(text: str) -> str:
    """BFCL's string normal form: no spaces or `,./-_*^`, lower case, ' as "."""
    return _STANDARDISE_RE.sub("", text).lower().replace("'", '"')


def _norm(value: Any) -> Any:
    return standardise(value) if isinstance(value, str) else value


def _has_type(value: Any, schema: dict) -> bool:
    """Exact Python type of the schema (bool is not an int), items of arrays checked too."""
    expected = _TYPES.get(schema.get("type"), str)
    if type(value) is not expected:
        return False
    items = schema.get("items")
    if expected is list and items and _TYPES.get(items.get("type")) is not dict:
        return all(_has_type(_widen(v, items), items) for v in value)
    return True


def _widen(value: Any, schema: dict) -> Any:
    """An int where a float is expected counts as that float (Python would convert it)."""
    return float(value) if schema.get("type") == "float" and type(value) is int else value


def _dict_matches(value: dict, allowed: dict) -> bool:
    """Every key allowed with an allowed value, every key without "" among its values present."""
    if any(
        k not in allowed or _norm(v) not in [_norm(a) for a in allowed[k]] for k, v in value.items()
    ):
        return False
    return all(k in value or "" in options for k, options in allowed.items())


def _value_matches(value: Any, allowed: list, schema: dict) -> bool:
    """One argument against its allowed values, as BFCL compares that type."""
    kind = schema.get("type")
    if kind == "dict":
        return any(isinstance(a, dict) and _dict_matches(value, a) for a in allowed)
    if kind in ("array", "tuple") and value and all(isinstance(v, dict) for v in value):
        return any(
            isinstance(a, list)
            and len(a) == len(value)
            and all(_dict_matches(v, d) for v, d in zip(value, a, strict=True))
            for a in allowed
        )
    if isinstance(value, list):
        return [_norm(v) for v in value] in [
            [_norm(v) for v in a] for a in allowed if isinstance(a, list)
        ]
    return _norm(value) in [_norm(a) for a in allowed]


def check_call(call: Call, function: dict, expected: dict[str, list]) -> str:
    """ "" when the call fully matches one expected call, else the first reason it does not."""
    properties = function["parameters"]["properties"]
    for name in function["parameters"].get("required", []):
        if name not in call.args:
            return f"missing required argument {name}"
    for name, value in call.args.items():
        if name not in properties or name not in expected:
            return f"unexpected argument {name}"
        value = _widen(value, properties[name])
        if not _has_type(value, properties[name]):
            return f"wrong type for {name}"
        if not _value_matches(value, expected[name], properties[name]):
            return f"wrong value for {name}"
    for name, allowed in expected.items():
        if name not in call.args and "" not in allowed:
            return f"missing argument {name}"
    return ""


def grade_response(response: str, problem: CallProblem) -> tuple[bool, bool, str]:
    """(name match, full match, reason) of one response; full match needs the single expected
    call (BFCL simple and multiple both expect exactly one)."""
    try:
        calls = parse_calls(response)
    except ValueError as e:
        return False, False, f"unparsable: {e}"
    expected_names = [next(iter(gt)) for gt in problem.answer]
    names_ok = [c.name for c in calls] == expected_names
    if not names_ok:
        return False, False, f"called {[c.name for c in calls]}, expected {expected_names}"
    name = expected_names[0]
    function = next(f for f in problem.functions if f["name"] == name)
    reason = check_call(calls[0], function, problem.answer[0][name])
    return True, not reason, reason or "full match"


def grade_calls(
    samples: pd.DataFrame, problems: Sequence[CallProblem], protocol: str = "chat"
) -> pd.DataFrame:
    """Add `name_match`, `correct` (full match) and `status` under `protocol`'s grader (chat:
    the AST checker, paper: the lenient one), and both graders' `name_match_<p>`,
    `correct_<p>` and the paper's `parsed_paper`, so that either protocol's numbers can be read."""
    by_id = {p.id: p for p in problems}
    pairs = list(zip(samples.problem_id, samples.completion, strict=True))
    results = {
        "chat": [grade_response(text, by_id[pid]) for pid, text in pairs],
        "paper": [bfcl_paper.grade_response(text, by_id[pid].answer) for pid, text in pairs],
    }
    out = samples.copy()
    out["name_match"] = [r[0] for r in results[protocol]]
    out["correct"] = [r[1] for r in results[protocol]]
    out["status"] = [r[2] for r in results[protocol]]
    for way, graded in results.items():
        out[f"name_match_{way}"] = [r[0] for r in graded]
        out[f"correct_{way}"] = [r[1] for r in graded]
    out["parsed_paper"] = [not r[2].startswith("unparsable") for r in results["paper"]]
    return out


def call_metrics(graded: pd.DataFrame) -> dict[str, float]:
    """Full match (BFCL accuracy, also `avg_at_k`) and name match under the chosen protocol,
    per problem, and both protocols' full and name match and the paper grader's parse rate."""
    by_problem = graded.groupby("problem_id", sort=False)
    columns = {"full_match": "correct", "name_match": "name_match"}
    for way in ("chat", "paper"):
        columns |= {f"full_match_{way}": f"correct_{way}", f"name_match_{way}": f"name_match_{way}"}
    columns["parse_rate_paper"] = "parsed_paper"
    return {
        name: float(by_problem[column].mean().mean())
        for name, column in columns.items()
        if column in graded
    }
