"""Data-parallel training over several processes, launched by accelerate (or torchrun).

Each process samples, scores and back-propagates its own contiguous share of the step's rows,
with the same per-row seeds as a single process, so it draws exactly the rollouts one process
would. The losses are weighted by whole-batch counts (summed across processes), the gradients
are summed across processes before clipping, and every process then takes the same optimizer
step from the same weights: the step equals the one-process step with the same global batch
(DDP's semantics, written out so that generation, LoRA and full fine-tuning need no wrapper).
Only the main process writes records and checkpoints; evaluation is sharded and gathered.

`esr-lab train --num-processes N` relaunches itself through `accelerate launch`; running
`accelerate launch --multi_gpu -m esr_lab train ...` or `torchrun --nproc-per-node N -m
esr_lab train ...` works too. CPU processes talk over gloo. Every process holds whole models;
sharding them (FSDP) is not implemented.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist

from esr_lab.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This process's contiguous block of `n` rows (earlier ranks take the remainder)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of `values` over the processes, in float64."""
        if self.world == 1:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64, device=_device())
        torch_dist.all_reduce(tensor)
        return tensor.tolist()

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the processes (a missing one counts as 0)."""
        if self.world == 1:
            return
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            torch_dist.all_reduce(param.grad)

    def gather(self, item: T) -> list[T]:
        """Every process's `item`, in rank order, on every process."""
        if self.world == 1:
            return [item]
        items: list[Any] = [None] * self.world
        torch_dist.all_gather_object(items, item)
        return items

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the main process and hand its result (or its error) to every process."""
        if self.world == 1:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as err:  # re-raised on every process, so none waits forever
                box[0] = ("error", err)
        torch_dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if status == "error":
            raise value
        return value


def _device() -> torch.device:
    """gloo reduces CPU tensors, nccl CUDA ones."""
    if torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@cache
def group() -> Group:
    """This process's group, set up once from the launcher's environment (WORLD_SIZE, RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group()
    from accelerate import PartialState

    state = PartialState()  # joins the process group the launcher described
    if torch.cuda.is_available():
        torch.cuda.set_device(state.local_process_index)
    return Group(state.process_index, state.num_processes)


def without_num_processes(argv: list[str]) -> list[str]:
    """The command line minus `--num-processes N`, for the processes it launches."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--num-processes="):
            skip = False
            continue
        skip = arg == "--num-processes"
        if not skip:
            kept.append(arg)
    return kept


def relaunch(num_processes: int, argv: Sequence[str]) -> int:
    """Run `esr-lab ARGV` as `num_processes` processes under accelerate launch; exit code."""
    if num_processes < 1:
        raise UserError(f"--num-processes must be at least 1, got {num_processes}")
    cuda = torch.cuda.is_available()
    if cuda and num_processes > torch.cuda.device_count():
        raise UserError(
            f"--num-processes {num_processes} asks for more GPUs than the "
            f"{torch.cuda.device_count()} visible"
        )
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--multi_gpu",  # accelerate's torchrun launcher; on a CPU its processes use gloo
        "-m", "esr_lab", *argv,
    ]  # fmt: skip
    return subprocess.run(command, check=False).returncode
