"""Two CPU processes (gloo) train exactly as one: same rollouts, same losses, same update."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from esr_lab.distributed import Group

ARGS = [
    "train", "--student", "micro-student", "--teacher", "micro-teacher", "--steps", "2",
    "--batch", "4", "--micro-batch", "2", "--eval-every", "2", "--max-new-tokens", "24",
    "--eval-limit", "3", "--quiet",
]  # fmt: skip


def test_shards_cover_the_rows_once_in_order():
    for n in (1, 4, 7):
        for world in (1, 2, 3):
            rows = [i for rank in range(world) for i in range(n)[Group(rank, world).shard(n)]]
            assert rows == list(range(n))


def _train(tmp_path, run_id: str, *extra: str) -> pd.DataFrame:
    done = subprocess.run(
        [sys.executable, "-m", "esr_lab", *ARGS, "--results-dir", str(tmp_path),
         "--run-id", run_id, *extra],
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_parquet(tmp_path / "train" / run_id / "steps.parquet")


def test_two_processes_take_the_one_process_step(tmp_path):
    one = _train(tmp_path, "one")
    two = _train(tmp_path, "two", "--num-processes", "2")
    for column in ("loss", "kl_all", "grad_norm", "rollout_tokens_mean", "selected_tokens_mean"):
        assert two[column].tolist() == pytest.approx(one[column].tolist(), rel=1e-4, abs=1e-4)
    evals = [pd.read_parquet(tmp_path / "train" / r / "evals.parquet") for r in ("one", "two")]
    assert evals[1].avg_at_k.tolist() == evals[0].avg_at_k.tolist()
    assert (tmp_path / "train" / "two" / "checkpoints" / "step-000002").is_dir()
