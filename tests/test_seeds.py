"""Seeds as an axis (`--seeds`): intervals over seeds, paired differences, per-seed rows and
their aggregate; several runs at once (`--jobs`) and two processes sharing one results folder."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from esr_lab.errors import UserError
from esr_lab.experiments.common import seed_table, seed_tables
from esr_lab.intervals import t_interval
from esr_lab.metrics import mean_ci
from esr_lab.options import parse_seeds
from tests.helpers import MICRO, run_cli, wait_for_checkpoint

REPO = Path(__file__).resolve().parents[1]
SWEEP = ("sweep-n", *MICRO, "--steps", "2", "--eval-every", "2")


def test_t_interval_against_hand_computed_values():
    # mean 0.6; sd sqrt((0.01 + 0 + 0.01) / 2) = 0.1; t(0.975, df=2) = 4.302652729911275
    mean, sd, low, high = t_interval([0.5, 0.6, 0.7])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert mean == pytest.approx(0.6) and sd == pytest.approx(0.1)
    assert (low, high) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    # differences may be negative: never clipped to [0, 1] (mean_ci is, for accuracies)
    assert t_interval([-0.5, -0.3])[2] < -1
    assert mean_ci([0.5, 0.6, 0.7]) == (mean, low, high)


def test_one_seed_has_no_interval():
    mean, sd, low, high = t_interval([0.4])
    assert mean == 0.4 and all(math.isnan(v) for v in (sd, low, high))
    assert mean_ci([0.4]) == (0.4, 0.4, 0.4)  # the interval over problems keeps its behaviour


@pytest.mark.parametrize(
    ("text", "seeds"), [("3", (0, 1, 2)), ("0,1", (0, 1)), ("5,", (5,)), (None, None)]
)
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["1,1", "-1,2", "a", "0"])
def test_parse_seeds_refuses(text):
    with pytest.raises(UserError, match="--seeds"):
        parse_seeds(text)


def test_seed_tables_pair_differences_by_seed():
    # two variants x two seeds; esr - full per seed: best 0.1 and 0.3, final 0.0 and 0.2
    summary = pd.DataFrame(
        {
            "run_id": ["e0", "e1", "f0", "f1"],
            "best_avg_at_k": [0.6, 0.8, 0.5, 0.5],
            "final_avg_at_k": [0.5, 0.7, 0.5, 0.5],
        }
    )
    tables = seed_tables(
        "p", summary, ["esr", "esr", "full", "full"], [0, 1, 0, 1], [("esr", "full")]
    )
    per_seed = tables["seeds"]
    assert per_seed.train_run.tolist() == ["e0", "e1", "f0", "f1"] and per_seed.seed.tolist() == [
        0,
        1,
        0,
        1,
    ]
    differences = tables["seed_differences"]
    best = differences[differences.metric == "best_avg_at_k"]
    assert best.difference.tolist() == pytest.approx([0.1, 0.3]) and best.seed.tolist() == [0, 1]
    cell = tables["seed_aggregate"].set_index(["variant", "reference", "metric"])
    gap = cell.loc[("esr", "full", "best_avg_at_k")]
    # mean 0.2, sd sqrt(2 * 0.1^2) = 0.1414..., t(0.975, df=1) = 12.706204736174698
    half = 12.706204736174698 * math.sqrt(0.02) / math.sqrt(2)
    assert gap["mean"] == pytest.approx(0.2) and gap.sd == pytest.approx(math.sqrt(0.02))
    assert (gap.ci_low, gap.ci_high) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    full = cell.loc[("full", "", "best_avg_at_k")]
    assert full["mean"] == 0.5 and full.sd == 0 and full.ci_low == full.ci_high == 0.5
    view = seed_table(tables["seed_aggregate"])
    assert view.variant.tolist() == ["esr", "full", "esr - full"]
    assert view.iloc[2]["best % ±sd"] == "20.00±14.14"


def test_seed_and_seeds_together_are_refused(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, *SWEEP, "--seed", "1", "--seeds", "2")
    assert code == 2 and "--seed and --seeds" in err and len(err.strip().splitlines()) == 1


def test_sweep_n_with_seeds_writes_per_seed_rows_and_the_aggregate(monkeypatch, capsys, tmp_path):
    """The issue's done-when: per-seed rows and an aggregate with the interval over seeds."""
    args = (*SWEEP, "--ns", "2,4", "--seeds", "0,1", "--run-id", "s")
    code, out, _ = run_cli(monkeypatch, capsys, tmp_path, *args)
    assert code == 0 and "over seeds (95% t-interval)" in out and "esr-4 - full" in out
    run = tmp_path / "results" / "sweep_n" / "s"
    per_seed = pd.read_parquet(run / "seeds.parquet")
    assert len(per_seed) == 8 and per_seed.seed.tolist() == [0, 1] * 4
    assert per_seed.train_run.nunique() == 8  # each seed its own content-addressed run
    aggregate = pd.read_parquet(run / "seed_aggregate.parquet")
    assert set(aggregate.variant + "|" + aggregate.reference) == {
        "esr-2|",
        "esr-4|",
        "full|",
        "progressive-2-4|",
        "esr-2|full",
        "esr-4|full",
    }
    assert (aggregate.n_seeds == 2).all() and aggregate.ci_low.notna().all()
    differences = pd.read_parquet(run / "seed_differences.parquet")
    assert len(differences) == 2 * 2 * 2  # 2 comparisons x 2 metrics x 2 seeds
    assert json.loads((run / "config.json").read_text())["seeds"] == [0, 1]
    assert len(pd.read_parquet(run / "summary.parquet")) == 8


