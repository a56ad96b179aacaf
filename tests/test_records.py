"""Run folders: traceable config, refusal to overwrite, atomic writes, declared schemas."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from esr_lab.errors import UserError
from esr_lab.records import atomic_write_bytes, open_run, write_table


def test_new_run_records_config_commit_and_versions(tmp_path):
    run = open_run(tmp_path, "decay", {"seed": 3, "samples": 4}, None)
    saved = json.loads((run.path / "config.json").read_text())
    assert saved["seed"] == 3 and saved["run_id"] == run.run_id
    assert saved["git_commit"] and "torch" in saved["versions"]
    assert not run.resumed


def test_two_fresh_runs_never_share_a_folder(tmp_path):
    first = open_run(tmp_path, "decay", {"seed": 0}, None)
    second = open_run(tmp_path, "decay", {"seed": 0}, None)
    assert first.path != second.path


def test_same_id_same_config_resumes_other_config_is_refused(tmp_path):
    open_run(tmp_path, "decay", {"seed": 0}, "mine")
    assert open_run(tmp_path, "decay", {"seed": 0}, "mine").resumed
    with pytest.raises(UserError, match="run 'mine' already exists"):
        open_run(tmp_path, "decay", {"seed": 1}, "mine")
    with pytest.raises(UserError, match="bad run id"):
        open_run(tmp_path, "decay", {"seed": 1}, "../escape")


def test_a_refusal_names_the_nested_settings_that_differ_not_whole_sections(tmp_path):
    base = {"lr": 2e-4, "seed": 0, "sampling": {"top_p": 1.0, "top_k": 0}}
    open_run(tmp_path, "sweep_n", {"base": base, "ns": [20]}, "mine")
    other = {"base": {**base, "seed": 2}, "ns": [20]}
    with pytest.raises(UserError) as refused:
        open_run(tmp_path, "sweep_n", other, "mine")
    assert "(base.seed: 0 -> 2); pick another --run-id" in str(refused.value)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_tables_must_match_their_schema(tmp_path):
    # a core schema, declared in records itself (an experiment's are declared on its import)
    with pytest.raises(ValueError, match="train_summary columns"):
        write_table(tmp_path / "s.parquet", pd.DataFrame({"a": [1]}), "train_summary")
    assert not (tmp_path / "s.parquet").exists()


def test_fresh_runs_started_together_get_their_own_folders(tmp_path):
    """Two processes with one config in the same second (a shared results folder) must not
    share a fresh run id: each claims its folder by creating it."""
    first = open_run(tmp_path, "decay", {"seed": 1}, None)
    second = open_run(tmp_path, "decay", {"seed": 1}, None)
    assert first.path != second.path and first.path.is_dir() and second.path.is_dir()
