"""Every subcommand end to end on the micro world, and one-line errors for bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.helpers import MICRO, run_cli


def test_decay_command(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        "decay",
        *MICRO,
        "--limit",
        "3",
        "--samples",
        "2",
        "--prefix-lengths",
        "0,10",
        "--max-new-tokens",
        "64",
    )
    assert code == 0 and "Teacher decay" in out
    assert (tmp_path / "figures" / "decay.png").is_file()


def test_train_then_eval_the_adapter(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        "train",
        *MICRO,
        "--n",
        "8",
        "--max-new-tokens",
        "48",
        "--run-id",
        "t1",
    )
    assert code == 0 and "esr-8" in out
    run = tmp_path / "results" / "train" / "t1"
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 4 and config["lr"] == 1e-3  # the micro preset
    assert (run / "curve.png").is_file()
    adapter = run / "checkpoints" / "step-000004" / "model"
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        "eval",
        "--model",
        "micro-student",
        "--adapter",
        str(adapter),
        "--limit",
        "3",
        "--samples",
        "2",
        "--max-new-tokens",
        "48",
        "--quiet",
    )
    assert code == 0 and "avg@k %" in out
    summary = pd.read_parquet(next((tmp_path / "results" / "eval").glob("*/summary.parquet")))
    assert summary.iloc[0].label == "micro-student+model"


def test_sweep_n_command(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(
        monkeypatch, capsys, tmp_path, "sweep-n", *MICRO, "--max-new-tokens", "32", "--steps", "2"
    )
    assert code == 0
    for label in ("esr-4", "esr-16", "full", "progressive-4-16"):
        assert label in out
    assert (tmp_path / "figures" / "sweep_n.png").is_file()


def test_select_command(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        "select",
        *MICRO,
        "--max-new-tokens",
        "32",
        "--steps",
        "2",
        "--selectors",
        "top_rkl,random",
    )
    assert code == 0
    for label in ("esr-8", "full", "top_rkl-8", "random-8", "top_student_entropy-16"):
        assert label in out
    assert "RKL tokens hold" in out
    assert (tmp_path / "figures" / "select.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "decay",
                "--student",
                "no-org/no-model",
                "--teacher",
                "micro-teacher",
                "--dataset",
                "micro",
            ],
            "cannot load model 'no-org/no-model'",
        ),
        (
            ["decay", "--student", "micro-student", "--teacher", "./missing-folder"],
            "no model folder './missing-folder'",
        ),
        (["decay", *MICRO, "--dataset", "nowhere.jsonl"], "nowhere.jsonl"),
        (["decay", *MICRO, "--prefix-lengths", "0,-5"], "--prefix-lengths must be non-negative"),
        (["decay", *MICRO, "--prefix-lengths", "a,b"], "comma-separated integers"),
        (["decay", *MICRO, "--samples", "two"], "'--samples'"),
        (["train", *MICRO, "--n", "0"], "--n must be at least 1"),
        (["train", *MICRO, "--loss", "l3"], "unknown loss 'l3'"),
        (["train", *MICRO, "--selector", "top_rkl", "--budget", "999"], "--budget 999"),
        (["sweep-n", *MICRO, "--ns", "0,5"], "--ns must be integers >= 1"),
        (["eval", "--model", "micro-student", "--adapter", "/nonexistent"], "no LoRA adapter"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    monkeypatch, capsys, tmp_path, args, message
):
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, *args)
    assert code == 2
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "results").exists()


def test_missing_column_is_named(monkeypatch, capsys, tmp_path):
    data = tmp_path / "qs.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "solution": "two"}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, "decay", *MICRO, "--dataset", str(data))
    assert code == 2 and "answer" in err and err.count("\n") == 1, err


def test_empty_dataset(monkeypatch, capsys, tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    code, _, err = run_cli(
        monkeypatch, capsys, tmp_path, "train", *MICRO, "--eval-dataset", str(data)
    )
    assert code == 2 and "empty" in err, err


def test_reproduce_runs_the_named_steps_and_resumes(monkeypatch, capsys, tmp_path):
    export = tmp_path / "committed"
    args = (
        "reproduce",
        "--preset",
        "micro",
        "--only",
        "profile",
        "--quiet",
        "--export",
        str(export),
    )
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, *args)
    assert code == 0, err
    assert "Reproduction finished" in out and (tmp_path / "figures" / "profile.png").is_file()
    assert (tmp_path / "results" / "profile" / "reproduce-micro" / "summary.parquet").is_file()
    exported = sorted(p.name for p in (export / "profile" / "reproduce-micro").iterdir())
    assert exported == ["config.json", "steps.parquet", "summary.parquet"]
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, *args)  # same run id: resumes
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reproduce", "--preset", "paper-qwen"], "needs --student and --teacher"),
        (["reproduce", "--preset", "nope"], "unknown preset 'nope'"),
        (["reproduce", "--preset", "micro", "--only", "decay,fly"], "unknown steps ['fly']"),
    ],
)
def test_reproduce_bad_input(monkeypatch, capsys, tmp_path, args, message):
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, *args)
    assert code == 2 and message in err, err
    assert not (tmp_path / "results").exists()