def test_train_with_seeds_trains_once_per_seed(monkeypatch, capsys, tmp_path):
    args = ("train", *MICRO, "--steps", "2", "--eval-every", "2", "--seeds", "2", "--run-id", "t")
    code, out, _ = run_cli(monkeypatch, capsys, tmp_path, *args)
    assert code == 0 and "over seeds (95% t-interval)" in out
    run = tmp_path / "results" / "train" / "t"
    per_seed = pd.read_parquet(run / "seeds.parquet")
    assert per_seed.seed.tolist() == [0, 1] and per_seed.train_run.nunique() == 2
    aggregate = pd.read_parquet(run / "seed_aggregate.parquet")
    assert (aggregate.n_seeds == 2).all() and set(aggregate.reference) == {""}
    assert (run / "curve.png").is_file()
    refused = run_cli(monkeypatch, capsys, tmp_path, *args[:-2], "--num-processes", "2")
    assert refused[0] == 2 and "--jobs" in refused[2]


def test_without_seeds_nothing_changes_and_one_seed_reuses_its_run(monkeypatch, capsys, tmp_path):
    args = (*SWEEP, "--ns", "2", "--no-progressive")
    code, _, _ = run_cli(monkeypatch, capsys, tmp_path, *args, "--run-id", "plain")
    assert code == 0
    plain = tmp_path / "results" / "sweep_n" / "plain"
    config = json.loads((plain / "config.json").read_text())
    assert "seeds" not in config and not (plain / "seeds.parquet").exists()
    code, out, err = run_cli(
        monkeypatch, capsys, tmp_path, *args, "--seeds", "1", "--run-id", "one"
    )
    one = tmp_path / "results" / "sweep_n" / "one"
    # --seeds 1 is seed 0, the --seed default: the same training runs, reused; no interval
    assert json.loads((one / "config.json").read_text())["variant_runs"] == config["variant_runs"]
    assert code == 0 and err.count("reused finished run") == 2
    assert pd.read_parquet(one / "seed_aggregate.parquet").ci_low.isna().all()
    assert "-..-" in out


def test_jobs_2_writes_the_tables_of_jobs_1(monkeypatch, capsys, tmp_path):
    args = (*SWEEP, "--ns", "2", "--no-progressive", "--run-id", "j")
    tables = {}
    for jobs in ("1", "2"):
        home = tmp_path / f"jobs{jobs}"
        code, _, err = run_cli(monkeypatch, capsys, home, *args, "--jobs", jobs)
        assert code == 0
        run = home / "results" / "sweep_n" / "j"
        tables[jobs] = [pd.read_parquet(run / f) for f in ("summary.parquet", "evals.parquet")]
    assert "run 2/2 done" in err  # the second went through the workers
    for one, two in zip(tables["1"], tables["2"], strict=True):
        pd.testing.assert_frame_equal(one, two)


