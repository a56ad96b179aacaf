"""On-policy distillation: the trainer a run builds once, and one exact training step.

A step is: the student samples a response per prompt (ESR stops sampling after N tokens, full
OPD runs to the budget) -> teacher and student score the same tokens, each after its own
rendering of the prompt -> a selector picks the positions that carry loss -> per-position
divergence, reduced as the paper's equation (sum over a sequence's positions, mean over
sequences) -> one optimizer step. ESR differs from full OPD only in `max_new_tokens` and the
first-N selector, so with N >= the rollout length the two steps are the same computation.

The settings are a `train_config.TrainConfig`; the steps, evaluations, checkpoints and resume
around the step are `loop.py`.

Work is split into micro-batches of rows with gradient accumulation (weights chosen so the
accumulated gradient equals the one-batch gradient), because full-vocabulary logits of 16
rollouts of thousands of tokens do not fit at once.
"""

from __future__ import annotations

import math
import random
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
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from esr_lab import (
    crosstok,
    distributed,
    divergences,
    lean,
    metrics,
    position_terms,
    selection,
    tasks,
)
from esr_lab.choices import SAMPLED_LOSSES, SEEDED_SELECTORS, SELECTORS
from esr_lab.config import PHASES
from esr_lab.data import Problem, load_problems
from esr_lab.errors import TrainingDiverged, UserError
from esr_lab.memory import PeakMemory, peak_memory_mb
from esr_lab.models import fingerprint, load_tokenizer
from esr_lab.policy import Policy, load_policy
from esr_lab.rollout import sampling_logprobs
from esr_lab.scoring import (
    ScoringBatch,
    build_batch,
    response_hidden,
    response_logits,
    shared_vocab_size,
    token_logprobs,
    vocabularies_agree,
)
from esr_lab.seeding import row_seed
from esr_lab.toy import TOY_WORLDS
from esr_lab.train_config import TrainConfig

# peft asks transformers a deprecated question on every wrap; it is not ours to answer.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

# Selectors that rank positions by a per-position statistic of full-length rollouts.
STAT_SELECTORS = set(SELECTORS) - {"first_n", "all", "random"}


@dataclass
class Trainer:
    """Everything a step needs; built once per run."""

    cfg: TrainConfig
    student: Policy
    teacher: Policy
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_problems: list[Problem]
    eval_problems: list[Problem]
    shared_vocab: int  # leading ids both models read alike (all student ids for a cross pair)
    cross_vocab: crosstok.SharedVocab | None  # set when the tokenizers differ: score via text
    fused: bool  # losses from hidden states (lean.py) rather than from full logits
    group: distributed.Group = field(default_factory=distributed.Group)
    timings: dict[str, float] = field(default_factory=dict)
    peaks_mb: dict[str, float] = field(default_factory=dict)

    @property
    def model(self):
        return self.student.loaded.model

    @property
    def teacher_model(self):
        return self.teacher.loaded.model


def load_datasets(cfg: TrainConfig) -> tuple[list[Problem], list[Problem]]:
    """Training prompts (a toy world's own train split) and the task's evaluation problems.
    OPD needs no gold answer to train on, so code and function-calling prompts may lack one."""
    train_problems = load_train_problems(cfg)
    if cfg.task == "math":
        return train_problems, load_problems(cfg.eval_dataset, limit=cfg.eval_limit)
    eval_problems = tasks.load_task_problems(
        cfg.task, cfg.eval_dataset, cfg.eval_limit, cfg.protocol
    )
    return train_problems, eval_problems


def load_train_problems(cfg: TrainConfig) -> list[Problem]:
    """The training prompts: the first `train_limit` of the set (math rows with a gold answer),
    or (train_sample "random", the released code's `random.sample(dataset, 3200)` after
    `random.seed(42)`) a sample of `train_limit` drawn from every row of the set, answer or not,
    with `random.Random(seed)`: the same seed draws the same problems in the same order."""
    split = "train" if cfg.train_dataset in TOY_WORLDS else None
    if cfg.train_sample == "first":
        graded = cfg.task == "math"  # math rows need a gold answer; others have none
        return load_problems(cfg.train_dataset, cfg.train_limit, split, require_answer=graded)
    every = load_problems(cfg.train_dataset, split=split, require_answer=False)
    return random.Random(cfg.seed).sample(every, min(cfg.train_limit, len(every)))


