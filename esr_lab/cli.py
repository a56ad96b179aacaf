"""The `esr-lab` command: one subcommand per paper finding, plus train, eval and the toy build.

Each subcommand turns its options into an experiment's Config and calls its `run`; the work
lives in `esr_lab.experiments` and the core modules. Options shared by several commands are
declared once, as dataclasses whose fields become options (`with_options`). A toy student
takes its defaults from its world's preset (`experiments/toy.toml`), a real one the paper's.
User mistakes print one line and exit 2.
"""

import functools
import inspect
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Annotated

import typer

from esr_lab import presets, recipes, toy
from esr_lab.config import ModelPair, Sampling, default_max_new_tokens
from esr_lab.errors import TrainingDiverged, UserError
from esr_lab.prompts import DEFAULT_INSTRUCTION

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Reproduce and extend Early Stopping Rollout (ESR) for on-policy distillation.",
)


def _opt(help_text: str, **kwargs) -> typer.models.OptionInfo:
    return typer.Option(help=help_text, **kwargs)


@dataclass
class ModelOptions:
    student: Annotated[str, _opt("Hub id, local folder, or toy name.")] = "toy-student"
    teacher: Annotated[str, _opt("Hub id, local folder, or toy name.")] = "toy-teacher"
    device: Annotated[str, _opt("auto (GPU if present), cpu, cuda, cuda:N.")] = "auto"
    dtype: Annotated[str, _opt("auto (bf16 on GPU, fp32 on CPU), float32, bfloat16.")] = "auto"
    instruction: Annotated[str, _opt("Instruction after every problem.")] = DEFAULT_INSTRUCTION
    thinking: Annotated[bool, _opt("Qwen3 thinking mode in the chat template.")] = False
    threads: Annotated[int | None, _opt("CPU torch threads [toy: 1; else torch's].", min=1)] = None
    placement: Annotated[
        str | None, _opt("Where the instruction goes: user, system, user-inline [esr-lab: user].")
    ] = None
    engine: Annotated[
        str | None, _opt("Sampler: transformers (default, any device) or vllm (GPU).")
    ] = None
    vllm_memory: Annotated[
        float | None, _opt("vLLM's share of the GPU (weights + KV cache) [0.3].")
    ] = None
    vllm_sleep: Annotated[
        bool | None,
        _opt("vLLM frees its GPU memory while the student trains [on].", show_default=False),
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
    temperature: Annotated[float, _opt("Sampling temperature (0: greedy).", min=0.0)] = 0.7
    top_p: Annotated[
        float | None,
        _opt("Nucleus sampling mass [esr-lab: 1.0; paper-code: 0.95].", min=0.0, max=1.0),
    ] = None
    max_new_tokens: Annotated[
        int | None, _opt("Response budget in tokens [default: 400 toy, 4096 real].", min=1)
    ] = None
    stop_at_end_of_turn: Annotated[
        bool | None,
        _opt(
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
            "max_new_tokens": self.max_new_tokens,
            "stop_at_end_of_turn": self.stop_at_end_of_turn,
        }

    def sampling(self, student: str) -> Sampling:
        given = {k: v for k, v in self.values().items() if v is not None}
        given.setdefault("max_new_tokens", default_max_new_tokens(student))
        return Sampling(**given)


@dataclass
class RunOptions:
    seed: Annotated[int, _opt("Seed; every sample's seed derives from it.")] = 0
    results_dir: Annotated[Path, _opt("Where run folders are written.")] = Path("results")
    figures_dir: Annotated[Path, _opt("Where figures are written.")] = Path("figures")
    run_id: Annotated[str | None, _opt("Run name; an existing run resumes.")] = None
    quiet: Annotated[bool, _opt("No progress bars.")] = False


@dataclass
class TrainOptions:
    """Training options; None means: the preset's value, else the recipe's, else esr-lab's."""

    recipe: Annotated[
        str | None, _opt("esr-lab (default) or paper-code (the paper's released code).")
    ] = None
    loss: Annotated[
        str,
        _opt(
            "reverse_kl, forward_kl, jsd, sampled_token, topk_support; uld (different tokenizers)."
        ),
    ] = "reverse_kl"
    min_vocab_overlap: Annotated[
        float | None,
        _opt("Pairs with different tokenizers: least share of token strings both hold [0.5]."),
    ] = None
    reduction: Annotated[
        str | None, _opt("sequence_sum [esr-lab], sequence_mean [paper-code] or token_mean.")
    ] = None
    mask_special_tokens: Annotated[bool, _opt("Exclude special tokens from the loss.")] = False
    fused_loss: Annotated[
        bool | None,
        _opt(
            "Losses from hidden states block by block, never holding [T, V] logits [on].",
            show_default=False,
        ),
    ] = None
    gradient_checkpointing: Annotated[
        bool | None,
        _opt("Recompute the student's activations in the backward [off].", show_default=False),
    ] = None
    loss_on_stop_token: Annotated[
        bool | None,
        _opt(
            "Score the response's stop token [esr-lab: on; paper-code: off, stripped].",
            show_default=False,
        ),
    ] = None
    teacher_prompt: Annotated[
        str | None,
        _opt(
            "Teacher reads its own template (own) or the student's prompt ids + "
            "its no-think marker (student) [esr-lab: own; paper-code: student]."
        ),
    ] = None
    steps: Annotated[int | None, _opt("Training steps [paper: 200].")] = None
    batch: Annotated[int | None, _opt("Prompts per step [paper: 16].")] = None
    rollouts_per_prompt: Annotated[int, _opt("Rollouts per prompt.")] = 1
    micro_batch: Annotated[int | None, _opt("Rows per forward/backward.")] = None
    lr: Annotated[float | None, _opt("Learning rate [paper: 5e-5].")] = None
    lr_schedule: Annotated[str | None, _opt("constant [esr-lab] or cosine [paper-code].")] = None
    warmup_ratio: Annotated[
        float | None, _opt("Share of steps warming up [esr-lab: 0; paper-code: 0.1].")
    ] = None
    weight_decay: Annotated[
        float | None, _opt("AdamW weight decay [esr-lab: 0; paper-code: 0.01].")
    ] = None
    lora_rank: Annotated[int | None, _opt("LoRA rank [paper: 32].")] = None
    lora_alpha: Annotated[int | None, _opt("LoRA alpha [paper: 64].")] = None
    lora_dropout: Annotated[float | None, _opt("LoRA dropout [esr-lab: 0; paper-code: 0.05].")] = (
        None
    )
    full_finetune: Annotated[bool, _opt("Train all weights instead of LoRA.")] = False
    train_dataset: Annotated[str | None, _opt("Training prompts [toy: its generator].")] = None
    train_limit: Annotated[int | None, _opt("Training prompts used [paper: 3200].")] = None
    eval_dataset: Annotated[str | None, _opt("Eval set [default: math500 / toy test].")] = None
    eval_limit: Annotated[int | None, _opt("Eval problems used.")] = None
    eval_samples: Annotated[int, _opt("Samples per eval problem (avg@k).")] = 4
    eval_every: Annotated[int | None, _opt("Steps between evals/checkpoints [paper: 50].")] = None
    task: Annotated[
        str | None, _opt("math, humaneval or bfcl [default: from the eval dataset].")
    ] = None
    eval_top_p: Annotated[float | None, _opt("Eval top-p [default: --top-p; paper-code: 1.0].")] = (
        None
    )
    eval_max_new_tokens: Annotated[
        int | None, _opt("Eval response budget [default: --max-new-tokens; paper-code: 2048].")
    ] = None
    progressive_schedule: Annotated[
        str | None, _opt("Progressive N: linear [esr-lab] or step (N = step) [paper-code].")
    ] = None
    preset: Annotated[str | None, _opt("A preset in experiments/ (toy, paper-qwen, ...).")] = None

    def config(self, models: ModelOptions, sampling: SamplingOptions, run: RunOptions, **extra):
        """A TrainConfig: command line, then preset, then recipe, then dataclass defaults."""
        from esr_lab.train import TrainConfig

        own = {f.name: getattr(self, f.name) for f in fields(self)}
        own.pop("preset"), own.pop("recipe")
        given = {**models.values(), **sampling.values(), **own, **extra, "seed": run.seed}
        preset = presets.defaults_for(models.student, "train", self.preset)
        values = recipes.settings(given, preset, models.student, self.recipe)
        return TrainConfig.from_settings(values)


GROUPS = (ModelOptions, SamplingOptions, RunOptions, TrainOptions)


def with_options(func):
    """Expand parameters annotated with an option group into that group's fields as options."""
    signature = inspect.signature(func)
    groups = {
        name: p.annotation for name, p in signature.parameters.items() if p.annotation in GROUPS
    }
    own = [p for name, p in signature.parameters.items() if name not in groups]
    expanded = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type
        )
        for group in groups.values()
        for f in fields(group)
    ]

    @functools.wraps(func)
    def command(**kwargs):
        for name, group in groups.items():
            kwargs[name] = group(**{f.name: kwargs.pop(f.name) for f in fields(group)})
        return func(**kwargs)

    params = own + expanded
    command.__signature__ = signature.replace(parameters=params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__  # typer must read the new signature, not the original one
    return command


def _without_num_processes(argv: list[str]) -> list[str]:
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


def parse_int_list(text: str, option: str) -> tuple[int, ...]:
    """'0,25,50' -> (0, 25, 50); anything else is a one-line error naming the option."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(
            f"{option} takes comma-separated integers like 0,25,50; got '{text}'"
        ) from None


@app.command()
@with_options
def decay(
    models: ModelOptions,
    sampling: SamplingOptions,
    run: RunOptions,
    dataset: Annotated[
        str | None, _opt("math500, aime24, amc23, gsm8k, toy, a hub id or a file.")
    ] = None,
    limit: Annotated[int | None, _opt("Use the first N problems.", min=1)] = None,
    samples: Annotated[int, _opt("Student samples per problem (avg@k).")] = 4,
    prefix_lengths: Annotated[str, _opt("Student prefix lengths, tokens.")] = "0,25,50,100,200,300",
    batch_size: Annotated[int, _opt("Rows per generation batch.")] = 64,
    extraction: Annotated[str, _opt("last_boxed, first_boxed or relaxed.")] = "last_boxed",
) -> None:
    """Finding 1: teacher accuracy when it continues from student prefixes of growing length."""
    from esr_lab.experiments import decay as experiment

    cfg = experiment.DecayConfig(
        pair=models.pair(),
        dataset=dataset,
        limit=limit,
        samples=samples,
        prefix_lengths=parse_int_list(prefix_lengths, "--prefix-lengths"),
        sampling=sampling.sampling(models.student),
        seed=run.seed,
        batch_size=batch_size,
        extraction=extraction,
    )
    run_dir, summary = experiment.run(
        cfg, run.results_dir, run.figures_dir, run.run_id, not run.quiet
    )
    experiment.print_summary(summary, run_dir)
    typer.echo(f"results: {run_dir.path}  figure: {run.figures_dir / 'decay.png'}")


@app.command()
@with_options
def train(
    models: ModelOptions,
    sampling: SamplingOptions,
    run: RunOptions,
    options: TrainOptions,
    n: Annotated[int | None, _opt("ESR window, tokens [paper: 100].")] = None,
    full: Annotated[bool, _opt("Full-rollout OPD instead of ESR.")] = False,
    selector: Annotated[str | None, _opt("Token selector (first_n, all, top_rkl, ...).")] = None,
    budget: Annotated[int | None, _opt("Positions per sequence for top-k selectors.")] = None,
    progressive: Annotated[
        str | None, _opt("ESR with N growing from START to END over training: START,END.")
    ] = None,
    num_processes: Annotated[
        int, _opt("Data-parallel processes, launched with accelerate (one per GPU).", min=1)
    ] = 1,
) -> None:
    """Distil the teacher into the student with ESR (first N tokens) or full OPD."""
    from esr_lab import distributed, loop

    if num_processes > 1 and distributed.group().world == 1:
        raise typer.Exit(distributed.relaunch(num_processes, _without_num_processes(sys.argv[1:])))
    from esr_lab.experiments.common import summary_table
    from esr_lab.figures import plot_training_curve

    chosen = selector or ("all" if full else "first_n")
    schedule = parse_int_list(progressive, "--progressive") if progressive else None
    if schedule is not None and len(schedule) != 2:
        raise UserError(f"--progressive takes START,END like 5,200; got '{progressive}'")
    cfg = options.config(
        models, sampling, run, n=n, selector=chosen, budget=budget, progressive=schedule
    )
    run_dir, summary, evals = loop.run(cfg, run.results_dir, run.run_id, not run.quiet)
    if not distributed.group().is_main:
        return  # the main process draws and reports
    plot_training_curve(evals, [run_dir.path / "curve.png"])
    from esr_lab.console import print_table

    print_table(summary_table(summary), f"Training, run {run_dir.run_id}")
    typer.echo(f"results: {run_dir.path}")


@app.command("eval")
@with_options
def eval_command(
    models: ModelOptions,
    sampling: SamplingOptions,
    run: RunOptions,
    model: Annotated[str, _opt("Model to evaluate: hub id, folder or toy name.")] = "toy-student",
    adapter: Annotated[str | None, _opt("LoRA adapter folder from esr-lab train.")] = None,
    dataset: Annotated[str | None, _opt("Eval set [default: math500 / toy test].")] = None,
    limit: Annotated[int | None, _opt("Use the first N problems.", min=1)] = None,
    samples: Annotated[int, _opt("Samples per problem (k).")] = 4,
    extraction: Annotated[str, _opt("last_boxed, first_boxed or relaxed.")] = "last_boxed",
    task: Annotated[
        str | None, _opt("math, humaneval or bfcl [default: from the dataset].")
    ] = None,
) -> None:
    """avg@k, pass@k and maj@k of a model (and adapter) on a dataset."""
    from esr_lab.experiments import evaluation

    cfg = evaluation.EvalConfig(
        model=model,
        adapter=adapter,
        pair=models.pair(),
        dataset=dataset,
        limit=limit,
        samples=samples,
        sampling=sampling.sampling(model),
        extraction=extraction,
        seed=run.seed,
        task=task,
    )
    run_dir, summary = evaluation.run(cfg, run.results_dir, run.run_id)
    evaluation.print_summary(summary, run_dir)
    typer.echo(f"results: {run_dir.path}")


@app.command("grade")
def grade_command(
    responses: Annotated[str, _opt("Responses (.jsonl): problem_id/task_id/id + response.")],
    task: Annotated[str, _opt("math, humaneval or bfcl.")] = "math",
    dataset: Annotated[
        str | None, _opt("Problems [default: math500, humaneval, bfcl by task].")
    ] = None,
    results_dir: Annotated[Path, _opt("Where run folders are written.")] = Path("results"),
    run_id: Annotated[str | None, _opt("Run name.")] = None,
) -> None:
    """Grade responses written by anything: accuracy, pass@k, BFCL name/full match."""
    from esr_lab.experiments import grade

    cfg = grade.GradeConfig(task=task, responses=responses, dataset=dataset)
    run_dir, summary = grade.run(cfg, results_dir, run_id)
    grade.print_summary(summary, run_dir)
    typer.echo(f"results: {run_dir.path}")


@app.command("sweep-n")
@with_options
def sweep_n(
    models: ModelOptions,
    sampling: SamplingOptions,
    run: RunOptions,
    options: TrainOptions,
    ns: Annotated[str | None, _opt("ESR windows to train [paper: 5,...,200].")] = None,
    full: Annotated[bool, _opt("Also train full OPD.")] = True,
    progressive: Annotated[bool, _opt("Also train a progressive-N schedule.")] = True,
) -> None:
    """Finding 3: best accuracy of ESR for several N, against full OPD and progressive N."""
    from esr_lab.console import print_table
    from esr_lab.experiments import sweep_n as experiment
    from esr_lab.experiments.common import summary_table

    preset = presets.defaults_for(models.student, "sweep_n", options.preset)
    chosen = parse_int_list(ns, "--ns") if ns else tuple(preset.get("ns", experiment.PAPER_NS))
    cfg = experiment.SweepConfig(
        base=options.config(models, sampling, run), ns=chosen, full=full, progressive=progressive
    )
    parent, summary = experiment.run(
        cfg, run.results_dir, run.figures_dir, run.run_id, not run.quiet
    )
    print_table(summary_table(summary), f"N sweep, run {parent.run_id}")
    typer.echo(f"results: {parent.path}  figure: {run.figures_dir / 'sweep_n.png'}")


@app.command("select")
@with_options
def select_command(
    models: ModelOptions,
    sampling: SamplingOptions,
    run: RunOptions,
    options: TrainOptions,
    budget: Annotated[int | None, _opt("Loss-carrying positions per rollout [paper: 100].")] = None,
    selectors: Annotated[str | None, _opt("Comma-separated selectors to compare.")] = None,
) -> None:
    """Finding 6: ESR against KL/entropy token selection with the same token budget."""
    from esr_lab.console import print_table
    from esr_lab.experiments import select as experiment
    from esr_lab.experiments.common import summary_table

    preset = presets.defaults_for(models.student, "select", options.preset)
    names = tuple(s.strip() for s in selectors.split(",")) if selectors else experiment.BASELINES
    cfg = experiment.SelectConfig(
        base=options.config(models, sampling, run),
        budget=budget or preset.get("budget", 100),
        selectors=names,
    )
    parent, summary, share = experiment.run(
        cfg, run.results_dir, run.figures_dir, run.run_id, not run.quiet
    )
    print_table(summary_table(summary), f"Token selection, run {parent.run_id}")
    typer.echo(f"top-{cfg.budget} RKL tokens hold {share * 100:.1f}% of the trajectory's loss")
    typer.echo(f"results: {parent.path}  figure: {run.figures_dir / 'select.png'}")


@app.command("ablate")
@with_options
def ablate_command(
    models: ModelOptions,
    sampling: SamplingOptions,
    run: RunOptions,
    options: TrainOptions,
    n: Annotated[int | None, _opt("ESR window, tokens [paper: 100].")] = None,
    differences: Annotated[
        str | None, _opt("Comma-separated recipe differences to switch on alone [default: all].")
    ] = None,
) -> None:
    """Full OPD and ESR under both recipes, and full OPD with each paper-code difference alone:
    which difference, if any, makes full OPD collapse."""
    from esr_lab.console import print_table
    from esr_lab.experiments import ablate as experiment

    if options.recipe is not None:
        raise UserError("ablate trains under both recipes; drop --recipe")
    preset = presets.defaults_for(models.student, "ablate", options.preset)
    names = differences.split(",") if differences else preset.get("differences", [])
    bases = {
        recipe: replace(options, recipe=recipe).config(models, sampling, run, n=n)
        for recipe in ("esr-lab", "paper-code")
    }
    cfg = experiment.AblateConfig(
        esr_lab=bases["esr-lab"],
        paper_code=bases["paper-code"],
        differences=tuple(name.strip() for name in names) or tuple(experiment.DIFFERENCES),
    )
    parent, summary = experiment.run(
        cfg, run.results_dir, run.figures_dir, run.run_id, not run.quiet
    )
    print_table(experiment.terminal_table(summary), f"Recipe ablation, run {parent.run_id}")
    for line in experiment.verdict(summary):
        typer.echo(line)
    typer.echo(f"results: {parent.path}  figure: {run.figures_dir / 'ablate.png'}")


@app.command("profile")
@with_options
def profile_command(
    models: ModelOptions,
    sampling: SamplingOptions,
    run: RunOptions,
    options: TrainOptions,
    ns: Annotated[str | None, _opt("ESR windows to profile against full OPD [paper: 100].")] = None,
    warmup: Annotated[int | None, _opt("Unmeasured steps before the measured --steps.")] = None,
) -> None:
    """Finding 8: per-phase wall time and peak memory of ESR(N) steps against full OPD."""
    from esr_lab.console import print_table
    from esr_lab.experiments import profile as experiment

    preset = presets.defaults_for(models.student, "profile", options.preset)
    base = options.config(models, sampling, run)
    cfg = experiment.ProfileConfig(
        base=base,
        ns=parse_int_list(ns, "--ns") if ns else tuple(preset.get("ns", [base.n or 100])),
        steps=options.steps if options.steps is not None else preset.get("steps", 3),
        warmup=warmup if warmup is not None else preset.get("warmup", 1),
    )
    run_dir, summary = experiment.run(
        cfg, run.results_dir, run.figures_dir, run.run_id, not run.quiet
    )
    print_table(experiment.paper_table(summary), f"Cost per step, run {run_dir.run_id}")
    typer.echo(f"results: {run_dir.path}  figure: {run.figures_dir / 'profile.png'}")


def preset_values(student: str, command: str, preset: str | None, **given) -> dict:
    """Options given on the command line, else the preset's; the rest stay Config defaults."""
    chosen = presets.defaults_for(student, command, preset)
    return {**chosen, **{k: v for k, v in given.items() if v is not None}}


ScanDataset = Annotated[str | None, _opt("Prompts [default: toy world's train split / math500].")]
ScanRollouts = Annotated[int | None, _opt("Student rollouts scanned [paper: 1000].")]
ScanPreset = Annotated[str | None, _opt("A preset in experiments/ (toy, paper-qwen, ...).")]
BinWidth = Annotated[int | None, _opt("Position bin width, tokens [paper: 50; toy: 10].")]


@app.command("positions")
@with_options
def positions_command(
    models: ModelOptions,
    sampling: SamplingOptions,
    run: RunOptions,
    dataset: ScanDataset = None,
    rollouts: ScanRollouts = None,
    bin_width: BinWidth = None,
    window: Annotated[int | None, _opt("ESR window to shade [default: the preset's N].")] = None,
    preset: ScanPreset = None,
) -> None:
    """Finding 4: per-position reverse KL, student and teacher entropy of student rollouts."""
    from esr_lab.experiments import positions as experiment

    n = presets.defaults_for(models.student, "train", preset).get("n", 100)
    values = preset_values(
        models.student, "positions", preset, rollouts=rollouts, bin_width=bin_width
    )
    cfg = experiment.PositionsConfig(
        pair=models.pair(),
        sampling=sampling.sampling(models.student),
        dataset=dataset,
        window=window or n,
        seed=run.seed,
        **values,
    )
    run_dir, bins = experiment.run(cfg, run.results_dir, run.figures_dir, run.run_id, not run.quiet)
    experiment.print_summary(bins, run_dir)
    typer.echo(f"results: {run_dir.path}  figure: {run.figures_dir / 'positions.png'}")


@app.command("suggest-n")
@with_options
def suggest_n_command(
    models: ModelOptions,
    sampling: SamplingOptions,
    run: RunOptions,
    dataset: ScanDataset = None,
    rollouts: ScanRollouts = None,
    threshold: Annotated[float | None, _opt("Share of the total KL the window holds.")] = None,
    preset: ScanPreset = None,
) -> None:
    """Finding 10: pick N where the first N positions hold 45% of the rollouts' KL."""
    from esr_lab.experiments import suggest_n as experiment

    values = preset_values(
        models.student, "suggest_n", preset, rollouts=rollouts, threshold=threshold
    )
    cfg = experiment.SuggestConfig(
        pair=models.pair(),
        sampling=sampling.sampling(models.student),
        dataset=dataset,
        seed=run.seed,
        **values,
    )
    run_dir, curve, summary = experiment.run(
        cfg, run.results_dir, run.figures_dir, run.run_id, not run.quiet
    )
    experiment.print_summary(curve, summary, run_dir)
    typer.echo(f"results: {run_dir.path}  figure: {run.figures_dir / 'suggest_n.png'}")


@app.command("tokens")
@with_options
def tokens_command(
    models: ModelOptions,
    sampling: SamplingOptions,
    run: RunOptions,
    dataset: ScanDataset = None,
    rollouts: ScanRollouts = None,
    edges: Annotated[str | None, _opt("Position bin edges [paper: 0,5,20,50,100,200].")] = None,
    min_count: Annotated[int | None, _opt("Occurrences for a top token [paper: 50].")] = None,
    top: Annotated[int, _opt("How many highest-KL tokens to list.")] = 20,
    categories: Annotated[Path | None, _opt('TOML file of category = "regex" lines.')] = None,
    preset: ScanPreset = None,
) -> None:
    """Finding 11: mean KL by token category x position bin, and the highest-KL tokens."""
    from esr_lab.experiments import tokens as experiment

    values = preset_values(
        models.student,
        "tokens",
        preset,
        rollouts=rollouts,
        min_count=min_count,
        edges=parse_int_list(edges, "--edges") if edges else None,
        categories=experiment.read_categories(categories) if categories else None,
    )
    values["edges"] = tuple(values.get("edges", experiment.PAPER_EDGES))
    cfg = experiment.TokensConfig(
        pair=models.pair(),
        sampling=sampling.sampling(models.student),
        dataset=dataset,
        top=top,
        seed=run.seed,
        **values,
    )
    run_dir, cells, top_tokens = experiment.run(
        cfg, run.results_dir, run.figures_dir, run.run_id, not run.quiet
    )
    experiment.print_summary(cells, top_tokens, run_dir, cfg.min_count)
    typer.echo(f"results: {run_dir.path}  figure: {run.figures_dir / 'tokens.png'}")


EsrCheckpoint = Annotated[
    str | None, _opt("ESR adapter folder from esr-lab train (trained with --n) [default: train].")
]


@app.command("cascade")
@with_options
def cascade_command(
    models: ModelOptions,
    sampling: SamplingOptions,
    run: RunOptions,
    options: TrainOptions,
    n: Annotated[int | None, _opt("ESR window, tokens [paper: 100].")] = None,
    esr_checkpoint: EsrCheckpoint = None,
    dataset: ScanDataset = None,
    rollouts: ScanRollouts = None,
    bin_width: BinWidth = None,
) -> None:
    """Finding 5: per-position KL before and after ESR training; the gap closed past N."""
    from esr_lab.experiments import cascade as experiment

    values = preset_values(
        models.student, "cascade", options.preset, rollouts=rollouts, bin_width=bin_width
    )
    cfg = experiment.CascadeConfig(
        base=options.config(models, sampling, run, n=n, selector="first_n"),
        esr_checkpoint=esr_checkpoint,
        dataset=dataset,
        **values,
    )
    run_dir, summary = experiment.run(
        cfg, run.results_dir, run.figures_dir, run.run_id, not run.quiet
    )
    experiment.print_summary(summary, run_dir)
    typer.echo(f"results: {run_dir.path}  figure: {run.figures_dir / 'cascade.png'}")


@app.command("submode")
@with_options
def submode_command(
    models: ModelOptions,
    sampling: SamplingOptions,
    run: RunOptions,
    options: TrainOptions,
    n: Annotated[int | None, _opt("ESR window, tokens [paper: 100].")] = None,
    esr_checkpoint: EsrCheckpoint = None,
    full_checkpoint: Annotated[
        str | None, _opt("Full-OPD adapter folder from esr-lab train --full [default: train].")
    ] = None,
    dataset: ScanDataset = None,
    rollouts: ScanRollouts = None,
    top_fraction: Annotated[float, _opt("Share of highest-KL positions examined.")] = 0.1,
) -> None:
    """Finding 7: sub-mode commitment on top-KL positions, and response lengths, per model."""
    from esr_lab.experiments import submode as experiment

    values = preset_values(models.student, "submode", options.preset, rollouts=rollouts)
    cfg = experiment.SubmodeConfig(
        base=options.config(models, sampling, run, n=n, selector="first_n"),
        esr_checkpoint=esr_checkpoint,
        full_checkpoint=full_checkpoint,
        dataset=dataset,
        top_fraction=top_fraction,
        **values,
    )
    run_dir, summary = experiment.run(
        cfg, run.results_dir, run.figures_dir, run.run_id, not run.quiet
    )
    experiment.print_summary(summary, run_dir, cfg.top_fraction)
    typer.echo(f"results: {run_dir.path}  figure: {run.figures_dir / 'submode.png'}")


@app.command("reproduce")
def reproduce_command(
    preset: Annotated[
        str, _opt("Preset in experiments/: toy, capable, micro, paper-qwen, paper-gemma.")
    ] = "toy",
    student: Annotated[str | None, _opt("Student [toy: toy-student; paper: required].")] = None,
    teacher: Annotated[str | None, _opt("Teacher [toy: toy-teacher; paper: required].")] = None,
    only: Annotated[str | None, _opt("Comma-separated steps to run (default: all).")] = None,
    results_dir: Annotated[Path, _opt("Where run folders are written.")] = Path("results"),
    figures_dir: Annotated[Path, _opt("Where figures are written.")] = Path("figures"),
    quiet: Annotated[bool, _opt("No progress bars.")] = False,
    export: Annotated[
        Path | None, _opt("Also copy the small result tables here (e.g. results/toy).")
    ] = None,
) -> None:
    """Every experiment in order on one pair; resumable (rerun the same command)."""
    from esr_lab.experiments import reproduce

    presets.load_preset(preset)  # an unknown preset fails before any work
    if preset not in toy.TOY_WORLDS and not (student and teacher):
        raise UserError(f"--preset {preset} needs --student and --teacher (hub ids or folders)")
    world = preset if preset in toy.TOY_WORLDS else None
    student = student or f"{world}-student"
    teacher = teacher or f"{world}-teacher"
    commands = typer.main.get_command(app).commands

    def invoke(step: str) -> None:
        args = [
            step,
            "--student",
            student,
            "--teacher",
            teacher,
            "--run-id",
            f"reproduce-{preset}",
            "--results-dir",
            str(results_dir),
            "--figures-dir",
            str(figures_dir),
        ]
        names = {p.name for p in commands[step].params}
        args += ["--preset", preset] if "preset" in names and world is None else []
        args += ["--quiet"] if quiet else []
        app(args, standalone_mode=False)

    reproduce.run(reproduce.pick_steps(only), invoke)
    from esr_lab import figures

    for path in figures.rebuild_all(results_dir, figures_dir):
        typer.echo(f"figure: {path}")
    if export is not None:
        copied = reproduce.export_summaries(results_dir, f"reproduce-{preset}", export)
        typer.echo(f"exported {len(copied)} files to {export}")


@app.command("plot")
def plot_command(
    results_dir: Annotated[Path, _opt("Results folder to read.")] = Path("results"),
    out: Annotated[Path, _opt("Folder for the figures.")] = Path("figures"),
) -> None:
    """Rebuild every figure from saved results alone (no model is loaded)."""
    from esr_lab import figures

    written = figures.rebuild_all(results_dir, out)
    if not written:
        raise UserError(
            f"no finished runs in '{results_dir}' to plot; run an experiment first "
            "(e.g. esr-lab decay) or pass --results-dir"
        )
    for path in written:
        typer.echo(f"wrote {path}")


@app.command("build-toy")
def build_toy(
    world: Annotated[str, typer.Argument(help="toy, capable or micro.")] = "toy",
    out: Annotated[Path | None, _opt("Folder [default: the cache].")] = None,
    seed: Annotated[int, _opt("Seed of the whole build.")] = 0,
) -> None:
    """Train a toy world's teacher and student (deterministic from the seed; capable starts from
    the toy world's teacher)."""
    from esr_lab import toy

    facts = toy.build_into(world, out or toy.cached_world_dir(world), seed=seed)
    for key, value in facts.items():
        typer.echo(f"{key}: {value}")


def main() -> None:
    """Console entry point: one line and exit 2 for every user mistake."""
    try:
        app(standalone_mode=False)
    except typer.Exit as stop:
        sys.exit(stop.exit_code)
    except typer.TyperException as err:  # typer's own usage errors: bad option values
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        if message:  # empty for "no arguments": the help text has been shown already
            print(f"esr-lab: error: {message.splitlines()[0]}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 2))
    except UserError as err:
        print(f"esr-lab: error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as err:
        print(f"esr-lab: training diverged: {err}", file=sys.stderr)
        sys.exit(1)
    except (KeyboardInterrupt, typer.Abort):
        print("esr-lab: interrupted; rerun with the same --run-id to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
