"""The settings of a training run (TrainConfig), the choices they take, and their checks.

Torch-free, so that the options layer builds and checks a config, and `esr-lab --help` lists
commands, without importing the trainer: the names of the losses, reductions, selectors and
the progressive schedule of N come from `choices` (which the maths modules also read), not from
the torch modules that implement them. The trainer and the step are in `train`, the loop in
`loop`.

Where the paper's released code trains differently from esr-lab's defaults (the loss reduction,
the schedule, the stripped stop token, top-p and top-k, weight decay, LoRA dropout, the teacher's
prompt, the student's scoring context, the draw of training problems, the cross-tokenizer
clamps), each difference is a field here, and `recipes.py` names the two sets of values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from esr_lab import tasks
from esr_lab.choices import (
    CROSS_LOSSES,
    MIN_OVERLAP,
    POSITION_WEIGHTS,
    PROGRESSIVE_SCHEDULES,
    REDUCTIONS,
    SAMPLED_LOSSES,
    SELECTORS,
    progressive_n,
)
from esr_lab.config import ModelPair, Sampling, default_dataset, default_max_new_tokens, named
from esr_lab.errors import UserError
from esr_lab.prompts import DEFAULT_INSTRUCTION, PLACEMENTS, PromptStyle

LR_SCHEDULES = ("constant", "cosine")
TEACHER_PROMPTS = ("own", "student")
STUDENT_CONTEXTS = ("own", "teacher-marker")
TRAIN_SAMPLES = ("first", "random")
STRIP_TOKENS = ("special", "eos-pad")
CROSS_UNALIGNED = ("mask", "neighbour")


@dataclass(frozen=True)
class TrainConfig:
    pair: ModelPair = field(default_factory=ModelPair)
    n: int | None = 100  # ESR window; None with selector "all" is full OPD
    selector: str = "first_n"
    budget: int | None = None  # positions per sequence for top-k / random selectors
    progressive: tuple[int, int] | None = None  # (n_start, n_end): N grows over training
    progressive_schedule: str = "linear"  # PROGRESSIVE_SCHEDULES
    loss: str = "reverse_kl"  # LOSSES, or "uld" for a pair with different tokenizers
    loss_temperature: float = 1.0
    min_vocab_overlap: float = MIN_OVERLAP  # pairs with different tokenizers
    jsd_beta: float = 0.5
    topk: int = 32
    reduction: str = "sequence_sum"  # REDUCTIONS
    # Position-selective OPD methods beside ESR (position_terms.py, README "Methods side by
    # side"); each knob counts only where its method is on (`unused_method_knobs`).
    position_weights: str = "uniform"  # POSITION_WEIGHTS; "iw_opd": IW-OPD's weights
    iw_gamma: float = 0.5  # IW-OPD's amplification gamma (TRL's iw_opd_gamma default)
    eopd_coef: float = 0.0  # EOPD: forward KL x this where H(teacher) > eopd_threshold; 0: off
    eopd_threshold: float = 0.8  # EOPD's teacher-entropy threshold tau, nats
    power_alpha: float = 5.0  # --loss power_token: PowerOPD's exponent alpha
    tip_power: float = 1.0  # --selector tip: positions drawn with odds H(student)^tip_power
    mask_special_tokens: bool = False
    fused_loss: bool = True  # losses from hidden states block by block (lean.py), where possible
    gradient_checkpointing: bool = False  # recompute the student's activations in the backward
    loss_on_stop_token: bool = True  # False: trailing stop/special tokens stripped before scoring
    teacher_prompt: str = "own"  # "student": the student's prompt ids + the teacher's no-think
    student_context: str = "own"  # "teacher-marker": scored on prompt + teacher's no-think ids
    strip_tokens: str = "special"  # what loss_on_stop_token=False strips (STRIP_TOKENS)
    cross_clamp: bool = False  # cross pairs: teacher log-probs >= -20, a row's loss <= 50
    cross_unaligned: str = "mask"  # cross pairs: "neighbour" reads the nearest teacher token
    steps: int = 200
    batch: int = 16
    rollouts_per_prompt: int = 1
    micro_batch: int = 4
    lr: float = 5e-5
    lr_schedule: str = "constant"  # LR_SCHEDULES; "cosine" decays to 0 at the last step
    warmup_ratio: float = 0.0  # share of the steps with a linear warm-up from 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_rank: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.0
    full_finetune: bool = False
    sampling: Sampling = field(default_factory=Sampling)
    train_dataset: str | None = None
    train_limit: int = 3200
    train_sample: str = "first"  # "random": a seeded sample of the whole set, unfiltered
    eval_dataset: str | None = None
    eval_limit: int | None = None
    eval_samples: int = 4
    eval_every: int = 50
    eval_instruction: str | None = None  # None: evaluation prompts are the training prompts
    eval_placement: str | None = None
    eval_top_p: float | None = None  # None: the rollouts' sampling settings
    eval_top_k: int | None = None
    eval_max_new_tokens: int | None = None
    extraction: str = "last_boxed"
    task: str | None = None  # math, humaneval, bfcl (tasks.TASKS); None: from the eval dataset
    protocol: str = "chat"  # how code/BFCL evaluations prompt and grade (tasks.PROTOCOLS)
    seed: int = 0
    collapse_drop: float = 0.2  # relative drop from the peak that flags a collapse
    recipe: str = "esr-lab"  # which named set of defaults filled the fields (recipes.RECIPES)

    @classmethod
    def from_settings(cls, values: dict) -> TrainConfig:
        """A config from flat option values (recipes.settings): each key goes to the field of
        that name in the model pair, the sampling settings or the config itself. The response
        budget defaults by student (toy worlds are short, real answers long)."""
        student = values.get("student", ModelPair.student)
        return cls().with_settings({"max_new_tokens": default_max_new_tokens(student), **values})

    def with_settings(self, values: dict) -> TrainConfig:
        """This config with flat option values put in the fields of those names (model pair,
        sampling or the config itself); an ablation switches one recipe difference this way."""
        parts = {"pair": self.pair, "sampling": self.sampling}
        parts = {name: replace(part, **named(part, values)) for name, part in parts.items()}
        return replace(self, **{**named(self, values), **parts})

    @property
    def label(self) -> str:
        """A short name for tables: esr-100, full, progressive-5-200, top_rkl-100, and the
        position-selective method the run trains with: esr-100+iw_opd, full+eopd."""
        added = "+iw_opd" if self.position_weights == "iw_opd" else ""
        added += "+eopd" if self.eopd_coef > 0 else ""
        added += "+power_opd" if self.loss == "power_token" else ""
        return self._positions_label + added

    @property
    def _positions_label(self) -> str:
        if self.progressive:
            schedule = "" if self.progressive_schedule == "linear" else "step-"
            return f"progressive-{schedule}{self.progressive[0]}-{self.progressive[1]}"
        if self.selector == "first_n":
            return f"esr-{self.n}"
        if self.selector == "all":
            return "full"
        return f"{self.selector}-{self.budget}"

    def unused_method_knobs(self) -> tuple[str, ...]:
        """The method fields this run does not use: a method that is off, and the knobs of
        methods that are off. The run's saved config leaves them out (train.config_dict), so
        that a run records what it did, and runs stored before these methods existed keep
        their content address."""
        unused = []
        if self.position_weights == "uniform":
            unused += ["position_weights", "iw_gamma"]
        if self.eopd_coef == 0:
            unused += ["eopd_coef", "eopd_threshold"]
        if self.loss != "power_token":
            unused.append("power_alpha")
        if self.selector != "tip":
            unused.append("tip_power")
        return tuple(unused)

    def rollout_tokens(self, step: int) -> int:
        """ESR stops sampling at N; every other selector sees full-length rollouts."""
        if self.progressive:
            return progressive_n(step, self.steps, *self.progressive, self.progressive_schedule)
        if self.selector == "first_n":
            return min(self.n, self.sampling.max_new_tokens)
        return self.sampling.max_new_tokens

    def window(self, step: int) -> int | None:
        return self.rollout_tokens(step) if self.selector == "first_n" else None

    @property
    def eval_sampling(self) -> Sampling:
        """Evaluation sampling: the rollouts' settings unless the recipe names its own; greedy
        within the protocol's budget where a code/BFCL protocol says so (paper)."""
        prompting = self.task_prompting
        if prompting is not None and prompting.greedy:
            budget = prompting.max_new_tokens or self.sampling.max_new_tokens
            return replace(self.sampling, temperature=0.0, top_p=1.0, max_new_tokens=budget)
        return replace(
            self.sampling,
            top_p=self.sampling.top_p if self.eval_top_p is None else self.eval_top_p,
            top_k=self.sampling.top_k if self.eval_top_k is None else self.eval_top_k,
            max_new_tokens=self.eval_max_new_tokens or self.sampling.max_new_tokens,
        )

    @property
    def task_prompting(self) -> tasks.Prompting | None:
        """The protocol's prompting for a code or BFCL evaluation; None for math."""
        if self.task in (None, "math"):
            return None
        return tasks.prompting(self.task, self.protocol)

    @property
    def eval_style(self) -> PromptStyle:
        """Evaluation prompts: the student's training prompts unless the recipe names others;
        a code or BFCL evaluation prompts as its protocol does, never with math's wording."""
        style = self.pair.style
        prompting = self.task_prompting
        if prompting is not None:
            paper = self.protocol == "paper"
            return replace(
                style,
                instruction=prompting.instruction if paper else style.instruction,
                placement=prompting.placement or style.placement,
            )
        return replace(
            style,
            instruction=style.instruction
            if self.eval_instruction is None
            else self.eval_instruction,
            placement=self.eval_placement or style.placement,
        )

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
        if self.loss not in CROSS_LOSSES:
            raise UserError(f"unknown loss '{self.loss}'; use {', '.join(CROSS_LOSSES)}")
        if self.selector not in SELECTORS:
            raise UserError(f"unknown selector '{self.selector}'; use {', '.join(SELECTORS)}")
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
        # The maths modules refuse these too, with ValueError (a caller's bug); here a bad value
        # from the command line or a preset is a one-line error that names its option.
        if self.progressive and min(self.progressive) < 1:
            raise UserError(f"--progressive takes START,END >= 1, got {self.progressive}")
        if self.loss_temperature <= 0:
            raise UserError(f"--loss-temperature must be positive, got {self.loss_temperature}")
        _check_fraction("--jsd-beta", self.jsd_beta, 0.0, 1.0)
        _check_positive(topk=self.topk)
        self._check_method_fields()
        self._check_recipe_fields()
        world = default_dataset(self.pair.student)
        eval_dataset = self.eval_dataset or world
        task = self.task or tasks.task_for_dataset(eval_dataset)
        tasks.get_task(task)  # an unknown task is a one-line error
        pair = self.pair
        if task != "math" and pair.instruction == DEFAULT_INSTRUCTION:
            pair = replace(pair, instruction=tasks.get_task(task).instruction)  # the task's own
        eval_samples = self.eval_samples
        if task != "math" and tasks.prompting(task, self.protocol).greedy:
            eval_samples = 1  # greedy pass@1: more samples would be the same answer again
        return replace(
            self,
            pair=pair,
            task=task,
            eval_samples=eval_samples,
            train_dataset=self.train_dataset or (world if world != "math500" else "numinamath"),
            eval_dataset=eval_dataset,
        )

    def _check_method_fields(self) -> None:
        """The position-selective methods' knobs: one line per bad value."""
        if self.position_weights not in POSITION_WEIGHTS:
            raise UserError(
                f"unknown --position-weights '{self.position_weights}'; "
                f"use {', '.join(POSITION_WEIGHTS)}"
            )
        for option, value in (
            ("--iw-gamma", self.iw_gamma),
            ("--eopd-coef", self.eopd_coef),
            ("--eopd-threshold", self.eopd_threshold),
        ):
            if value < 0:
                raise UserError(f"{option} must be >= 0, got {value}")
        for option, value in (("--power-alpha", self.power_alpha), ("--tip-power", self.tip_power)):
            if value <= 0:
                raise UserError(f"{option} must be positive, got {value}")

    def _check_recipe_fields(self) -> None:
        """The options where esr-lab and the released code differ: one line per bad value."""
        choices = {
            "--reduction": (self.reduction, REDUCTIONS),
            "--lr-schedule": (self.lr_schedule, LR_SCHEDULES),
            "--teacher-prompt": (self.teacher_prompt, TEACHER_PROMPTS),
            "--student-context": (self.student_context, STUDENT_CONTEXTS),
            "--train-sample": (self.train_sample, TRAIN_SAMPLES),
            "--strip-tokens": (self.strip_tokens, STRIP_TOKENS),
            "--cross-unaligned": (self.cross_unaligned, CROSS_UNALIGNED),
            "--progressive-schedule": (self.progressive_schedule, PROGRESSIVE_SCHEDULES),
            "--placement": (self.pair.placement, PLACEMENTS),
            "--protocol": (self.protocol, tasks.PROTOCOLS),
        }
        for option, (value, allowed) in choices.items():
            if value not in allowed:
                raise UserError(f"unknown {option} '{value}'; use {', '.join(allowed)}")
        _check_fraction("--warmup-ratio", self.warmup_ratio, 0.0, 1.0)
        _check_fraction("--lora-dropout", self.lora_dropout, 0.0, 0.999)
        _check_fraction("--top-p", self.sampling.top_p, 1e-6, 1.0)
        if self.weight_decay < 0:
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.sampling.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0: off), got {self.sampling.top_k}")
        if self.loss in SAMPLED_LOSSES:
            _check_sampled_token(self)


def _check_fraction(option: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise UserError(f"{option} must be in [{low:g}, {high:g}], got {value}")


def _check_sampled_token(cfg: TrainConfig) -> None:
    """The sampled-token losses are policy gradients: their log-probs must be those of the
    distribution the rollouts were drawn from, so the loss is taken at the sampling
    temperature (and nucleus); another --loss-temperature would make it off-policy."""
    t = cfg.sampling.temperature
    if t <= 0:
        raise UserError(f"--loss {cfg.loss} needs sampled rollouts (--temperature > 0), got 0")
    if cfg.loss_temperature not in (1.0, t):
        raise UserError(
            f"--loss {cfg.loss} is taken at the sampling temperature {t}; "
            f"--loss-temperature {cfg.loss_temperature} would make it off-policy"
        )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            option = "--" + name.replace("_", "-")
            raise UserError(f"{option} must be at least 1, got {value}")
