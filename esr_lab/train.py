"""On-policy distillation: one exact training step, and the resumable loop around it.

A step is: the student samples a response per prompt (ESR stops sampling after N tokens, full
OPD runs to the budget) -> teacher and student score the same tokens, each after its own
rendering of the prompt -> a selector picks the positions that carry loss -> per-position
divergence, reduced as the paper's equation (sum over a sequence's positions, mean over
sequences) -> one optimizer step. ESR differs from full OPD only in `max_new_tokens` and the
first-N selector, so with N >= the rollout length the two steps are the same computation.

Work is split into micro-batches of rows with gradient accumulation (weights chosen so the
accumulated gradient equals the one-batch gradient), because full-vocabulary logits of 16
rollouts of thousands of tokens do not fit at once.
"""

from __future__ import annotations

import math
import random
import resource
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file

from esr_lab import divergences, evaluate, selection
from esr_lab.config import ModelPair, Sampling, default_dataset
from esr_lab.data import Problem, load_problems
from esr_lab.errors import TrainingDiverged, UserError
from esr_lab.memory import PeakMemory
from esr_lab.models import fingerprint, load_tokenizer
from esr_lab.policy import Policy, load_policy
from esr_lab.rollout import row_seed
from esr_lab.scoring import ScoringBatch, build_batch, response_logits, shared_vocab_size
from esr_lab.toy import TOY_WORLDS

# peft asks transformers a deprecated question on every wrap; it is not ours to answer.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

STAT_SELECTORS = set(selection.SELECTORS) - {"first_n", "all", "random"}
PHASES = ("generation", "teacher", "training")


@dataclass(frozen=True)
class TrainConfig:
    pair: ModelPair = field(default_factory=ModelPair)
    n: int | None = 100  # ESR window; None with selector "all" is full OPD
    selector: str = "first_n"
    budget: int | None = None  # positions per sequence for top-k / random selectors
    progressive: tuple[int, int] | None = None  # (n_start, n_end): N grows over training
    loss: str = "reverse_kl"
    loss_temperature: float = 1.0
    jsd_beta: float = 0.5
    topk: int = 32
    reduction: str = "sequence_sum"
    mask_special_tokens: bool = False
    steps: int = 200
    batch: int = 16
    rollouts_per_prompt: int = 1
    micro_batch: int = 4
    lr: float = 5e-5
    max_grad_norm: float = 1.0
    lora_rank: int = 32
    lora_alpha: int = 64
    full_finetune: bool = False
    sampling: Sampling = field(default_factory=Sampling)
    train_dataset: str | None = None
    train_limit: int = 3200
    eval_dataset: str | None = None
    eval_limit: int | None = None
    eval_samples: int = 4
    eval_every: int = 50
    extraction: str = "last_boxed"
    seed: int = 0
    collapse_drop: float = 0.2  # relative drop from the peak that flags a collapse

    @property
    def label(self) -> str:
        """A short name for tables: esr-100, full, progressive-5-200, top_rkl-100."""
        if self.progressive:
            return f"progressive-{self.progressive[0]}-{self.progressive[1]}"
        if self.selector == "first_n":
            return f"esr-{self.n}"
        if self.selector == "all":
            return "full"
        return f"{self.selector}-{self.budget}"

    def rollout_tokens(self, step: int) -> int:
        """ESR stops sampling at N; every other selector sees full-length rollouts."""
        if self.progressive:
            return selection.progressive_n(step, self.steps, *self.progressive)
        if self.selector == "first_n":
            return min(self.n, self.sampling.max_new_tokens)
        return self.sampling.max_new_tokens

    def window(self, step: int) -> int | None:
        return self.rollout_tokens(step) if self.selector == "first_n" else None

    def resolved(self) -> TrainConfig:
        """Defaults that depend on the student filled in; every bad value a one-line error."""
        _check_positive(
            steps=self.steps,
            batch=self.batch,
            micro_batch=self.micro_batch,
            rollouts_per_prompt=self.rollouts_per_prompt,
            eval_every=self.eval_every,
            eval_samples=self.eval_samples,
        )
        if self.loss not in divergences.LOSSES:
            raise UserError(f"unknown loss '{self.loss}'; use {', '.join(divergences.LOSSES)}")
        if self.selector not in selection.SELECTORS:
            raise UserError(
                f"unknown selector '{self.selector}'; use {', '.join(selection.SELECTORS)}"
            )
        if self.selector == "first_n" and not self.progressive and (self.n is None or self.n < 1):
            raise UserError(f"--n must be at least 1 (the ESR window in tokens), got {self.n}")
        if self.selector not in ("first_n", "all"):
            if self.budget is None or self.budget < 1:
                raise UserError(
                    f"selector '{self.selector}' needs --budget >= 1, got {self.budget}"
                )
            if self.budget > self.sampling.max_new_tokens:
                raise UserError(
                    f"--budget {self.budget} is larger than the rollout "
                    f"(--max-new-tokens {self.sampling.max_new_tokens})"
                )
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        world = default_dataset(self.pair.student)
        return replace(
            self,
            train_dataset=self.train_dataset or (world if world != "math500" else "numinamath"),
            eval_dataset=self.eval_dataset or world,
        )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            option = "--" + name.replace("_", "-")
            raise UserError(f"{option} must be at least 1, got {value}")


