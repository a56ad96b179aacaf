"""Peak memory of the reverse-KL loss forward+backward: esr-lab's chunked loss vs plain autograd.

A randomly initialised Qwen3 with a real vocabulary (151,936 ids, like Qwen) scores 1,024
response tokens; teacher and student logits are [1, 1024, 151936] float32 (594 MiB each). The
straightforward loss (`divergences.reverse_kl` under autograd) keeps log-probs, probs and their
products for the backward: several more full-vocabulary copies. `chunked_reverse_kl` keeps only
the logits and recomputes one block of positions at a time in the backward. We measure the peak
memory from just before the loss to the end of its backward (through the model's weights), for
each implementation, and check that the per-position KL and the weight gradients agree.

CPU: peak resident set minus the resident set before the loss (sampled, see esr_lab.memory);
CUDA: max allocated minus allocated before the loss.

Run:  .venv/bin/python benchmarks/bench_lean_loss.py        (prints a table, writes parquet)
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from transformers import Qwen3Config, Qwen3ForCausalLM  # noqa: E402

from esr_lab.divergences import chunked_reverse_kl, reverse_kl  # noqa: E402
from esr_lab.memory import PeakMemory, rss_mb  # noqa: E402
from esr_lab.records import write_table  # noqa: E402

IMPLEMENTATIONS = {"chunked (esr-lab)": chunked_reverse_kl, "straightforward": reverse_kl}


def random_model(vocab: int, seed: int, device: torch.device) -> Qwen3ForCausalLM:
    """A 1-layer Qwen3 whose size is all vocabulary: the logits are what the loss pays for."""
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        tie_word_embeddings=True,
    )
    return Qwen3ForCausalLM(config).to(device)


def allocated_mb(device: torch.device) -> float:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else rss_mb()


def loss_pass(name: str, student, teacher_logits_BTV, ids_BL, tokens: int) -> dict:
    """Student forward, then the loss forward+backward under a memory meter."""
    student.zero_grad(set_to_none=True)
    student_logits_BTV = student(input_ids=ids_BL, logits_to_keep=tokens).logits
    device = student_logits_BTV.device
    gc.collect()
    before = allocated_mb(device)
    with PeakMemory(device, interval_s=0.001) as peak:
        start = time.perf_counter()
        kl_BT = IMPLEMENTATIONS[name](student_logits_BTV, teacher_logits_BTV)
        kl_BT.sum().backward()
        elapsed = time.perf_counter() - start
    grad = student.get_output_embeddings().weight.grad.detach().clone()
    return {"kl_BT": kl_BT.detach(), "grad": grad, "mb": peak.mb - before, "time_s": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "results" / "bench" / "lean_loss.parquet"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    student, teacher = (random_model(args.vocab, s, device) for s in (0, 1))
    ids_BL = torch.randint(0, args.vocab, (1, args.tokens + 16), device=device)
    with torch.no_grad():
        teacher_logits_BTV = teacher(input_ids=ids_BL, logits_to_keep=args.tokens).logits
    results = {
        name: loss_pass(name, student, teacher_logits_BTV, ids_BL, args.tokens)
        for name in IMPLEMENTATIONS
    }
    lean, plain = results.values()
    kl_diff = float((lean["kl_BT"] - plain["kl_BT"]).abs().max())
    grad_diff = float((lean["grad"] - plain["grad"]).abs().max())
    logits_mb = args.tokens * args.vocab * 4 / 2**20
    table = pd.DataFrame(
        [
            {
                "benchmark": "lean_loss",
                "system": name,
                "setting": f"{args.vocab} ids x {args.tokens} tokens, fp32 {device.type}",
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
            for name, r in results.items()
        ]
    )
    print(table[["system", "setting", "time_median_s", "peak_memory_mb"]].to_string(index=False))
    print(f"one [T, V] float32 logits tensor: {logits_mb:.0f} MiB")
    print(f"peak memory, chunked / straightforward: {lean['mb'] / plain['mb']:.2f}x")
    print(f"max |KL difference| {kl_diff:.2e}, max |lm_head grad difference| {grad_diff:.2e}")
    write_table(args.out, table, "bench")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
