"""Shared test helpers: `esr-lab` run in-process, and the micro world's model options."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from esr_lab import cli

MICRO = ["--student", "micro-student", "--teacher", "micro-teacher", "--quiet"]
NO_FIGURES = ("eval", "grade")


def run_cli(monkeypatch, capsys, tmp_path, *args: str, dirs: bool = True) -> tuple[int, str, str]:
    """Run `esr-lab ARGS` in-process with results/figures under tmp_path (`dirs=False`: ARGS
    alone, for commands that name their own folders); returns (exit code, stdout, stderr)."""
    where = ["--results-dir", str(tmp_path / "results")] if dirs else []
    if dirs and args[0] not in ("build-toy",):
        where += ["--figures-dir", str(tmp_path / "figures")] if args[0] not in NO_FIGURES else []
    monkeypatch.setattr(sys, "argv", ["esr-lab", *args, *where])
    monkeypatch.setenv("COLUMNS", "200")  # tables unwrapped, as on a wide terminal
    with pytest.raises(SystemExit) as stop:
        cli.main()
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return stop.value.code or 0, out, err


def wait_for_checkpoint(
    folder: Path, pattern: str, proc: subprocess.Popen, timeout_s: float
) -> None:
    """Wait until a checkpoint matching `pattern` exists under `folder`, while `proc` (the
    command writing it) is still running; fail if it ends first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not list(folder.glob(pattern)):
        assert proc.poll() is None, "the command ended before writing a checkpoint"
        assert time.monotonic() < deadline, f"no {pattern} under {folder} in {timeout_s} s"
        time.sleep(0.2)