@dataclass
class Trainer:
    """Everything a step needs; built once per run."""

    cfg: TrainConfig
    student: Policy
    teacher: Policy
    optimizer: torch.optim.Optimizer
    train_problems: list[Problem]
    eval_problems: list[Problem]
    shared_vocab: int
    timings: dict[str, float] = field(default_factory=dict)
    peaks_mb: dict[str, float] = field(default_factory=dict)

    @property
    def model(self):
        return self.student.loaded.model


def load_datasets(cfg: TrainConfig) -> tuple[list[Problem], list[Problem]]:
    """Training prompts (a toy world's own train split) and evaluation problems."""
    split = "train" if cfg.train_dataset in TOY_WORLDS else None
    train_problems = load_problems(cfg.train_dataset, limit=cfg.train_limit, split=split)
    return train_problems, load_problems(cfg.eval_dataset, limit=cfg.eval_limit)


def check_inputs(cfg: TrainConfig) -> None:
    """Fail on a missing dataset or model, or mismatched vocabularies, without loading weights."""
    load_datasets(cfg)
    shared_vocab_size(load_tokenizer(cfg.pair.student), load_tokenizer(cfg.pair.teacher))


def setup(cfg: TrainConfig) -> Trainer:
    """Load data and both models, wrap the student for LoRA or full fine-tuning."""
    train_problems, eval_problems = load_datasets(cfg)
    student = load_policy(cfg.pair.student, cfg.pair)
    teacher = load_policy(cfg.pair.teacher, cfg.pair)
    shared = shared_vocab_size(student.tokenizer, teacher.tokenizer)
    torch.manual_seed(cfg.seed)  # LoRA's initial A matrices
    if not cfg.full_finetune:
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        student.loaded.model = get_peft_model(student.loaded.model, lora)
    params = [p for p in student.loaded.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    order = list(range(len(train_problems)))
    random.Random(cfg.seed).shuffle(order)
    shuffled = [train_problems[i] for i in order]
    return Trainer(cfg, student, teacher, optimizer, shuffled, eval_problems, shared)


@contextmanager
def phase(trainer: Trainer, name: str) -> Iterator[None]:
    """Add a block's wall time (GPU work included) to the step's timing of `name`, and keep
    the highest peak memory of its blocks (finding 8 reports both per phase)."""
    device = trainer.student.loaded.device
    with PeakMemory(device) as peak:  # synchronises CUDA on entry and exit
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
    trainer.timings[name] = trainer.timings.get(name, 0.0) + elapsed
    trainer.peaks_mb[name] = max(trainer.peaks_mb.get(name, 0.0), peak.mb)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated since the last reset; CPU: the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_problems(trainer: Trainer, step: int) -> list[Problem]:
    """The step's prompts: consecutive slices of the seeded shuffle, wrapping around."""
    batch, problems = trainer.cfg.batch, trainer.train_problems
    return [problems[(step * batch + i) % len(problems)] for i in range(batch)]


def rollout(trainer: Trainer, step: int) -> tuple[list[Problem], list[list[int]]]:
    """Student samples for the step's prompts; responses keep their stop token."""
    cfg = trainer.cfg
    rows = [(p, r) for p in step_problems(trainer, step) for r in range(cfg.rollouts_per_prompt)]
    prompts = [trainer.student.prompt_ids(p.problem) for p, _ in rows]
    seeds = [row_seed(cfg.seed, step, p.id, r) for p, r in rows]
    sampling = replace(cfg.sampling, max_new_tokens=cfg.rollout_tokens(step))
    trainer.model.eval()
    with phase(trainer, "generation"):
        rollouts = trainer.student.engine.generate(prompts, seeds, sampling)
    return [p for p, _ in rows], rollouts.completion_ids


def loss_mask(trainer: Trainer, batch: ScoringBatch) -> torch.Tensor:
    """Response positions that may carry loss: real tokens the teacher can score."""
    mask_BT = batch.response_mask_BT & (batch.response_ids_BT < trainer.shared_vocab)
    if trainer.cfg.mask_special_tokens:
        tokenizer = trainer.student.tokenizer
        special = set(tokenizer.all_special_ids) - set(trainer.student.loaded.stop_ids)
        mask_BT &= ~torch.isin(batch.response_ids_BT, torch.tensor(sorted(special) or [-1]))
    return mask_BT


def select(trainer, step, mask_BT, stats) -> torch.Tensor:
    """The selector's positions for these rows (stats only for score-based selectors)."""
    cfg = trainer.cfg
    generator = torch.Generator().manual_seed(row_seed(cfg.seed, step, "select"))
    chosen = selection.select_positions(
        cfg.selector,
        mask_BT.cpu(),
        n=cfg.window(step),
        budget=cfg.budget,
        rkl_BT=_cpu(stats, "reverse_kl"),
        student_entropy_BT=_cpu(stats, "student_entropy"),
        teacher_entropy_BT=_cpu(stats, "teacher_entropy"),
        generator=generator,
    )
    return chosen.to(mask_BT.device) & mask_BT


def _cpu(stats: dict | None, key: str) -> torch.Tensor | None:
    return None if stats is None else stats[key].float().cpu()


def per_position_loss(trainer, s_logits, t_logits, tokens_BT) -> torch.Tensor:
    """The configured divergence per position; reverse KL through the memory-lean path."""
    cfg = trainer.cfg
    if cfg.loss == "reverse_kl":
        return divergences.chunked_reverse_kl(s_logits, t_logits, temperature=cfg.loss_temperature)
    logp = {}
    if cfg.loss == "sampled_token":
        logp = {
            "student_logp_BT": torch.log_softmax(s_logits.float(), -1)
            .gather(-1, tokens_BT[..., None])
            .squeeze(-1),
            "teacher_logp_BT": torch.log_softmax(t_logits.float(), -1)
            .gather(-1, tokens_BT[..., None])
            .squeeze(-1),
        }
    return divergences.per_position_loss(
        cfg.loss,
        s_logits,
        t_logits,
        temperature=cfg.loss_temperature,
        beta=cfg.jsd_beta,
        topk=cfg.topk,
        **logp,
    )


def train_step(trainer: Trainer, step: int) -> dict[str, float]:
    """One OPD/ESR update; returns the step's metrics."""
    cfg, device = trainer.cfg, trainer.student.loaded.device
    trainer.timings, trainer.peaks_mb = {}, {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    problems, responses = rollout(trainer, step)
    student_batch = build_batch(
        [trainer.student.prompt_ids(p.problem) for p in problems],
        responses,
        trainer.student.tokenizer.pad_token_id,
    )
    teacher_batch = build_batch(
        [trainer.teacher.prompt_ids(p.problem) for p in problems],
        responses,
        trainer.teacher.tokenizer.pad_token_id,
    )
    full_mask_BT = loss_mask(trainer, student_batch)
    total_selected = int(select(trainer, step, full_mask_BT, _zero_stats(full_mask_BT)).sum())
    trainer.model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    totals = {"loss": 0.0, "kl_selected": 0.0, "kl_all": 0.0, "selected": 0, "tokens": 0}
    rows = len(responses)
    for start in range(0, rows, cfg.micro_batch):
        rows_mb = slice(start, min(start + cfg.micro_batch, rows))
        _micro_step(
            trainer,
            step,
            student_batch.rows(rows_mb).to(device),
            teacher_batch.rows(rows_mb).to(device),
            rows,
            total_selected,
            totals,
        )
    with phase(trainer, "training"):
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        if not (math.isfinite(totals["loss"]) and math.isfinite(grad_norm)):
            raise TrainingDiverged(
                f"step {step}: loss {totals['loss']} / grad norm {grad_norm} is not finite; "
                "stopped, the last good checkpoint is kept"
            )
        trainer.optimizer.step()
    return _step_metrics(trainer, step, totals, grad_norm, responses, device)


def _zero_stats(mask_BT: torch.Tensor) -> dict[str, torch.Tensor]:
    """Placeholder scores: a top-k selector picks as many positions whatever the scores."""
    zeros = torch.zeros(mask_BT.shape)
    return {"reverse_kl": zeros, "student_entropy": zeros, "teacher_entropy": zeros}


def _micro_step(trainer, step, s_batch, t_batch, rows, total_selected, totals) -> None:
    """Forward and backward over a few rows, weighted so gradients add up to the batch's."""
    cfg, vocab = trainer.cfg, trainer.shared_vocab
    with phase(trainer, "teacher"), torch.no_grad():
        t_logits = response_logits(trainer.teacher.loaded.model, t_batch)[..., :vocab]
    with phase(trainer, "training"):
        s_logits = response_logits(trainer.model, s_batch)[..., :vocab]
        mask_BT = loss_mask(trainer, s_batch)
        stats = None
        if cfg.selector in STAT_SELECTORS or cfg.loss != "reverse_kl":
            stats = divergences.chunked_position_stats(s_logits.detach(), t_logits)
        selected_BT = select(trainer, step, mask_BT, stats)
        per_pos_BT = per_position_loss(trainer, s_logits, t_logits, s_batch.response_ids_BT)
        if cfg.reduction == "sequence_sum":
            weight = s_batch.response_ids_BT.shape[0] / rows
        else:
            weight = int(selected_BT.sum()) / max(total_selected, 1)
        loss = divergences.reduce_loss(per_pos_BT, selected_BT, cfg.reduction) * weight
        loss.backward()
    kl_BT = per_pos_BT.detach() if stats is None else stats["reverse_kl"]
    totals["loss"] += float(loss.detach())
    totals["kl_selected"] += float(kl_BT[selected_BT].sum())
    totals["kl_all"] += float(kl_BT[mask_BT].sum())
    totals["selected"] += int(selected_BT.sum())
    totals["tokens"] += int(mask_BT.sum())


def _step_metrics(trainer, step, totals, grad_norm, responses, device) -> dict[str, float]:
    times = {f"time_{k}_s": trainer.timings.get(k, 0.0) for k in PHASES}
    return {
        "step": step,
        "loss": totals["loss"],
        "kl_selected": totals["kl_selected"] / max(totals["selected"], 1),
        "kl_all": totals["kl_all"] / max(totals["tokens"], 1),
        "grad_norm": grad_norm,
        "rollout_tokens_mean": sum(map(len, responses)) / len(responses),
        "selected_tokens_mean": totals["selected"] / len(responses),
        **times,
        "time_total_s": sum(times.values()),
        **{f"peak_{k}_mb": trainer.peaks_mb.get(k, 0.0) for k in PHASES},
        # CUDA's counter was reset by each phase: the step's peak is the highest phase's.
        "peak_memory_mb": max(peak_memory_mb(device), *trainer.peaks_mb.values()),
    }


def evaluate_student(trainer: Trainer, step: int) -> tuple[dict[str, float], pd.DataFrame]:
    """avg@k, pass@k, maj@k and the collapse signature of the current student."""
    cfg = trainer.cfg
    trainer.model.eval()
    samples = evaluate.sample_answers(
        trainer.student,
        trainer.eval_problems,
        cfg.eval_samples,
        cfg.sampling,
        (cfg.seed, "eval", step),
    )
    graded = evaluate.grade_samples(samples, trainer.eval_problems, cfg.extraction)
    return {"step": step, **evaluate.accuracy_metrics(graded)}, graded


def config_dict(cfg: TrainConfig) -> dict:
    """The run's config as saved; the models' fingerprints make a rebuilt model a new run."""
    config = asdict(cfg)
    config["label"] = cfg.label
    config["fingerprints"] = {
        role: fingerprint(getattr(cfg.pair, role)) for role in ("student", "teacher")
    }
    return config


def load_checkpoint_weights(trainer: Trainer, folder: Path) -> None:
    """Put a checkpoint's trainable weights back into the student."""
    if trainer.cfg.full_finetune:
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(folder, dtype=trainer.student.loaded.dtype)
        trainer.model.load_state_dict(saved.state_dict())
    else:
        set_peft_model_state_dict(trainer.model, load_file(folder / "adapter_model.safetensors"))
