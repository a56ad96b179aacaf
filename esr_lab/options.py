"""Command-line options shared by several commands, declared once as dataclasses.

A command's parameters are its experiment's own `Options` fields followed by the fields of the
option groups it takes (`with_options` turns each field into a typer option). Values given as
None mean "not given": the preset's value is used, then the recipe's, then the dataclass
default (`recipes.settings`).
"""

import inspect
import tempfile
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Annotated

import typer

from esr_lab import presets, recipes, toy
from esr_lab.config import ModelPair, default_max_new_tokens, pair_and_sampling
from esr_lab.errors import UserError
from esr_lab.prompts import DEFAULT_INSTRUCTION
from esr_lab.records import Paths
from esr_lab.train_config import TrainConfig


def opt(help_text: str, **kwargs) -> typer.models.OptionInfo:
    return typer.Option(help=help_text, **kwargs)


@dataclass
class ModelOptions:
    student: Annotated[str, opt("Hub id, local folder, or toy name.")] = "toy-student"
    teacher: Annotated[str, opt("Hub id, local folder, or toy name.")] = "toy-teacher"
    device: Annotated[str, opt("auto (GPU if present), cpu, cuda, cuda:N.")] = "auto"
    dtype: Annotated[str, opt("auto (bf16 on GPU, fp32 on CPU), float32, bfloat16.")] = "auto"
    # None until typed, so that a preset's value is not overridden by the option's default.
    instruction: Annotated[
        str | None,
        opt(f"Instruction after every problem ('' for none) [default: {DEFAULT_INSTRUCTION}]."),
    ] = None
    thinking: Annotated[
        bool | None, opt("Qwen3 thinking mode in the chat template [off].", show_default=False)
    ] = None
    threads: Annotated[int | None, opt("CPU torch threads [toy: 1; else torch's].", min=1)] = None
    placement: Annotated[
        str | None, opt("Where the instruction goes: user, system, user-inline [esr-lab: user].")
    ] = None
    engine: Annotated[
        str | None, opt("Sampler: transformers (default, any device) or vllm (GPU).")
    ] = None
    vllm_memory: Annotated[
        float | None, opt("vLLM's share of the GPU (weights + KV cache) [0.3].")
    ] = None
    vllm_sleep: Annotated[
        bool | None,
        opt("vLLM frees its GPU memory while the student trains [on].", show_default=False),
    ] = None

    def values(self) -> dict:
        """The options as ModelPair field values (None: not given)."""
        # Tiny toy models run fastest on one thread: their matrices are too small to split.
        threads = self.threads or (1 if toy.is_toy_model(self.student) else None)
        return {
            "student": self.student,
            "teacher": self.teacher,
            "device": self.device,
            "dtype": self.dtype,
            "instruction": self.instruction,
            "enable_thinking": self.thinking,
            "threads": threads,
            "placement": self.placement,
            "engine": self.engine,
            "vllm_memory": self.vllm_memory,
            "vllm_sleep": self.vllm_sleep,
        }

    def pair(self) -> ModelPair:
        return ModelPair(**{k: v for k, v in self.values().items() if v is not None})


