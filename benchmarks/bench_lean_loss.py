"""Memory of every loss from the final hidden states through the backward: fused vs autograd.

At Qwen's vocabulary (151,936 ids) and 1,024 response tokens one float32 [T, V] logits tensor is
594 MiB. For each loss (reverse KL, forward KL, JSD(beta), top-K support, sampled-token) two
implementations start from the same student and teacher final hidden states [1, T, H] and
output heads [V, H]: "esr-lab" is `lean.fused_per_position_loss` (one block of positions at a
time, at its default block size unless --chunk is given); "autograd" is
`lean.unfused_per_position_loss` (full logits of both models, then
`divergences.per_position_loss` under plain autograd). We measure the memory added from just
before the loss to the end of its backward (a per-position weighted sum, as the trainer's masks
give), and express it as a multiple of one fp32 [T, V] tensor. The heads are the only big
tensors held before; by default the student's head is frozen (LoRA, the paper's setting);
`--train-head` gives it a gradient too (full fine-tuning, tied embeddings), whose own [V, H]
buffer then counts as added memory in both implementations.

Each row runs in a fresh child process: on CPU the meter is the resident set sampled every
millisecond (esr_lab.memory), whose peak cannot be reset within a process. The children run
with glibc's mmap threshold pinned at 1 MiB (MALLOC_MMAP_THRESHOLD_): by default glibc raises it
after the first large free and then keeps later freed blocks in its heap, so the resident set
would count dead tensors; pinned, every freed tensor leaves it at once, as a freed CUDA block
leaves the count of live memory. CUDA: max allocated
minus allocated before the loss. Values of the two implementations are compared per loss.

Run:  .venv/bin/python benchmarks/bench_lean_loss.py        (prints a table, writes parquet)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from esr_lab.lean import (  # noqa: E402
    HiddenStates,
    LossSpec,
    fused_per_position_loss,
    unfused_per_position_loss,
)
from esr_lab.memory import PeakMemory, rss_mb  # noqa: E402
from esr_lab.records import write_table  # noqa: E402

IMPLEMENTATIONS = {"esr-lab": fused_per_position_loss, "autograd": unfused_per_position_loss}
LOSSES = ("reverse_kl", "forward_kl", "jsd", "topk_support", "sampled_token")


def allocated_mb(device: torch.device) -> float:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else rss_mb()


def inputs(args: argparse.Namespace, device: torch.device) -> dict:
    """Hidden states, heads, sampled tokens and per-position weights; the heads dominate."""
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device)

    h_s = randn(1, args.tokens, args.hidden).requires_grad_()
    return {
        "student_BTH": h_s,
        "student_head_VH": (randn(args.vocab, args.hidden) / 4).requires_grad_(args.train_head),
        "teacher_BTH": randn(1, args.tokens, args.hidden),
        "teacher_head_VH": randn(args.vocab, args.hidden) / 4,
        "tokens_BT": torch.randint(0, args.vocab, (1, args.tokens), generator=g, device=device),
        "weights_BT": torch.rand(1, args.tokens, generator=g, device=device),
    }


def measure(args: argparse.Namespace) -> dict:
    """One (implementation, loss): time and memory of the loss forward+backward."""
    device = torch.device(args.device)
    data = inputs(args, device)
    weights_BT = data.pop("weights_BT")
    knobs = {"beta": args.beta, "topk": args.topk}
    if args.implementation == "esr-lab" and args.chunk:
        knobs["chunk"] = args.chunk
    spec = LossSpec(args.loss, args.vocab, **knobs)
    gc.collect()
    before = allocated_mb(device)
    with PeakMemory(device, interval_s=0.001) as peak:
        start = time.perf_counter()
        loss_BT = IMPLEMENTATIONS[args.implementation](spec, HiddenStates(**data))
        (loss_BT * weights_BT).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
    grad_h = data["student_BTH"].grad
    return {
        "time_s": elapsed,
        "mb": peak.mb - before,
        "loss_sum": float(loss_BT.detach().double().sum()),
        "grad_norm": float(grad_h.double().norm()),
    }


def spawn(implementation: str, loss: str, args: argparse.Namespace) -> dict:
    """This script again, in a fresh process, for one row."""
    command = [sys.executable, __file__, "--implementation", implementation, "--loss", loss]
    for name in ("vocab", "tokens", "hidden", "chunk", "beta", "topk", "device", "threads"):
        command += [f"--{name}", str(getattr(args, name))]
    command += ["--train-head"] if args.train_head else []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{implementation} {loss} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][4:])


def table_row(implementation: str, loss: str, r: dict, args: argparse.Namespace) -> dict:
    head = "trained" if args.train_head else "frozen"
    return {
        "benchmark": "lean_loss",
        "system": f"{implementation} {loss}",
        "setting": f"{args.vocab} ids x {args.tokens} tokens, H={args.hidden}, {head} head, "
        f"fp32 {args.device}",
        "steps": 1,
        "rollout_tokens": float(args.tokens),
        "time_median_s": r["time_s"],
        "time_min_s": r["time_s"],
        "time_max_s": r["time_s"],
        "peak_memory_mb": r["mb"],
        "step_memory_mb": r["mb"],
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }


def report(rows: dict, args: argparse.Namespace) -> pd.DataFrame:
    """The table (with peak as a multiple of one fp32 [T, V]) and the value agreement."""
    logits_mb = args.tokens * args.vocab * 4 / 2**20
    table = pd.DataFrame([table_row(i, loss, r, args) for (i, loss), r in rows.items()])
    shown = table[["system", "time_median_s", "peak_memory_mb"]].assign(
        x_logits=table.peak_memory_mb / logits_mb
    )
    print(shown.to_string(index=False, float_format="%.2f"))
    print(f"one fp32 [T, V] logits tensor: {logits_mb:.0f} MiB; setting: {table.setting[0]}")
    for loss in LOSSES:
        lean, plain = rows[("esr-lab", loss)], rows[("autograd", loss)]
        diffs = [
            abs(lean[k] - plain[k]) / max(abs(plain[k]), 1e-12) for k in ("loss_sum", "grad_norm")
        ]
        print(f"{loss}: relative difference of loss sum {diffs[0]:.1e}, of |grad h| {diffs[1]:.1e}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of both models")
    parser.add_argument(
        "--chunk", type=int, default=0, help="positions per fused block (0: its default)"
    )
    parser.add_argument("--beta", type=float, default=0.5, help="JSD beta")
    parser.add_argument("--topk", type=int, default=32, help="top-K support size")
    parser.add_argument("--train-head", action="store_true", help="the student head gets a grad")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each child")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "results" / "bench" / "lean_loss.parquet"
    )
    parser.add_argument("--implementation", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--loss", choices=LOSSES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.implementation:
        torch.set_num_threads(args.threads)
        print("ROW " + json.dumps(measure(args)))
        return
    rows = {(i, loss): spawn(i, loss, args) for loss in LOSSES for i in IMPLEMENTATIONS}
    write_table(args.out, report(rows, args), "bench")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
