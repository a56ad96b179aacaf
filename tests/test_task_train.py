"""Training evaluates with the task's grader: code through the sandbox, calls through BFCL's."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from tests.helpers import MICRO, run_cli


@pytest.mark.parametrize("dataset", ["humaneval", "bfcl"])
def test_train_evaluates_with_the_tasks_grader(monkeypatch, capsys, tmp_path, dataset):
    code, _, err = run_cli(
        monkeypatch, capsys, tmp_path, "train", *MICRO, "--eval-dataset", dataset,
        "--eval-limit", "2", "--eval-samples", "1", "--steps", "1", "--eval-every", "1",
        "--max-new-tokens", "16", "--run-id", dataset,
    )  # fmt: skip
    assert code == 0, err
    run = tmp_path / "results" / "train" / dataset
    assert json.loads((run / "config.json").read_text())["task"] == dataset
    evals = pd.read_parquet(run / "evals.parquet")
    assert evals.avg_at_k.between(0, 1).all() and evals.maj_at_k.map(math.isnan).all()
    samples = pd.read_parquet(run / "eval_samples.parquet")
    assert len(samples) == 4 and samples.problem_id.nunique() == 2  # 2 problems x 2 evals


def test_unknown_task_is_one_line(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, "train", *MICRO, "--task", "poetry")
    assert code == 2 and "unknown task 'poetry'" in err and err.count("\n") == 1