@dataclass
class SamplingOptions:
    temperature: Annotated[
        float | None, opt("Sampling temperature (0: greedy) [default: 0.7].", min=0.0)
    ] = None
    top_p: Annotated[
        float | None,
        opt("Nucleus sampling mass [esr-lab: 1.0; paper-code: 0.95].", min=0.0, max=1.0),
    ] = None
    top_k: Annotated[
        int | None,
        opt(
            "Sample among the k likeliest ids, before top-p (0: off) [esr-lab: 0; paper-code: 50]."
        ),
    ] = None
    max_new_tokens: Annotated[
        int | None, opt("Response budget in tokens [default: 400 toy, 4096 real].", min=1)
    ] = None
    stop_at_end_of_turn: Annotated[
        bool | None,
        opt(
            "Also stop a response at the chat template's end-of-turn token [esr-lab: on; "
            "paper-code: off].",
            show_default=False,
        ),
    ] = None

    def values(self) -> dict:
        """The options as Sampling field values (None: not given)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
            "stop_at_end_of_turn": self.stop_at_end_of_turn,
        }


@dataclass
class RunOptions:
    # None (not given) becomes 0 in Given: only then can --seed beside --seeds be refused
    seed: Annotated[int | None, opt("Seed; every sample's seed derives from it [default: 0].")] = (
        None
    )
    results_dir: Annotated[Path, opt("Where run folders are written.")] = Path("results")
    figures_dir: Annotated[
        Path | None, opt("Also write the figure here [default: only in the run folder].")
    ] = None
    run_id: Annotated[str | None, opt("Run name; an existing run resumes.")] = None
    quiet: Annotated[bool, opt("No progress bars.")] = False


@dataclass
class SeedOptions:
    """Replicates of every training run, and how many train at once (training commands)."""

    seeds: Annotated[
        str | None,
        opt(
            "Train every variant once per seed: 0,1,2, or a count (3: seeds 0,1,2); tables add "
            "the mean and a 95% interval over seeds [default: --seed alone]."
        ),
    ] = None
    jobs: Annotated[
        int,
        opt("Training runs at once, each in its own process (one per GPU where several).", min=1),
    ] = 1


@dataclass
class TrainOptions:
    """Training options; None means: the preset's value, else the recipe's, else esr-lab's."""

    recipe: Annotated[
        str | None, opt("esr-lab (default) or paper-code (the paper's released code).")
    ] = None
    loss: Annotated[
        str | None,
        opt(
            "reverse_kl, forward_kl, jsd, sampled_token, topk_support, power_token (PowerOPD); "
            "uld (different tokenizers) [reverse_kl]."
        ),
    ] = None
    position_weights: Annotated[
        str | None, opt("Per-position loss weights: uniform, or iw_opd (IW-OPD) [uniform].")
    ] = None
    iw_gamma: Annotated[float | None, opt("IW-OPD's amplification gamma [0.5].")] = None
    eopd_coef: Annotated[
        float | None,
        opt("EOPD: add this x forward KL where the teacher's entropy is high [0: off; EOPD: 1]."),
    ] = None
    eopd_threshold: Annotated[
        float | None, opt("EOPD's teacher-entropy threshold, nats [0.8].")
    ] = None
    power_alpha: Annotated[float | None, opt("--loss power_token: PowerOPD's alpha [5].")] = None
    tip_power: Annotated[float | None, opt("--selector tip: draw odds H(student)^this [1].")] = None
    min_vocab_overlap: Annotated[
        float | None,
        opt("Pairs with different tokenizers: least share of token strings both hold [0.5]."),
    ] = None
    reduction: Annotated[
        str | None, opt("sequence_sum [esr-lab], sequence_mean [paper-code] or token_mean.")
    ] = None
    mask_special_tokens: Annotated[
        bool | None, opt("Exclude special tokens from the loss [off].", show_default=False)
    ] = None
    fused_loss: Annotated[
        bool | None,
        opt(
            "Losses from hidden states block by block, never holding [T, V] logits [on].",
            show_default=False,
        ),
    ] = None
    gradient_checkpointing: Annotated[
        bool | None,
        opt("Recompute the student's activations in the backward [off].", show_default=False),
    ] = None
    loss_on_stop_token: Annotated[
        bool | None,
        opt(
            "Score the response's stop token [esr-lab: on; paper-code: off, stripped].",
            show_default=False,
        ),
    ] = None
    teacher_prompt: Annotated[
        str | None,
        opt(
            "Teacher reads its own template (own) or the student's prompt ids + "
            "its no-think marker (student) [esr-lab: own; paper-code: student]."
        ),
    ] = None
    student_context: Annotated[
        str | None,
        opt(
            "Student scored on its prompt (own) or its prompt + the teacher's no-think marker "
            "ids (teacher-marker) [esr-lab: own; paper-code: teacher-marker]."
        ),
    ] = None
    strip_tokens: Annotated[
        str | None,
        opt(
            "Without --loss-on-stop-token, strip every trailing special token (special) or "
            "EOS, pad, <|im_end|>, <|endoftext|> only (eos-pad) [esr-lab: special; "
            "paper-code: eos-pad]."
        ),
    ] = None
    cross_clamp: Annotated[
        bool | None,
        opt(
            "Different tokenizers: teacher log-probs clamped to [-20, 0], a row's loss at 50 "
            "[esr-lab: off; paper-code: on].",
            show_default=False,
        ),
    ] = None
    cross_unaligned: Annotated[
        str | None,
        opt(
            "Different tokenizers: a position no teacher token covers is masked (mask) or "
            "reads the neighbouring one (neighbour) [esr-lab: mask; paper-code: neighbour]."
        ),
    ] = None
    steps: Annotated[int | None, opt("Training steps [paper: 200].")] = None
    batch: Annotated[int | None, opt("Prompts per step [paper: 16].")] = None
    rollouts_per_prompt: Annotated[
        int | None, opt("Rollouts per prompt, each with its own seed [default: 1].")
    ] = None
    micro_batch: Annotated[int | None, opt("Rows per forward/backward.")] = None
    lr: Annotated[
        float | None, opt("Learning rate [5e-5; paper-code with --full-finetune: 5e-6].")
    ] = None
    lr_schedule: Annotated[str | None, opt("constant [esr-lab] or cosine [paper-code].")] = None
    warmup_ratio: Annotated[
        float | None, opt("Share of steps warming up [esr-lab: 0; paper-code: 0.1].")
    ] = None
    weight_decay: Annotated[
        float | None, opt("AdamW weight decay [esr-lab: 0; paper-code: 0.01].")
    ] = None
    lora_rank: Annotated[int | None, opt("LoRA rank [paper: 32].")] = None
    lora_alpha: Annotated[int | None, opt("LoRA alpha [paper: 64].")] = None
    lora_dropout: Annotated[float | None, opt("LoRA dropout [esr-lab: 0; paper-code: 0.05].")] = (
        None
    )
    full_finetune: Annotated[
        bool | None, opt("Train all weights instead of LoRA [off].", show_default=False)
    ] = None
    train_dataset: Annotated[str | None, opt("Training prompts [toy: its generator].")] = None
    train_limit: Annotated[int | None, opt("Training prompts used [paper: 3200].")] = None
    train_sample: Annotated[
        str | None,
        opt(
            "Training prompts: the set's first --train-limit (first) or a sample seeded by "
            "--seed from every row (random) [esr-lab: first; paper-code: random]."
        ),
    ] = None
    eval_dataset: Annotated[str | None, opt("Eval set [default: math500 / toy test].")] = None
    eval_limit: Annotated[int | None, opt("Eval problems used.")] = None
    eval_samples: Annotated[int | None, opt("Samples per eval problem (avg@k) [4].")] = None
    eval_every: Annotated[int | None, opt("Steps between evals/checkpoints [paper: 50].")] = None
    task: Annotated[
        str | None, opt("math, humaneval or bfcl [default: from the eval dataset].")
    ] = None
    protocol: Annotated[
        str | None,
        opt("Code/BFCL evals: chat (esr-lab's) or paper (greedy pass@1) [paper-code: paper]."),
    ] = None
    eval_top_p: Annotated[float | None, opt("Eval top-p [default: --top-p; paper-code: 1.0].")] = (
        None
    )
    eval_top_k: Annotated[int | None, opt("Eval top-k [default: --top-k; paper-code: 0, off].")] = (
        None
    )
    eval_max_new_tokens: Annotated[
        int | None, opt("Eval response budget [default: --max-new-tokens; paper-code: 2048].")
    ] = None
    progressive_schedule: Annotated[
        str | None, opt("Progressive N: linear [esr-lab] or step (N = step) [paper-code].")
    ] = None
    preset: Annotated[str | None, opt("A preset in experiments/ (toy, paper-qwen, ...).")] = None

    def config(self, given: "Given", **extra):
        """A TrainConfig: command line, then preset, then recipe, then dataclass defaults."""
        own = {f.name: getattr(self, f.name) for f in fields(self)}
        own.pop("preset"), own.pop("recipe")
        flat = {**given.models.values(), **given.sampling.values(), **own, **extra}
        flat["seed"] = given.run.seed
        values = settings("train", given.models.student, flat, self.preset, self.recipe)
        return TrainConfig.from_settings(values)


