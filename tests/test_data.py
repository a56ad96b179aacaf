"""Loading prompt sets: the shipped jsonl files, parquet, save_to_disk folders and the errors."""

import json
import time
from pathlib import Path

import datasets
import huggingface_hub.constants
import pandas as pd
import pytest

from esr_lab.data import DATASETS, Problem, load_problems, shipped_file
from esr_lab.errors import UserError

MATH500 = str(shipped_file("math500"))


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_math500_auto_and_explicit_columns_agree():
    auto = load_problems(MATH500)
    explicit = load_problems(MATH500, problem_column="problem", answer_column="answer")
    assert len(auto) == 500 and auto == explicit
    assert auto[0].id == "test/precalculus/807.json"
    assert auto[0].answer == r"\left( 3, \frac{\pi}{2} \right)"


def test_math500_solution_column_gives_boxed_answer():
    problems = load_problems(MATH500, limit=3, answer_column="solution")
    assert problems[0].answer == r"\left( 3, \frac{\pi}{2} \right)"


def test_shipped_files():
    aime = load_problems(str(shipped_file("aime24")))
    amc = load_problems(str(shipped_file("amc23")))
    gsm = load_problems(str(shipped_file("gsm8k")))
    assert (len(aime), len(amc), len(gsm)) == (30, 40, 1319)
    assert aime[0].answer == "204"
    assert amc[0].answer == "27" and amc[0].id == "0"  # stored as the float 27.0
    assert gsm[0].answer == "18" and gsm[0].problem.startswith("Janet")
    assert all("####" not in p.answer and "," not in p.answer for p in gsm)


def test_aliases_read_the_shipped_copies_without_the_hub(monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("an alias with a shipped copy went to the hub")

    monkeypatch.setattr("esr_lab.data.load_hub_rows", no_hub)
    assert load_problems("math500") == load_problems(MATH500)
    gsm = load_problems("gsm8k", limit=2)
    assert gsm[0].answer == "18" and gsm[0].id == "0"
    assert [len(load_problems(a)) for a in ("aime24", "amc23")] == [30, 40]
    with pytest.raises(UserError, match="no shipped copy of 'numinamath'"):
        shipped_file("numinamath")


def test_limit_keeps_the_first_rows():
    assert load_problems(MATH500, limit=5) == load_problems(MATH500)[:5]
    for bad in (0, -1):
        with pytest.raises(UserError, match="limit"):
            load_problems(MATH500, limit=bad)


def test_parquet_and_csv(tmp_path):
    df = pd.DataFrame({"question": ["1+1?", "2+2?"], "final_answer": ["2", "4"]})
    df.to_parquet(tmp_path / "p.parquet")
    df.to_csv(tmp_path / "p.csv", index=False)
    want = [Problem("0", "1+1?", "2"), Problem("1", "2+2?", "4")]
    assert load_problems(str(tmp_path / "p.parquet")) == want
    assert load_problems(str(tmp_path / "p.csv")) == want


def test_save_to_disk_dataset_and_dict(tmp_path):
    """A save_to_disk folder stands in for a hub dataset, which this machine can't reach."""
    rows = {"problem": ["a", "b", "c"], "answer": [1, 2, 3], "id": ["x", "y", "z"]}
    ds = datasets.Dataset.from_dict(rows)
    ds.save_to_disk(str(tmp_path / "single"))
    assert load_problems(str(tmp_path / "single"), limit=2) == [
        Problem("x", "a", "1"),
        Problem("y", "b", "2"),
    ]
    dd = datasets.DatasetDict({"train": ds.select([0]), "test": ds.select([1, 2])})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert [p.id for p in load_problems(str(tmp_path / "dict"))] == ["y", "z"]
    assert [p.id for p in load_problems(str(tmp_path / "dict"), split="train")] == ["x"]
    with pytest.raises(UserError, match="no split 'validation'"):
        load_problems(str(tmp_path / "dict"), split="validation")


def test_missing_column(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", [{"problem": "p", "answer": "1"}])
    with pytest.raises(UserError, match=r"has no column 'foo'; columns: problem, answer"):
        load_problems(path, answer_column="foo")
    no_answer = _write_jsonl(tmp_path / "y.jsonl", [{"problem": "p", "notes": "n"}])
    with pytest.raises(UserError, match="rename the columns to problem/answer"):
        load_problems(no_answer)


def test_empty_file_and_rows_without_answers(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="empty"):
        load_problems(str(empty))
    unboxed = _write_jsonl(tmp_path / "s.jsonl", [{"problem": "p", "solution": "no box"}])
    with pytest.raises(UserError, match="no problems"):
        load_problems(unboxed)


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_problems(str(tmp_path / "nope.jsonl"))


def test_bogus_hub_id_offline(monkeypatch):
    # the libraries read HF_HUB_OFFLINE at import time, so patch their copies too
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(UserError, match="cannot load dataset 'no-such-owner/no-such-set'"):
        load_problems("no-such-owner/no-such-set")
    assert time.monotonic() - start < 10


def test_aliases_declared():
    math = {"math500", "aime24", "amc23", "gsm8k", "numinamath"}
    assert set(DATASETS) == math | {"codeultrafeedback", "glaive-fc"}
    assert DATASETS["gsm8k"].config == "main" and DATASETS["gsm8k"].extract == "####"


def test_toy_alias():
    problems = load_problems("micro", limit=3)
    assert len(problems) == 3 and all(p.answer.lstrip("-").isdigit() for p in problems)
    assert problems == load_problems("micro", limit=3)
