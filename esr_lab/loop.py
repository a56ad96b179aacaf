"""The training loop: steps, evaluations, checkpoints, and resuming after a kill.

A checkpoint is written at every evaluation (and the last step): the student's trainable
weights (`save_pretrained`, so `esr-lab eval --adapter` can load it; full fine-tuning saves
the float32 master weights), the optimizer and learning-rate schedule states, and the metrics
up to that step. Rollouts draw their randomness from (seed, step, prompt, sample)
only, so a run resumed from a checkpoint continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from filelock import FileLock

from esr_lab import distributed, interrupts, train
from esr_lab.console import console, progress_bar
from esr_lab.errors import UserError
from esr_lab.records import (
    SCHEMAS,
    RunDir,
    config_hash,
    current_umask,
    existing_run,
    open_run,
    with_input_hashes,
    write_json,
    write_table,
)
from esr_lab.train import Trainer
from esr_lab.train_config import TrainConfig


def checkpoint_dir(run_dir: RunDir, step: int) -> Path:
    return run_dir.path / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(run_dir: RunDir) -> Path | None:
    """The newest complete checkpoint (state.json is written last, then the folder renamed)."""
    done = sorted(
        p for p in (run_dir.path / "checkpoints").glob("step-*") if (p / "state.json").is_file()
    )
    return done[-1] if done else None


def save_checkpoint(trainer: Trainer, run_dir: RunDir, step: int, steps, evals, samples) -> None:
    """Weights, optimizer and metrics up to `step`, all or nothing."""
    final = checkpoint_dir(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp's folder is private; results are not
    try:
        trainer.model.save_pretrained(tmp / "model")
        torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(trainer.scheduler.state_dict(), tmp / "scheduler.pt")
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write checkpoint {final}: {e}".splitlines()[0]) from e
    write_json(tmp / "state.json", {"step": step})
    # metrics first: restore() cuts them at the checkpoint it finds, so a kill between the two
    # writes resumes from the previous checkpoint instead of a checkpoint without its metrics
    _write_metrics(run_dir, steps, evals, samples)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    interrupts.note_checkpoint(step, run_dir.path)


def _write_metrics(run_dir: RunDir, steps, evals, samples) -> None:
    write_table(
        run_dir.path / "steps.parquet", _frame(steps, run_dir, "train_steps"), "train_steps"
    )
    write_table(
        run_dir.path / "evals.parquet", _frame(evals, run_dir, "train_evals"), "train_evals"
    )
    write_table(run_dir.path / "eval_samples.parquet", samples, "eval_samples")


def _frame(rows: list[dict], run_dir: RunDir, schema: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame.insert(0, "label", json.loads((run_dir.path / "config.json").read_text())["label"])
    frame.insert(0, "run_id", run_dir.run_id)
    return frame[list(SCHEMAS[schema])]


def restore(trainer: Trainer, run_dir: RunDir) -> tuple[int, list, list, pd.DataFrame]:
    """Resume point: the step after the latest checkpoint, with the metrics saved with it."""
    folder = latest_checkpoint(run_dir)
    if folder is None:
        return 0, [], [], pd.DataFrame()
    train.load_checkpoint_weights(trainer, folder / "model")
    trainer.optimizer.load_state_dict(torch.load(folder / "optimizer.pt"))
    trainer.scheduler.load_state_dict(torch.load(folder / "scheduler.pt"))
    step = json.loads((folder / "state.json").read_text())["step"]
    steps = pd.read_parquet(run_dir.path / "steps.parquet")
    evals = pd.read_parquet(run_dir.path / "evals.parquet")
    samples = pd.read_parquet(run_dir.path / "eval_samples.parquet")
    return step + 1, _rows_upto(steps, step), _rows_upto(evals, step), samples[samples.step <= step]


def _rows_upto(frame: pd.DataFrame, step: int) -> list[dict]:
    return frame[frame.step <= step].drop(columns=["run_id", "label"]).to_dict("records")


def is_eval_step(cfg: TrainConfig, step: int) -> bool:
    """Evaluate the base student (step 0), every eval_every steps, and after the last step."""
    return step == 0 or step % cfg.eval_every == 0 or step == cfg.steps


class TrainingRun(NamedTuple):
    """What a training run leaves: its folder, its summary row and its evaluations (the
    train_evals table written to evals.parquet; empty on the non-main processes of a
    distributed run)."""

    run_dir: RunDir
    summary: pd.DataFrame
    evals: pd.DataFrame


def run(
    cfg: TrainConfig,
    results_dir: Path = Path("results"),
    run_id: str | None = None,
    show_progress: bool = True,
    experiment: str = "train",
) -> TrainingRun:
    """Train (or resume) one run; returns its run folder, its summary row and its evaluations.

    A named run is trained under a file lock, so two experiments running side by side that
    share a run (same config, same id) train it once: the second waits, then reuses it.
    With several processes (distributed.py) the main process alone takes the lock, opens the
    run folder and writes; the others follow its decisions.
    """
    cfg = cfg.resolved()
    train.check_inputs(cfg)  # bad input fails here, before anything is written
    group = distributed.group()
    if run_id is None:
        return _run(cfg, results_dir, run_id, show_progress and group.is_main, experiment)
    folder = Path(results_dir) / experiment
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / f".{run_id}.lock")) if group.is_main else nullcontext()
    with lock:
        return _run(cfg, results_dir, run_id, show_progress and group.is_main, experiment)


def _run(cfg, results_dir, run_id, show_progress, experiment) -> TrainingRun:
    group = distributed.group()
    finished = Path(results_dir) / experiment / str(run_id) / "summary.parquet"
    if group.on_main(lambda: run_id is not None and finished.is_file()):
        # nothing left to do: no models to load
        run_dir = open_run(results_dir, experiment, train.config_dict(cfg), run_id)
        # said even when quiet: a run another command, worker or machine trained is reused
        console.print(f"reused finished run {run_dir.path}")
        evals = pd.read_parquet(run_dir.path / "evals.parquet")
        return TrainingRun(run_dir, pd.read_parquet(finished), evals)
    config = train.config_dict(cfg)
    if run_id is not None:  # a run id taken by other settings is refused before models load
        group.on_main(lambda: existing_run(results_dir, experiment, config, run_id))
    trainer = train.setup(cfg)
    run_dir = group.on_main(lambda: open_run(results_dir, experiment, config, run_id))
    start, steps, evals, samples = restore(trainer, run_dir)
    with progress_bar(show_progress) as bar:
        # the bar counts training steps; the evaluation of the untrained student precedes them
        task = bar.add_task(cfg.label, total=cfg.steps, completed=max(start - 1, 0))
        if start == 0:
            samples = _evaluate(trainer, run_dir, 0, evals, samples)
            start = 1
        for step in range(start, cfg.steps + 1):
            steps.append(train.train_step(trainer, step))
            if is_eval_step(cfg, step):
                samples = _evaluate(trainer, run_dir, step, evals, samples)
                write = partial(save_checkpoint, trainer, run_dir, step, steps, evals, samples)
                group.on_main(write)
            bar.update(task, advance=1, description=f"{cfg.label} loss {steps[-1]['loss']:.3f}")
    summary = run_summary(pd.DataFrame(evals), cfg, run_dir.run_id)
    group.on_main(lambda: write_table(run_dir.path / "summary.parquet", summary, "train_summary"))
    table = _frame(evals, run_dir, "train_evals") if group.is_main else pd.DataFrame()
    return TrainingRun(run_dir, summary, table)


def _evaluate(trainer, run_dir, step, evals, samples) -> pd.DataFrame:
    metrics, graded = train.evaluate_student(trainer, step)
    evals.append(metrics)
    graded.insert(0, "step", step)
    graded.insert(0, "run_id", run_dir.run_id)
    return pd.concat([samples, graded], ignore_index=True) if len(samples) else graded


def run_summary(evals: pd.DataFrame, cfg: TrainConfig, run_id: str) -> pd.DataFrame:
    """Base, best-across-steps (the paper's reported number) and final accuracy; collapse flag.

    A run is flagged collapsed when its final accuracy fell more than `collapse_drop` (relative)
    below its best trained checkpoint.
    """
    base = evals[evals.step == 0].iloc[0]
    trained = evals[evals.step > 0]
    best = trained.loc[trained.avg_at_k.idxmax()]
    final = trained.iloc[-1]
    collapsed = bool(final.avg_at_k < (1 - cfg.collapse_drop) * best.avg_at_k)
    row = {
        "run_id": run_id,
        "label": cfg.label,
        "base_avg_at_k": base.avg_at_k,
        "best_avg_at_k": best.avg_at_k,
        "best_step": int(best.step),
        "best_pass_at_k": best.pass_at_k,
        "best_maj_at_k": best.maj_at_k,
        "final_avg_at_k": final.avg_at_k,
        "final_step": int(final.step),
        "collapsed": collapsed,
    }
    return pd.DataFrame([row])


def variant_run_id(cfg: TrainConfig) -> str:
    """The run id a training config always gets: its label and a hash of its settings."""
    resolved = cfg.resolved()
    return f"{resolved.label}-{config_hash(with_input_hashes(train.config_dict(resolved)))}"


def train_variant(cfg: TrainConfig, results_dir: Path, show_progress: bool) -> TrainingRun:
    """Train `cfg` under its content-addressed run id, or reuse/resume the run that has it."""
    return run(cfg, results_dir, variant_run_id(cfg), show_progress, "runs")