def check_inputs(cfg: TrainConfig) -> None:
    """Fail on a missing model, a pair without enough shared vocabulary or a missing dataset,
    without loading weights. Models first: they are the cheaper check and the likelier typo."""
    vocabularies(load_tokenizer(cfg.pair.student), load_tokenizer(cfg.pair.teacher), cfg)  # models
    load_datasets(cfg)


def vocabularies(student_tokenizer, teacher_tokenizer, cfg: TrainConfig):
    """(ids compared directly, shared strings or None): a pair whose tokenizers agree on their
    common ids compares those ids; any other pair is scored through text (crosstok.py)."""
    if vocabularies_agree(student_tokenizer, teacher_tokenizer):
        if cfg.loss == "uld":
            raise UserError("--loss uld is for pairs with different tokenizers; these share one")
        return shared_vocab_size(student_tokenizer, teacher_tokenizer), None
    if position_terms.active(cfg):
        raise UserError(
            "--position-weights reads the sampled tokens' log-probs and --eopd-coef the "
            "teacher's entropy over its whole vocabulary, of one vocabulary; these models have "
            "different tokenizers"
        )
    if cfg.cross_clamp and cfg.loss != "reverse_kl":
        raise UserError(
            f"--cross-clamp clamps the reverse KL of a pair with different tokenizers; "
            f"--loss {cfg.loss} has no such clamp (use --no-cross-clamp)"
        )
    strings = crosstok.shared_vocab(student_tokenizer, teacher_tokenizer, cfg.min_vocab_overlap)
    return len(student_tokenizer), strings


def lr_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    """transformers' schedules, as the released code uses: warm-up over int(ratio * steps)
    steps (the first step runs at lr 0 when there is a warm-up), then constant or a cosine
    decay to 0 at the last step."""
    warmup = int(cfg.steps * cfg.warmup_ratio)
    if cfg.lr_schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, cfg.steps)
    return get_constant_schedule_with_warmup(optimizer, warmup)