def default_train_config():
    """A TrainConfig at its defaults, for an experiment's config field."""
    return TrainConfig()


def settings(
    command: str, student: str, given: dict, preset: str | None, recipe: str | None = None
) -> dict:
    """The one settings path: the command line, then the preset's `[command]` table (the named
    preset, else a toy student's own world), then the recipe (training settings only), then the
    dataclass defaults (keys left out). Values given as None count as not given."""
    section = presets.defaults_for(student, command, preset)
    return recipes.settings(given, section, student, recipe, training=command == "train")


@dataclass
class Given:
    """The option groups a command was given (None: the command does not take that group)."""

    models: ModelOptions | None = None
    sampling: SamplingOptions | None = None
    run: RunOptions | None = None
    train: TrainOptions | None = None
    replicates: SeedOptions | None = None

    def __post_init__(self) -> None:
        seeds = self.replicates.seeds if self.replicates is not None else None
        if self.run is None:
            return
        if seeds is not None and self.run.seed is not None:
            raise UserError("--seed and --seeds both given; pass one (--seeds 5,6 for others)")
        if self.run.seed is None:
            self.run.seed = 0

    @property
    def seeds(self) -> tuple[int, ...] | None:
        """The --seeds list, or None when not given (one run per variant at --seed, as ever)."""
        given = self.replicates.seeds if self.replicates is not None else None
        return parse_seeds(given)

    def pair(self) -> ModelPair:
        return self.models.pair()

    def sampled_as_training(
        self, preset: str | None, recipe: str | None = None, model: str | None = None
    ) -> dict:
        """The models and sampling of a command that samples without training (a scan, an
        evaluation of `model`), resolved as `train` with the same preset and recipe resolves
        them, so that one preset samples alike everywhere; with the recipe and preset named,
        as its config records them."""
        sampler = model or self.models.student
        flat = {**self.models.values(), **self.sampling.values()}
        values = settings("train", sampler, flat, preset, recipe)
        values.setdefault("max_new_tokens", default_max_new_tokens(sampler))
        pair, sampling = pair_and_sampling(values)
        return {"pair": pair, "sampling": sampling, "recipe": values["recipe"], "preset": preset}

    def paths(self, own) -> Paths:
        """Where the run writes: the run group's options, else the command's own; folders that
        cannot be written are refused here, before any work."""
        source = self.run or own
        figures_dir = getattr(source, "figures_dir", None)
        return Paths(
            results_dir=writable_folder(source.results_dir, "--results-dir"),
            figures_dir=None
            if figures_dir is None
            else writable_folder(figures_dir, "--figures-dir"),
            run_id=source.run_id,
            show_progress=not getattr(source, "quiet", False),
            jobs=self.replicates.jobs if self.replicates is not None else 1,
        )


