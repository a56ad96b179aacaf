"""One full-OPD training step, esr-lab against TRL's on-policy distillation, side by side.

Both train the same saved student toward the same saved teacher (tiny Qwen3s, random weights,
a byte-level tokenizer with a chat template) on the same prompts: batch B, up to T sampled tokens
per prompt at temperature 1, reverse KL over the full vocabulary (TRL: `DistillationTrainer`
with beta=1), full fine-tuning with AdamW, one optimizer step per batch, fp32, CPU, one torch
thread each. Each system runs in its own child process of this one script run, so that each
process's memory is its own; per step we record the wall time and the peak resident set (and
its rise above the resident set just before the step: the step's own working memory). Warm-up
steps are not measured. TRL is a benchmark-only dependency: `pip install -e .[bench]`.

Run:  .venv/bin/python benchmarks/bench_vs_trl.py           (prints a table, writes parquet)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from esr_lab.memory import PeakMemory, rss_mb  # noqa: E402
from esr_lab.records import write_table  # noqa: E402
from tests.tiny_models import byte_level_tokenizer, save_pair, tiny_model  # noqa: E402

SYSTEMS = ("esr-lab", "trl")
SIZES = {"student": (64, 2), "teacher": (128, 4)}  # hidden, layers: the toy world's shapes
PROBLEMS = [f"Compute {a} + {b} * {a % 7 + 2}. Show the steps." for a in range(40) for b in (3, 11)]


def build_world(folder: Path) -> None:
    """Student and teacher folders (save_pretrained) and the prompts as a jsonl file."""
    tokenizer = byte_level_tokenizer()
    for seed, (role, (hidden, layers)) in enumerate(SIZES.items()):
        sizes = {
            "hidden_size": hidden,
            "intermediate_size": 3 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": hidden // 4,
            "max_position_embeddings": 1024,
        }
        save_pair(folder / role, tokenizer, seed, build=partial(tiny_model, **sizes))
    lines = [json.dumps({"problem": p, "answer": "0"}) for p in PROBLEMS]
    (folder / "prompts.jsonl").write_text("\n".join(lines) + "\n")


def measure_step(step_fn) -> dict:
    """Wall time, peak RSS and its rise above the RSS before the step, of one call."""
    before = rss_mb()
    with PeakMemory("cpu", interval_s=0.002) as peak:
        start = time.perf_counter()
        step_fn()
        elapsed = time.perf_counter() - start
    return {"time_s": elapsed, "peak_mb": peak.mb, "step_mb": peak.mb - before}


def run_esr_lab(args: argparse.Namespace, folder: Path) -> list[dict]:
    """esr-lab's full-OPD step (`selector=all`), full fine-tuning, the batch in one micro-batch."""
    from esr_lab import train
    from esr_lab.config import ModelPair, Sampling
    from esr_lab.train_config import TrainConfig

    cfg = TrainConfig(
        pair=ModelPair(
            str(folder / "student"), str(folder / "teacher"), "cpu", "float32", instruction=""
        ),
        selector="all",
        n=None,
        steps=args.warmup + args.steps,
        batch=args.batch,
        micro_batch=args.batch,
        lr=args.lr,
        full_finetune=True,
        sampling=Sampling(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens),
        train_dataset=str(folder / "prompts.jsonl"),
        eval_dataset=str(folder / "prompts.jsonl"),
        eval_limit=1,
    )
    trainer = train.setup(cfg.resolved())
    rows = []
    for step in range(1, cfg.steps + 1):
        out = {}
        row = measure_step(lambda: out.update(train.train_step(trainer, step)))  # noqa: B023
        rows.append({**row, "tokens": out["rollout_tokens_mean"]})
    return rows[args.warmup :]


def run_trl(args: argparse.Namespace, folder: Path) -> list[dict]:
    """TRL's DistillationTrainer configured to the same step; a callback times each step."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    rows: list[dict] = []

    class StepMeter(TrainerCallback):
        """Generation happens inside the step (`_prepare_inputs`), so begin/end bracket it all."""

        def on_step_begin(self, *_, **__):
            self.before, self.start = rss_mb(), time.perf_counter()
            self.peak = PeakMemory("cpu", interval_s=0.002).__enter__()

        def on_step_end(self, *_, **__):
            elapsed = time.perf_counter() - self.start
            self.peak.__exit__(None, None, None)
            mb = self.peak.mb
            tokens = self.trainer._metrics["train"]["completions/mean_length"][-1]
            rows.append(
                {"time_s": elapsed, "peak_mb": mb, "step_mb": mb - self.before, "tokens": tokens}
            )

    prompts = [[{"role": "user", "content": p}] for p in PROBLEMS]
    config = DistillationConfig(
        output_dir=str(folder / "trl-out"),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        beta=1.0,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        shuffle_dataset=False,
        dataloader_num_workers=0,
        chat_template_kwargs={"enable_thinking": False},
        model_init_kwargs={"dtype": "float32"},
        teacher_model_init_kwargs={"dtype": "float32"},
        seed=0,
    )
    meter = StepMeter()
    trainer = DistillationTrainer(
        model=str(folder / "student"),
        teacher_model=str(folder / "teacher"),
        args=config,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=AutoTokenizer.from_pretrained(folder / "student"),
        callbacks=[meter],
    )
    meter.trainer = trainer
    trainer.train()
    return rows[args.warmup :]


def child(args: argparse.Namespace) -> None:
    """Measure one system and print its rows as one JSON line."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    runner = run_esr_lab if args.system == "esr-lab" else run_trl
    rows = runner(args, Path(args.world))
    print("ROWS " + json.dumps(rows))


def spawn(system: str, args: argparse.Namespace, world: Path) -> list[dict]:
    """This script again, in a fresh process, measuring one system."""
    command = [sys.executable, __file__, "--system", system, "--world", str(world)]
    for name in ("steps", "warmup", "batch", "max_new_tokens", "lr", "threads"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("ROWS ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{system} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][5:])


def summary_row(system: str, rows: list[dict], args: argparse.Namespace) -> dict:
    times = [r["time_s"] for r in rows]
    return {
        "benchmark": "vs_trl",
        "system": system,
        "setting": f"batch {args.batch}, {args.max_new_tokens} new tokens, fp32 cpu",
        "steps": len(rows),
        "rollout_tokens": statistics.mean(r["tokens"] for r in rows),
        "time_median_s": statistics.median(times),
        "time_min_s": min(times),
        "time_max_s": max(times),
        "peak_memory_mb": statistics.median(r["peak_mb"] for r in rows),
        "step_memory_mb": statistics.median(r["step_mb"] for r in rows),
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="measured steps per system")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each child")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "vs_trl.parquet")
    parser.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--world", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.system:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        build_world(Path(tmp))
        table = pd.DataFrame([summary_row(s, spawn(s, args, Path(tmp)), args) for s in SYSTEMS])
    print_ratios(table)
    write_table(args.out, table, "bench")
    print(f"written: {args.out}")


def print_ratios(table: pd.DataFrame) -> None:
    """The table, and esr-lab's time and memory as multiples of TRL's."""
    print(table.drop(columns=["benchmark"]).to_string(index=False, float_format="%.3f"))
    ours, theirs = (table[table.system == s].iloc[0] for s in SYSTEMS)
    for key in ("time_median_s", "peak_memory_mb", "step_memory_mb"):
        print(f"esr-lab / TRL {key}: {ours[key] / theirs[key]:.2f}x")


if __name__ == "__main__":
    main()
