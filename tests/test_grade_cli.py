"""`esr-lab grade` on each task, `esr-lab eval --task` on the micro world, and bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from esr_lab.bfcl import load_call_problems
from esr_lab.data import shipped_file
from esr_lab.humaneval import load_code_problems
from esr_lab.records import SCHEMAS
from esr_lab.tasks import TASKS
from tests.helpers import run_cli

MATH500 = str(shipped_file("math500"))


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _tables(tmp_path: Path, command: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    (run,) = (tmp_path / "results" / command).iterdir()
    return pd.read_parquet(run / "samples.parquet"), pd.read_parquet(run / "summary.parquet")


def test_grade_humaneval_with_samples(monkeypatch, capsys, tmp_path):
    problems = load_code_problems("humaneval", limit=3)
    rows = [{"task_id": p.id, "response": p.answer} for p in problems]
    rows += [{"task_id": p.id, "response": "    return None\n"} for p in problems[:2]]
    rows += [{"task_id": problems[2].id, "response": problems[2].answer}]
    path = _jsonl(tmp_path / "r.jsonl", rows)
    code, out, err = run_cli(
        monkeypatch, capsys, tmp_path, "grade", "--task", "humaneval", "--responses", path
    )
    assert code == 0, err
    samples, summary = _tables(tmp_path, "grade")
    assert tuple(samples.columns) == SCHEMAS["graded_humaneval"]
    assert tuple(summary.columns) == SCHEMAS["grade_summary"]
    row = summary.iloc[0]
    assert samples.correct.sum() == 4 and row.k == 2 and row.pass_at_k == 1.0
    assert row.avg_at_k == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert "avg@2 %" in out and "pass@2 %" in out and "66.67" in out


def test_grade_all_canonical_solutions(monkeypatch, capsys, tmp_path):
    """All 164 HumanEval canonical solutions, through the command, in parallel subprocesses."""
    problems = load_code_problems("humaneval")
    path = _jsonl(tmp_path / "r.jsonl", [{"task_id": p.id, "response": p.answer} for p in problems])
    start = time.monotonic()
    code, _, err = run_cli(
        monkeypatch, capsys, tmp_path, "grade", "--task", "humaneval", "--responses", path
    )
    assert code == 0, err
    samples, summary = _tables(tmp_path, "grade")
    assert len(samples) == 164 and summary.iloc[0].avg_at_k >= 0.99
    assert time.monotonic() - start < 60


def test_grade_bfcl(monkeypatch, capsys, tmp_path):
    problems = load_call_problems(limit=2)
    rows = [
        {"id": problems[0].id, "response": "[calculate_triangle_area(base=10, height=5)]"},
        {"id": problems[1].id, "response": "[math.factorial(number=6)]"},
    ]
    path = _jsonl(tmp_path / "r.jsonl", rows)
    code, out, err = run_cli(
        monkeypatch, capsys, tmp_path, "grade", "--task", "bfcl", "--responses", path
    )
    assert code == 0, err
    samples, summary = _tables(tmp_path, "grade")
    assert samples.name_match.tolist() == [True, True] and samples.correct.tolist() == [True, False]
    assert summary.iloc[0].full_match == 0.5 and summary.iloc[0].name_match == 1.0
    assert "full match %" in out


def test_grade_math_on_a_local_dataset(monkeypatch, capsys, tmp_path):
    rows = [
        {"problem_id": "test/precalculus/807.json", "response": r"\boxed{(3, \frac{\pi}{2})}"},
        {"problem_id": "test/precalculus/807.json", "response": r"\boxed{7}"},
    ]
    path = _jsonl(tmp_path / "r.jsonl", rows)
    args = ("grade", "--responses", path, "--dataset", MATH500)
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, *args)
    assert code == 0, err
    samples, summary = _tables(tmp_path, "grade")
    assert tuple(samples.columns) == SCHEMAS["graded_math"]
    assert summary.iloc[0].avg_at_k == 0.5 and summary.iloc[0].pass_at_k == 1.0


@pytest.mark.parametrize(
    ("task", "rows", "message"),
    [
        ("humaneval", None, "no responses file"),
        ("chess", [{"id": "HumanEval/0", "response": ""}], "unknown task 'chess'"),
        ("humaneval", [{"id": "HumanEval/999", "response": ""}], "'HumanEval/999'"),
        ("humaneval", [{"name": "HumanEval/0", "response": ""}], "no column problem_id or"),
        ("humaneval", [{"id": "HumanEval/0", "text": ""}], "no column response or completion"),
    ],
)
def test_grade_bad_input(monkeypatch, capsys, tmp_path, task, rows, message):
    path = _jsonl(tmp_path / "r.jsonl", rows) if rows else str(tmp_path / "missing.jsonl")
    code, _, err = run_cli(
        monkeypatch, capsys, tmp_path, "grade", "--task", task, "--responses", path
    )
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("args", "task"),
    [(["--task", "humaneval"], "humaneval"), (["--dataset", "bfcl"], "bfcl")],
)
def test_eval_task_on_the_micro_world(monkeypatch, capsys, tmp_path, args, task):
    micro = ["--model", "micro-student", "--limit", "2", "--samples", "1"]
    code, out, err = run_cli(
        monkeypatch, capsys, tmp_path, "eval", *micro, "--max-new-tokens", "16", "--quiet", *args
    )
    assert code == 0, err
    samples, summary = _tables(tmp_path, "eval")
    assert tuple(samples.columns) == SCHEMAS[f"graded_{task}"] and len(samples) == 2
    assert summary.iloc[0].task == task and 0 <= summary.iloc[0].avg_at_k <= 1
    assert "avg@1 %" in out
    (config,) = (tmp_path / "results" / "eval").glob("*/config.json")
    assert json.loads(config.read_text())["pair"]["instruction"] == TASKS[task].instruction


def test_eval_unknown_task(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(
        monkeypatch, capsys, tmp_path, "eval", "--model", "micro-student", "--task", "poetry"
    )
    assert code == 2 and "unknown task 'poetry'" in err