def writable_folder(path: Path, flag: str) -> Path:
    """`path` if it is, or can become, a folder esr-lab can write in; else a one-line error.

    Checked by writing a temporary file in the nearest folder that exists (permission bits do not
    stop root, a read-only file system does), so nothing of a run is made before it fails.
    """
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == path else f"lies under the file {existing}"
        raise UserError(f"{flag} {path} {what}; pass a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(
            f"{flag} {path} cannot be written ({e.strerror or e}); pass a folder you can write"
        ) from e
    return path


GROUPS: dict[type, str] = {
    ModelOptions: "models",
    SamplingOptions: "sampling",
    RunOptions: "run",
    TrainOptions: "train",
    SeedOptions: "replicates",
}
# The groups each kind of command takes: one that samples without training (a scan, an
# evaluation), one that also trains, and one that trains every variant once per seed of --seeds.
SAMPLING_GROUPS = (ModelOptions, SamplingOptions, RunOptions)
TRAINING_GROUPS = (*SAMPLING_GROUPS, TrainOptions)
SEEDED_TRAINING_GROUPS = (*TRAINING_GROUPS, SeedOptions)


def parameters(option_classes) -> list[inspect.Parameter]:
    """Every field of the option dataclasses, in order, as keyword parameters for typer."""
    params = []
    for cls in option_classes:
        hints = typing.get_type_hints(cls, include_extras=True)
        params += [
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if f.default is MISSING else f.default,
                annotation=hints[f.name],
            )
            for f in fields(cls)
        ]
    return params


def split(values: dict, own: type, groups) -> tuple[object, Given]:
    """Flat option values (from typer, or reproduce) -> the command's own options and groups."""
    values = dict(values)
    taken = {GROUPS[g]: g(**{f.name: values.pop(f.name) for f in fields(g)}) for g in groups}
    return own(**{f.name: values.pop(f.name) for f in fields(own)}), Given(**taken)


def defaults(option_classes) -> dict:
    """Every option at its default value (None for a required one)."""
    return {
        f.name: None if f.default is MISSING else f.default
        for cls in option_classes
        for f in fields(cls)
    }


def parse_int_list(text: str, option: str) -> tuple[int, ...]:
    """'0,25,50' -> (0, 25, 50); anything else is a one-line error naming the option."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(
            f"{option} takes comma-separated integers like 0,25,50; got '{text}'"
        ) from None


def int_list(text: str | None, option: str) -> tuple[int, ...] | None:
    """parse_int_list, with None (not given) kept as None."""
    return None if text is None else parse_int_list(text, option)


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    """--seeds: '0,1,2' -> (0, 1, 2); a lone count '3' -> (0, 1, 2); None stays None."""
    if text is None:
        return None
    seeds = parse_int_list(text, "--seeds")
    if len(seeds) == 1 and "," not in text:
        seeds = tuple(range(seeds[0]))
    if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
        raise UserError(f"--seeds takes distinct seeds >= 0 like 0,1,2 or a count; got '{text}'")
    return seeds


# Options several commands declare the same way.
ScanDataset = Annotated[str | None, opt("Prompts [default: toy world's train split / math500].")]
ScanRollouts = Annotated[int | None, opt("Student rollouts scanned [paper: 1000].")]
ScanPreset = Annotated[str | None, opt("A preset in experiments/ (toy, paper-qwen, ...).")]
BinWidth = Annotated[int | None, opt("Position bin width, tokens [paper: 50; toy: 10].")]
Window = Annotated[int | None, opt("ESR window, tokens [paper: 100].")]
EsrCheckpoint = Annotated[
    str | None, opt("ESR adapter folder from esr-lab train (trained with --n) [default: train].")
]