def setup(cfg: TrainConfig) -> Trainer:
    """Load data and both models, wrap the student for LoRA or full fine-tuning.

    Full fine-tuning keeps float32 master weights under a half-precision compute dtype (see
    models.LoadedModel); LoRA adapters are float32 already (peft casts them up).
    """
    train_problems, eval_problems = load_datasets(cfg)
    student = load_policy(cfg.pair.student, cfg.pair, master_weights=cfg.full_finetune)
    teacher = load_policy(cfg.pair.teacher, cfg.pair)
    shared, cross_vocab = vocabularies(student.tokenizer, teacher.tokenizer, cfg)
    torch.manual_seed(cfg.seed)  # LoRA's initial A matrices
    if not cfg.full_finetune:
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        student.loaded.model = get_peft_model(student.loaded.model, lora)
    if cfg.gradient_checkpointing:
        lean.enable_gradient_checkpointing(student.loaded.model)
    params = [p for p in student.loaded.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = list(range(len(train_problems)))
    if cfg.train_sample == "first":  # a random sample is in random order already
        random.Random(cfg.seed).shuffle(order)
    shuffled = [train_problems[i] for i in order]
    return Trainer(
        cfg,
        student,
        teacher,
        optimizer,
        lr_scheduler(cfg, optimizer),
        shuffled,
        eval_problems,
        shared,
        cross_vocab,
        cfg.fused_loss and fusable(cfg, student, teacher, cross_vocab),
        distributed.group(),
    )


def fusable(cfg: TrainConfig, student: Policy, teacher: Policy, cross_vocab) -> bool:
    """Whether the fused losses compute exactly this run's loss: one vocabulary, plain
    linear heads, and no top-p / top-k truncation to put into the sampled-token log-probs."""
    truncated = cfg.sampling.top_p < 1 or cfg.sampling.top_k > 0
    if cross_vocab is not None or (cfg.loss in SAMPLED_LOSSES and truncated):
        return False
    return all(_plain_head(side.loaded) for side in (student, teacher))


def _plain_head(loaded) -> bool:
    """An output head without bias or logit soft-capping (Gemma-2 caps its logits)."""
    head = loaded.model.get_output_embeddings()
    softcap = getattr(loaded.text_config, "final_logit_softcapping", None)
    return getattr(head, "bias", None) is None and not softcap


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


def step_problems(trainer: Trainer, step: int) -> list[Problem]:
    """The step's prompts: consecutive slices of the seeded shuffle, wrapping around."""
    batch, problems = trainer.cfg.batch, trainer.train_problems
    return [problems[(step * batch + i) % len(problems)] for i in range(batch)]


def step_rows(trainer: Trainer, step: int) -> list[tuple[Problem, int]]:
    """The step's (prompt, sample) rows, all of them: batch x rollouts_per_prompt."""
    samples = range(trainer.cfg.rollouts_per_prompt)
    return [(p, r) for p in step_problems(trainer, step) for r in samples]


def rollout(trainer: Trainer, step: int) -> tuple[list[Problem], list[list[int]]]:
    """This process's rows of the step (all of them for one process), sampled with the rows'
    own seeds, as they will be scored: with their stop token, or (loss_on_stop_token off)
    without their trailing stop and special tokens."""
    cfg = trainer.cfg
    rows = step_rows(trainer, step)
    rows = rows[trainer.group.shard(len(rows))]
    prompts = [trainer.student.prompt_ids(p.problem) for p, _ in rows]
    seeds = [row_seed(cfg.seed, step, p.id, r) for p, r in rows]
    sampling = replace(cfg.sampling, max_new_tokens=cfg.rollout_tokens(step))
    trainer.model.eval()
    with phase(trainer, "generation"):
        sync_engine(trainer)
        rollouts = trainer.student.engine.generate(prompts, seeds, sampling)
    responses = rollouts.completion_ids
    if not cfg.loss_on_stop_token:
        strip = trainer.student.strip_special_tail
        responses = [strip(ids, cfg.strip_tokens == "special") for ids in responses]
    return [p for p, _ in rows], responses


def sync_engine(trainer: Trainer) -> None:
    """Hand the sampler the student's weights after the optimizer steps taken so far (a
    vLLM engine copies them; the transformers engine samples the live model)."""
    trainer.student.engine.sync(trainer.model, trainer.scheduler.last_epoch)


def teacher_prompt_ids(trainer: Trainer, problem: Problem) -> list[int]:
    """What the teacher reads before the response: its own rendering of the problem, or (as the
    released code) the student's prompt followed by the teacher's no-think marker, as the
    student's ids or, for a pair with different tokenizers, re-tokenized from its text."""
    if trainer.cfg.teacher_prompt == "own":
        return trainer.teacher.prompt_ids(problem.problem)
    prompt = trainer.student.prompt_ids(problem.problem)
    if trainer.cross_vocab is not None:
        text = trainer.student.tokenizer.decode(prompt)
        prompt = trainer.teacher.tokenizer(text, add_special_tokens=False).input_ids
    return prompt + trainer.teacher.no_think_ids


def student_prompt_ids(trainer: Trainer, problem: Problem) -> list[int]:
    """What the student is scored on before the response: the prompt it sampled from, or (as
    the released code, `full_ids = prompt_ids + nothink_ids + response_ids`) that prompt then
    the teacher's no-think marker ids, which the student never saw while sampling. They are
    the teacher's ids, put in as they are: for Qwen2.5-Math under Qwen3 they name untrained
    embedding rows past the student's tokenizer. For a pair with different tokenizers, whose
    ids mean nothing to each other, the marker's text goes in, tokenized by the student (as
    `teacher_prompt_ids` carries the student's prompt over). A teacher without a marker adds
    nothing."""
    prompt = trainer.student.prompt_ids(problem.problem)
    if trainer.cfg.student_context == "own":
        return prompt
    marker = trainer.teacher.no_think_ids
    if trainer.cross_vocab is not None and marker:
        text = trainer.teacher.tokenizer.decode(marker)
        marker = trainer.student.tokenizer(text, add_special_tokens=False).input_ids
    rows = trainer.model.get_input_embeddings().weight.shape[0]
    if any(i >= rows for i in marker):
        raise UserError(
            f"--student-context teacher-marker: the teacher's marker ids {marker} lie past the "
            f"student's {rows} embedding rows; use --student-context own"
        )
    return prompt + marker


def student_view(trainer: Trainer, problems: list[Problem], responses: list[list[int]]):
    """The student's inputs: its context (student_prompt_ids), then the response ids."""
    prompts = [student_prompt_ids(trainer, p) for p in problems]
    return build_batch(prompts, responses, trainer.student.tokenizer.pad_token_id)


def teacher_view(trainer: Trainer, problems: list[Problem], responses: list[list[int]]):
    """The teacher's inputs: the same response ids after its prompts, or (different
    tokenizers) a crosstok.CrossBatch holding its own tokens of the response text."""
    prompts = [teacher_prompt_ids(trainer, p) for p in problems]
    if trainer.cross_vocab is None:
        return build_batch(prompts, responses, trainer.teacher.tokenizer.pad_token_id)
    student_tok, teacher_tok = trainer.student.tokenizer, trainer.teacher.tokenizer
    neighbour = trainer.cfg.cross_unaligned == "neighbour"
    return crosstok.build_cross_batch(
        student_tok, teacher_tok, prompts, responses, trainer.cross_vocab, neighbour
    )


def loss_mask(trainer: Trainer, batch: ScoringBatch, teacher_batch=None) -> torch.Tensor:
    """Response positions that may carry loss: real tokens the teacher can score (for a pair
    with different tokenizers, the positions aligned to a teacher token)."""
    mask_BT = batch.response_mask_BT & (batch.response_ids_BT < trainer.shared_vocab)
    if isinstance(teacher_batch, crosstok.CrossBatch):
        mask_BT &= teacher_batch.aligned_BT.to(mask_BT.device)
    if trainer.cfg.mask_special_tokens:
        tokenizer = trainer.student.tokenizer
        stops = trainer.student.loaded.stop_ids(trainer.cfg.sampling.stop_at_end_of_turn)
        special = sorted(set(tokenizer.all_special_ids) - set(stops)) or [-1]
        ids = torch.tensor(special, device=batch.response_ids_BT.device)
        mask_BT &= ~torch.isin(batch.response_ids_BT, ids)
    return mask_BT


def loss_positions(trainer, step, mask_BT, stats, first_row: int = 0) -> torch.Tensor:
    """The selector's positions for these rows (stats only for score-based selectors).

    `first_row` is the index of the first of these rows in the step's batch: random selection
    draws each row's noise from that row's own seed, whatever micro-batch it falls in.
    """
    cfg = trainer.cfg
    generators = (
        [
            torch.Generator().manual_seed(row_seed(cfg.seed, step, "select", first_row + i))
            for i in range(mask_BT.shape[0])
        ]
        if cfg.selector in SEEDED_SELECTORS
        else None
    )
    chosen = selection.select_positions(
        cfg.selector,
        mask_BT.cpu(),
        n=cfg.window(step),
        budget=cfg.budget,
        rkl_BT=_cpu(stats, "reverse_kl"),
        fkl_BT=_cpu(stats, "forward_kl"),
        student_entropy_BT=_cpu(stats, "student_entropy"),
        teacher_entropy_BT=_cpu(stats, "teacher_entropy"),
        generators=generators,
        noise_width=cfg.sampling.max_new_tokens,
        tip_power=cfg.tip_power,
    )
    return chosen.to(mask_BT.device) & mask_BT


def _cpu(stats: dict | None, key: str) -> torch.Tensor | None:
    return None if stats is None else stats[key].float().cpu()


def sampled_token_logps(trainer, s_logits, t_logits, tokens_BT) -> dict[str, torch.Tensor]:
    """log-probs of the sampled tokens for the policy-gradient losses, on-policy: the student's
    under the distribution it sampled from (temperature, then nucleus), the teacher's at the
    same temperature, so the estimate targets KL(student_T || teacher_T)."""
    sampling = trainer.cfg.sampling
    student_BTV = sampling_logprobs(
        s_logits, sampling.temperature, sampling.top_p, sampling.top_k, sampled_B=tokens_BT
    )
    return {
        "student_logp_BT": student_BTV.gather(-1, tokens_BT[..., None]).squeeze(-1),
        "teacher_logp_BT": token_logprobs(t_logits.float() / sampling.temperature, tokens_BT),
    }


def per_position_loss(trainer, s_logits, t_logits, tokens_BT, loss: str) -> torch.Tensor:
    """The divergence `loss` per position; reverse KL through the memory-lean path."""
    cfg = trainer.cfg
    if loss == "reverse_kl":
        return divergences.chunked_reverse_kl(s_logits, t_logits, temperature=cfg.loss_temperature)
    logp = {}
    if loss in SAMPLED_LOSSES:
        logp = sampled_token_logps(trainer, s_logits, t_logits, tokens_BT)
    return divergences.per_position_loss(
        loss,
        s_logits,
        t_logits,
        temperature=cfg.loss_temperature,
        beta=cfg.jsd_beta,
        topk=cfg.topk,
        power_alpha=cfg.power_alpha,
        **logp,
    )


def train_step(trainer: Trainer, step: int) -> dict[str, float]:
    """One OPD/ESR update; returns the step's metrics.

    With several processes each takes its share of the rows; counts that normalise the loss
    and the gradients are summed over all of them, so the update is the one-process update.
    """
    cfg, device, group = trainer.cfg, trainer.student.loaded.device, trainer.group
    trainer.timings, trainer.peaks_mb = {}, {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first_row = group.shard(len(step_rows(trainer, step))).start
    problems, responses = rollout(trainer, step)
    student_batch = student_view(trainer, problems, responses)
    teacher_batch = teacher_view(trainer, problems, responses)
    full_mask_BT = loss_mask(trainer, student_batch, teacher_batch)
    chosen_BT = loss_positions(trainer, step, full_mask_BT, _zero_stats(full_mask_BT), first_row)
    local = divergences.reduction_counts(chosen_BT)
    norms = dict(zip(local, group.sum(list(local.values())), strict=True))
    totals = {"loss": 0.0, "kl_selected": 0.0, "kl_all": 0.0, "selected": 0, "tokens": 0}
    trainer.model.train()
    torch.manual_seed(row_seed(cfg.seed, step, "dropout", group.rank))  # resumable, exact
    trainer.optimizer.zero_grad(set_to_none=True)
    rows = len(responses)
    for start in range(0, rows, cfg.micro_batch):
        rows_mb = slice(start, min(start + cfg.micro_batch, rows))
        _micro_step(
            trainer,
            step,
            student_batch.rows(rows_mb).to(device),
            teacher_batch.rows(rows_mb).to(device),
            first_row + start,
            norms[cfg.reduction],
            totals,
        )
    totals["response_tokens"] = sum(map(len, responses))
    totals = dict(zip(totals, group.sum(list(totals.values())), strict=True))
    with phase(trainer, "training"):
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        group.sum_gradients(params)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        if not (math.isfinite(totals["loss"]) and math.isfinite(grad_norm)):
            raise TrainingDiverged(
                f"step {step}: loss {totals['loss']} / grad norm {grad_norm} is not finite; "
                "stopped, the last good checkpoint is kept"
            )
        lr = trainer.scheduler.get_last_lr()[0]
        trainer.optimizer.step()
        trainer.scheduler.step()
    return _step_metrics(trainer, step, totals, grad_norm, lr, norms["sequence_sum"], device)


def _zero_stats(mask_BT: torch.Tensor) -> dict[str, torch.Tensor]:
    """Placeholder scores: a top-k selector picks as many positions whatever the scores."""
    zeros = torch.zeros(mask_BT.shape)
    names = ("reverse_kl", "forward_kl", "student_entropy", "teacher_entropy")
    return dict.fromkeys(names, zeros)


def _micro_step(trainer, step, s_batch, t_batch, first_row, batch_count, totals) -> None:
    """Forward and backward over a few rows, weighted so gradients add up to the batch's."""
    cfg = trainer.cfg
    tokens_BT = s_batch.response_ids_BT.clamp(max=trainer.shared_vocab - 1)  # masked if beyond
    with phase(trainer, "teacher"), torch.no_grad(), trainer.teacher.loaded.autocast():
        t_out = teacher_outputs(trainer, t_batch)
    with phase(trainer, "training"):
        with trainer.student.loaded.autocast():
            s_out = student_outputs(trainer, s_batch)
        mask_BT = loss_mask(trainer, s_batch, t_batch)
        stats = None
        if needs_stats(cfg):
            stats = pair_stats(trainer, s_out.detach(), t_out, t_batch, tokens_BT)
        selected_BT = loss_positions(trainer, step, mask_BT, stats, first_row)
        per_pos_BT = pair_loss(trainer, s_out, t_out, t_batch, tokens_BT)
        per_pos_BT = with_position_terms(trainer, per_pos_BT, s_out, t_out, t_batch, tokens_BT,
                                         stats, mask_BT)  # fmt: skip
        cap = crosstok.ROW_LOSS_CAP if cross_clamped(trainer) else None
        loss = divergences.micro_batch_loss(
            per_pos_BT, selected_BT, cfg.reduction, batch_count, cap
        )
        loss.backward()
    kl_BT = per_pos_BT.detach() if stats is None else stats["reverse_kl"]
    totals["loss"] += float(loss.detach())
    totals["kl_selected"] += float(kl_BT[selected_BT].sum())
    totals["kl_all"] += float(kl_BT[mask_BT].sum())
    totals["selected"] += int(selected_BT.sum())
    totals["tokens"] += int(mask_BT.sum())


def needs_stats(cfg: TrainConfig) -> bool:
    """Whether a micro-step computes per-position statistics: a selector ranks by them, a
    position term reads them, or the loss is not the reverse KL the step reports."""
    return cfg.selector in STAT_SELECTORS or cfg.loss != "reverse_kl" or position_terms.active(cfg)


def with_position_terms(trainer, per_pos_BT, s_out, t_out, t_batch, tokens_BT, stats, mask_BT):
    """The per-position loss with the run's extra terms added and its position weights applied
    (position_terms.py); each extra term is its named loss computed as the main loss is."""
    cfg = trainer.cfg
    if not position_terms.active(cfg):
        return per_pos_BT
    for loss, coefficient_BT in position_terms.extra_terms(cfg, stats):
        term_BT = pair_loss(trainer, s_out, t_out, t_batch, tokens_BT, loss)
        per_pos_BT = per_pos_BT + coefficient_BT.to(term_BT) * term_BT
    weights_BT = position_terms.position_weights(cfg, stats, mask_BT)
    return per_pos_BT if weights_BT is None else per_pos_BT * weights_BT.to(per_pos_BT)


def cross_clamped(trainer: Trainer) -> bool:
    """Whether the released code's cross-tokenizer clamps apply: a pair scored through text."""
    return trainer.cross_vocab is not None and trainer.cfg.cross_clamp


def teacher_outputs(trainer: Trainer, t_batch) -> torch.Tensor:
    """What the loss reads of the teacher: its final hidden states (fused losses), its logits
    over the shared ids of the same tokens, or (different tokenizers) its whole vocabulary's
    logits over its own tokens of the text."""
    model = trainer.teacher.loaded.model
    if trainer.fused:
        return response_hidden(model, t_batch)
    if isinstance(t_batch, crosstok.CrossBatch):
        return response_logits(model, t_batch.teacher)
    return response_logits(model, t_batch)[..., : trainer.shared_vocab]


def student_outputs(trainer: Trainer, s_batch: ScoringBatch) -> torch.Tensor:
    """The student's final hidden states (fused losses) or its logits over the shared ids."""
    if trainer.fused:
        return response_hidden(trainer.model, s_batch)
    return response_logits(trainer.model, s_batch)[..., : trainer.shared_vocab]


def _hidden_states(trainer: Trainer, s_out, t_out, tokens_BT=None) -> lean.HiddenStates:
    """Both models' final hidden states beside their heads, for the fused losses."""
    s_head, t_head = (
        m.get_output_embeddings().weight for m in (trainer.model, trainer.teacher_model)
    )
    return lean.HiddenStates(s_out, s_head, t_out, t_head, tokens_BT)


def pair_stats(trainer: Trainer, s_out, t_out, t_batch, tokens_BT) -> dict[str, torch.Tensor]:
    """Per-position statistics (reverse KL, entropies, ...) over the vocabulary both share;
    with one vocabulary, also the sampled tokens' log-probs (`tokens_BT`)."""
    if trainer.fused:
        states = _hidden_states(trainer, s_out, t_out, tokens_BT)
        return lean.hidden_position_stats(states, vocab=trainer.shared_vocab)
    if isinstance(t_batch, crosstok.CrossBatch):
        s_out, t_out = crosstok.shared_logits(s_out, t_out, t_batch, trainer.cross_vocab)
        return divergences.chunked_position_stats(s_out, t_out)
    return divergences.chunked_position_stats(s_out, t_out, tokens_BT=tokens_BT)


def pair_loss(trainer: Trainer, s_out, t_out, t_batch, tokens_BT, loss=None) -> torch.Tensor:
    """The loss `loss` (default: the run's) per position: fused from hidden states, from logits
    of one vocabulary, or through text for a pair with different tokenizers."""
    cfg = trainer.cfg
    loss = loss or cfg.loss
    if trainer.fused:
        sampled = loss in SAMPLED_LOSSES  # on-policy: at the sampling temperature
        spec = lean.LossSpec(
            loss, trainer.shared_vocab,
            temperature=cfg.sampling.temperature if sampled else cfg.loss_temperature,
            beta=cfg.jsd_beta, topk=cfg.topk, power_alpha=cfg.power_alpha,
        )  # fmt: skip
        states = _hidden_states(trainer, s_out, t_out, tokens_BT)
        return lean.fused_per_position_loss(spec, states)
    if not isinstance(t_batch, crosstok.CrossBatch):
        return per_position_loss(trainer, s_out, t_out, tokens_BT, loss)
    return crosstok.cross_position_loss(
        loss, s_out, t_out, t_batch, trainer.cross_vocab, tokens_BT,
        temperature=cfg.loss_temperature, beta=cfg.jsd_beta, topk=cfg.topk,
        clamp=cross_clamped(trainer), power_alpha=cfg.power_alpha,
    )  # fmt: skip


def _step_metrics(trainer, step, totals, grad_norm, lr, rows, device) -> dict[str, float]:
    times = {f"time_{k}_s": trainer.timings.get(k, 0.0) for k in PHASES}
    return {
        "step": step,
        "loss": totals["loss"],
        "kl_selected": totals["kl_selected"] / max(totals["selected"], 1),
        "kl_all": totals["kl_all"] / max(totals["tokens"], 1),
        "grad_norm": grad_norm,
        "lr": lr,
        "rollout_tokens_mean": totals["response_tokens"] / rows,
        "selected_tokens_mean": totals["selected"] / rows,
        **times,
        "time_total_s": sum(times.values()),
        **{f"peak_{k}_mb": trainer.peaks_mb.get(k, 0.0) for k in PHASES},
        # CUDA's counter was reset by each phase: the step's peak is the highest phase's.
        "peak_memory_mb": max(peak_memory_mb(device), *trainer.peaks_mb.values()),
    }


def evaluate_student(trainer: Trainer, step: int) -> tuple[dict[str, float], pd.DataFrame]:
    """avg@k, pass@k, maj@k and the collapse signature of the current student, with the
    evaluation's own prompt and sampling settings (the recipe's; by default the training ones)."""
    cfg, group = trainer.cfg, trainer.group
    trainer.model.eval()
    sync_engine(trainer)
    problems = trainer.eval_problems[group.shard(len(trainer.eval_problems))]
    samples = metrics.sample_answers(
        trainer.student,
        problems,
        cfg.eval_samples,
        cfg.eval_sampling,
        (cfg.seed, "eval", step),
        cfg.eval_style,
    )
    graded = tasks.grade_samples(cfg.task, samples, problems, cfg.protocol, cfg.extraction)
    graded = pd.concat(group.gather(graded), ignore_index=True)  # every process, rank order
    return {"step": step, **metrics.accuracy_metrics(graded)}, graded


def config_dict(cfg: TrainConfig) -> dict:
    """The run's config as saved, without the knobs of methods it does not use
    (TrainConfig.unused_method_knobs); the models' fingerprints make a rebuilt model a new
    run."""
    config = asdict(cfg)
    for unused in cfg.unused_method_knobs():
        config.pop(unused)
    config["label"] = cfg.label
    config["fingerprints"] = {
        role: fingerprint(getattr(cfg.pair, role)) for role in ("student", "teacher")
    }
    return config


def load_checkpoint_weights(trainer: Trainer, folder: Path) -> None:
    """Put a checkpoint's trainable weights back into the student (at master precision)."""
    if trainer.cfg.full_finetune:
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(folder, dtype=trainer.student.loaded.dtype)
        trainer.model.load_state_dict(saved.state_dict())
    else:
        set_peft_model_state_dict(trainer.model, load_file(folder / "adapter_model.safetensors"))
