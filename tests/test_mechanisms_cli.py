"""positions, suggest-n, tokens, cascade and submode end to end on the micro world, and their
one-line errors for bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.helpers import MICRO, run_cli

FAST = [*MICRO, "--max-new-tokens", "24"]


def only_run(tmp_path, experiment: str):
    """The one run folder an experiment wrote, after checking its config records seed/commit."""
    (run,) = (tmp_path / "results" / experiment).iterdir()
    config = json.loads((run / "config.json").read_text())
    assert config["git_commit"] and "seed" in json.dumps(config)
    return run


def test_positions_command(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(monkeypatch, capsys, tmp_path, "positions", *FAST, "--bin-width", "5")
    assert code == 0 and "Per-position profile" in out
    bins = pd.read_parquet(only_run(tmp_path, "positions") / "bins.parquet")
    assert bins.bin_start.tolist()[:3] == [0, 5, 10] and bins.tokens.iloc[0] == 8 * 5  # 8 rollouts
    assert (bins.reverse_kl >= 0).all() and (bins.student_entropy > 0).all()
    assert (tmp_path / "figures" / "positions.png").is_file()


def test_suggest_n_command(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(monkeypatch, capsys, tmp_path, "suggest-n", *FAST, "--threshold", "0.5")
    assert code == 0 and "<- suggested" in out
    run = only_run(tmp_path, "suggest_n")
    curve = pd.read_parquet(run / "curve.parquet")
    n = int(pd.read_parquet(run / "summary.parquet").n.iloc[0])
    assert f"suggested N = {n}:" in out
    assert curve.cumulative_share.iloc[n - 1] >= 0.5 > curve.cumulative_share.iloc[n - 2]
    assert (tmp_path / "figures" / "suggest_n.png").is_file()


def test_tokens_command_with_custom_categories(monkeypatch, capsys, tmp_path):
    categories = tmp_path / "cats.toml"
    categories.write_text('digits = "^\\\\d+$"\nspace = "^$"\n')
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        "tokens",
        *FAST,
        "--categories",
        str(categories),
        "--edges",
        "0,10",
        "--top",
        "5",
    )
    assert code == 0 and "Top-5 highest-KL tokens" in out
    run = only_run(tmp_path, "tokens")
    cells = pd.read_parquet(run / "categories.parquet")
    assert set(cells.category) <= {"digits", "space", "other"}
    assert set(cells.position_bin) <= {"0-9", "10+"}
    assert len(pd.read_parquet(run / "top_tokens.parquet")) <= 5
    assert (tmp_path / "figures" / "tokens.png").is_file()


def trained_runs(tmp_path) -> list[str]:
    """Labels of the content-addressed training runs under results/runs."""
    folders = (tmp_path / "results" / "runs").glob("[!.]*")
    return sorted(p.name.rsplit("-", 1)[0] for p in folders)


def test_cascade_trains_esr_then_submode_reuses_it(monkeypatch, capsys, tmp_path):
    train = ["--n", "8", "--steps", "2"]
    code, out, _ = run_cli(monkeypatch, capsys, tmp_path, "cascade", *FAST, *train)
    assert code == 0 and "untrained 8+" in out and "gap closed %" in out
    summary = pd.read_parquet(only_run(tmp_path, "cascade") / "summary.parquet")
    assert summary.region.tolist() == ["trained", "untrained"] and (summary.window == 8).all()
    assert trained_runs(tmp_path) == ["esr-8"]
    code, out, _ = run_cli(monkeypatch, capsys, tmp_path, "submode", *FAST, *train)
    assert code == 0 and "Response length" in out
    assert trained_runs(tmp_path) == ["esr-8", "full"]  # ESR reused, only full OPD trained
    table = pd.read_parquet(only_run(tmp_path, "submode") / "summary.parquet")
    assert table.model.tolist() == ["base", "teacher", "full", "esr"]
    students = table[table.model != "teacher"]
    shares = students[["teacher_top1_pct", "teacher_top2_5_pct", "outside_top5_pct"]].sum(axis=1)
    assert shares.tolist() == pytest.approx([100.0] * 3)
    assert table.top1_prob.isna().tolist() == [False, True, False, False]
    for name in ("cascade.png", "submode.png"):
        assert (tmp_path / "figures" / name).is_file()


def test_given_checkpoints_are_used_without_training(monkeypatch, capsys, tmp_path):
    code, _, _ = run_cli(
        monkeypatch, capsys, tmp_path, "train", *FAST, "--n", "8", "--steps", "2", "--run-id", "t"
    )
    assert code == 0
    adapter = tmp_path / "results" / "train" / "t" / "checkpoints" / "step-000002" / "model"
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        "cascade",
        *FAST,
        "--n",
        "8",
        "--esr-checkpoint",
        str(adapter),
    )
    assert code == 0 and "ESR-8" in out
    assert not (tmp_path / "results" / "runs").exists()


def foreign_adapter(tmp_path) -> str:
    folder = tmp_path / "other"
    folder.mkdir()
    config = {"base_model_name_or_path": "/models/another-student", "peft_type": "LORA"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["positions", *MICRO, "--bin-width", "0"], "--bin-width must be at least 1 token, got 0"),
        (["cascade", *MICRO, "--bin-width", "-2"], "--bin-width must be at least 1"),
        (["cascade", *MICRO, "--esr-checkpoint", "FOREIGN"], "was trained on '/models/another"),
        (["submode", *MICRO, "--full-checkpoint", "FOREIGN"], "--full-checkpoint"),
        (["submode", *MICRO, "--esr-checkpoint", "/nonexistent"], "no LoRA adapter"),
        (["suggest-n", *MICRO, "--threshold", "1.5"], "--threshold must be in (0, 1]"),
        (["tokens", *MICRO, "--edges", "5,10"], "--edges must be increasing"),
        (["tokens", *MICRO, "--categories", "missing.toml"], "cannot read categories"),
        (["positions", *MICRO, "--rollouts", "0"], "--rollouts must be at least 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    monkeypatch, capsys, tmp_path, args, message
):
    args = [foreign_adapter(tmp_path) if a == "FOREIGN" else a for a in args]
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, *args)
    assert code == 2
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "results").exists()
