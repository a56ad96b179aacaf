"""A student and a teacher with different tokenizers and chat templates (a tiny Llama and a
tiny Qwen3 whose vocabularies hold the same strings under other ids) train and decay."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from tests.helpers import run_cli

PROBLEMS = [{"problem": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(1, 2), (3, 4)]]


@pytest.fixture
def problems_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return str(path)


@pytest.mark.parametrize(
    ("loss", "recipe"),
    [("reverse_kl", "esr-lab"), ("uld", "esr-lab"), ("reverse_kl", "paper-code")],
)
def test_train_across_tokenizers(monkeypatch, capsys, tmp_path, llama_model_dir,
                                 bpe_model_dir, problems_file, loss, recipe):  # fmt: skip
    """paper-code: clamps, neighbour alignment and the marker in the student's context."""
    code, _, err = run_cli(
        monkeypatch, capsys, tmp_path, "train", "--student", str(llama_model_dir),
        "--teacher", str(bpe_model_dir), "--train-dataset", problems_file, "--eval-dataset",
        problems_file, "--steps", "2", "--batch", "2", "--micro-batch", "1", "--eval-every",
        "2", "--eval-samples", "1", "--max-new-tokens", "12", "--n", "6", "--loss", loss,
        "--teacher-prompt", "student", "--run-id", "x", "--quiet", "--recipe", recipe,
    )  # fmt: skip
    assert code == 0, err
    steps = pd.read_parquet(tmp_path / "results" / "train" / "x" / "steps.parquet")
    assert all(math.isfinite(v) and v > 0 for v in steps.loss)
    assert all(math.isfinite(v) for v in steps.grad_norm)


def test_decay_across_tokenizers(monkeypatch, capsys, tmp_path, llama_model_dir, bpe_model_dir,
                                 problems_file):  # fmt: skip
    code, out, err = run_cli(
        monkeypatch, capsys, tmp_path, "decay", "--student", str(llama_model_dir), "--teacher",
        str(bpe_model_dir), "--dataset", problems_file, "--samples", "1", "--prefix-lengths",
        "0,4", "--max-new-tokens", "12", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "Teacher decay" in out


def test_same_tokenizer_pair_refuses_uld(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(
        monkeypatch, capsys, tmp_path, "train", "--student", "micro-student", "--teacher",
        "micro-teacher", "--loss", "uld", "--quiet",
    )  # fmt: skip
    assert code == 2 and "--loss uld is for pairs with different tokenizers" in err
