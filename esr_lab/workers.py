"""Training several content-addressed runs at once (`--jobs N`).

Each run goes to one of N worker processes (spawn, so a worker starts clean of the parent's
torch and CUDA state) that calls the same `loop.train_variant` as a single process does: the
runs share the store under `<results>/runs/` and its file locks, so a run that another worker,
command or machine is training is waited for and reused, never trained twice. On a CPU the
cores are divided among the workers (torch threads = cores // N, at least 1); with several GPUs
each worker takes one (CUDA_VISIBLE_DEVICES), chosen before it imports torch.

Stopping: Ctrl-C or SIGTERM in the parent terminates the workers. A worker killed mid-run loses
at most the steps since its last checkpoint, which is written whole or not at all, and its lock
is released by the operating system, so the rerun resumes every run where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from esr_lab.console import console
from esr_lab.records import Paths

if TYPE_CHECKING:
    from esr_lab.loop import TrainingRun
    from esr_lab.train_config import TrainConfig


def train_all(experiment: str, runs: Sequence[TrainConfig], paths: Paths) -> list[TrainingRun]:
    """Train (or reuse) every run, `paths.jobs` at a time; results in the order of `runs`."""
    from esr_lab.loop import train_variant

    if paths.jobs <= 1 or len(runs) <= 1:
        results = []
        for index, run in enumerate(runs, start=1):
            console.print(f"[bold]{experiment}[/] variant {index}/{len(runs)}: {run.label}")
            results.append(train_variant(run, paths.results_dir, paths.show_progress))
        return results
    return _in_workers(experiment, runs, paths)


def _in_workers(experiment: str, runs: Sequence[TrainConfig], paths: Paths) -> list[TrainingRun]:
    import multiprocessing

    jobs = min(paths.jobs, len(runs))
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for slot in range(jobs):
        slots.put(slot)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = context.Pool(jobs, initializer=_start_worker, initargs=(slots, threads, _gpus()))
    try:
        # progress bars of several processes would overwrite each other: one line per run instead
        pending = [pool.apply_async(_train_one, (run, paths.results_dir)) for run in runs]
        results = []
        for index, (run, job) in enumerate(zip(runs, pending, strict=True), start=1):
            results.append(job.get())
            console.print(f"[bold]{experiment}[/] run {index}/{len(runs)} done: {run.label}")
        pool.close()
    except BaseException:  # Ctrl-C, SIGTERM or a failed run: no worker outlives the command
        pool.terminate()
        raise
    finally:
        pool.join()
    return results


def _gpus() -> int:
    """GPUs to share out; counted without initialising CUDA in the parent (NVML, else 0)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch or no driver: train on the CPU
        return 0


def _start_worker(slots, threads: int, gpus: int) -> None:
    import queue

    try:
        slot = slots.get(timeout=5)
    except queue.Empty:  # a worker the pool restarted after one died: the slots are taken
        slot = os.getpid()
    if gpus > 1:  # one GPU per worker; before torch is imported here
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    import torch

    torch.set_num_threads(threads)


def _train_one(run: TrainConfig, results_dir) -> TrainingRun:
    from esr_lab.loop import train_variant

    return train_variant(run, results_dir, show_progress=False)