def test_two_processes_in_two_folders_share_one_results_folder(tmp_path):
    """As two machines on a network file system would: one trains the shared run, the other
    waits on its lock and reuses it."""
    shared = tmp_path / "shared-results"
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    command = [sys.executable, "-m", "esr_lab", *SWEEP, "--ns", "2", "--no-full"]
    command += ["--no-progressive", "--results-dir", str(shared)]
    processes = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        processes.append(
            subprocess.Popen(
                command, cwd=tmp_path / name, env=env, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = [p.communicate(timeout=600)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    assert sum(out.count("reused finished run") for out in outputs) == 1
    assert len(list((shared / "runs").glob("esr-2-*/checkpoints/step-000002"))) == 1
    summaries = [pd.read_parquet(p) for p in sorted(shared.glob("sweep_n/*/summary.parquet"))]
    assert len(summaries) == 2
    pd.testing.assert_frame_equal(summaries[0], summaries[1])


def test_reproduce_passes_seeds_and_jobs_to_the_training_steps(monkeypatch, capsys, tmp_path):
    export = tmp_path / "committed"
    args = ("reproduce", "--preset", "micro", "--only", "sweep-n", "--quiet")
    args += ("--seeds", "2", "--jobs", "2", "--export", str(export))
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, *args)
    assert code == 0, err
    run = tmp_path / "results" / "sweep_n" / "reproduce-micro-seeds-0-1"
    assert pd.read_parquet(run / "seeds.parquet").seed.tolist() == [0, 1] * 4
    assert "over seeds" in out
    exported = export / "sweep_n" / "reproduce-micro-seeds-0-1" / "seed_aggregate.parquet"
    assert exported.is_file()


def test_figures_draw_the_seed_spread(tmp_path):
    from esr_lab.figures import _over_seeds, plot_ablate, plot_select, plot_sweep_n

    labels = ["esr-2", "esr-2", "esr-4", "esr-4", "full", "full"]
    summary = pd.DataFrame(
        {
            "label": labels,
            "base_avg_at_k": [0.1] * 6,
            "best_avg_at_k": [0.2, 0.4, 0.5, 0.7, 0.3, 0.5],
        }
    )
    means, per_seed = _over_seeds(summary)
    assert means.label.tolist() == ["esr-2", "esr-4", "full"] and per_seed is summary
    assert means.best_avg_at_k.tolist() == pytest.approx([0.3, 0.6, 0.4])
    assert _over_seeds(summary.iloc[::2])[1] is None  # one seed: drawn as before
    plot_sweep_n(summary, [tmp_path / "sweep_n.png"])
    plot_select(summary, [tmp_path / "select.png"])
    evals = pd.DataFrame(
        {
            "variant": ["full"] * 4,
            "recipe": ["esr-lab"] * 4,
            "difference": [""] * 4,
            "train_run": ["f0", "f0", "f1", "f1"],
            "step": [0, 2, 0, 2],
            **{
                c: [0.1, 0.2, 0.1, 0.3]
                for c in ("avg_at_k", "relaxed_avg_at_k", "first_boxed_avg_at_k")
            },
            **{c: [1.0] * 4 for c in ("mean_tokens", "multi_boxed_pct", "repetitive_pct")},
            "boxes_per_response": [1.0] * 4,
        }
    )
    plot_ablate(evals, [tmp_path / "ablate.png"])
    assert all((tmp_path / f).is_file() for f in ("sweep_n.png", "select.png", "ablate.png"))


@pytest.mark.parametrize("group", [True, False], ids=["terminal-ctrl-c", "parent-only"])
def test_ctrl_c_with_jobs_stops_every_worker_and_the_rerun_resumes(tmp_path, group):
    """Ctrl-C in a terminal reaches the whole foreground group (parent and workers); `kill -INT`
    reaches the parent alone. Either way: exit 130 with the resume line, no worker left alive,
    and the printed command finishes every run with each step trained once."""
    results = tmp_path / "results"
    argv = [*SWEEP[:-4], "--ns", "2", "--no-progressive", "--steps", "8", "--eval-every", "4"]
    argv += ["--jobs", "2", "--results-dir", str(results)]
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="400")
    command = [sys.executable, "-m", "esr_lab", *argv]
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    wait_for_checkpoint(results, "runs/*/checkpoints/step-*", proc, timeout_s=300)
    if group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("esr-lab: stopped by Ctrl-C (SIGINT) in run "), line
    deadline = time.monotonic() + 30
    while _group_alive(proc.pid):  # the workers were in the parent's session and group
        assert time.monotonic() < deadline, "a worker outlived the command"
        time.sleep(0.2)

    resume = shlex.split(line.split("resume with: ", 1)[1])
    assert resume[0] == "esr-lab"
    finished = subprocess.run(
        [sys.executable, "-m", "esr_lab", *resume[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr
    runs = sorted(r for r in (results / "runs").iterdir() if r.is_dir())  # not the lock files
    assert [r.name.split("-")[0] for r in runs] == ["esr", "full"]
    for run in runs:
        steps = pd.read_parquet(run / "steps.parquet")
        assert list(steps.step) == list(range(1, 9)), run.name  # none lost, none repeated


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
