"""The `esr-lab` command: one subcommand per paper finding, plus the toy world's build.

Each subcommand parses options into an experiment's Config and calls its `run`; all the work
lives in `esr_lab.experiments` and the core modules. User mistakes print one line and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from esr_lab.config import ModelPair, Sampling, default_max_new_tokens
from esr_lab.errors import UserError
from esr_lab.prompts import DEFAULT_INSTRUCTION

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Reproduce and extend Early Stopping Rollout (ESR) for on-policy distillation.",
)

Student = Annotated[str, typer.Option(help="Hub id, local folder, or toy name (toy-student).")]
Teacher = Annotated[str, typer.Option(help="Hub id, local folder, or toy name (toy-teacher).")]
Device = Annotated[str, typer.Option(help="auto (GPU if present), cpu, cuda, cuda:N.")]
Dtype = Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16.")]
Instruction = Annotated[str, typer.Option(help="Instruction appended to every problem.")]
Thinking = Annotated[bool, typer.Option(help="Qwen3 thinking mode in the chat template.")]
Seed = Annotated[int, typer.Option(help="Seed; every sample's seed derives from it.")]
ResultsDir = Annotated[Path, typer.Option(help="Where run folders are written.")]
FiguresDir = Annotated[Path, typer.Option(help="Where figures are written.")]
RunId = Annotated[str | None, typer.Option(help="Name of the run; an existing one resumes.")]
Temperature = Annotated[float, typer.Option(min=0.0, help="Sampling temperature (0: greedy).")]
TopP = Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling mass.")]
MaxNew = Annotated[
    int | None, typer.Option(min=1, help="Response token budget [default: 400 toy, 4096 real].")
]
Quiet = Annotated[bool, typer.Option(help="No progress bar.")]


def _pair(student, teacher, device, dtype, instruction, thinking) -> ModelPair:
    return ModelPair(student, teacher, device, dtype, instruction, thinking)


def _sampling(student: str, temperature: float, top_p: float, max_new: int | None) -> Sampling:
    return Sampling(temperature, top_p, max_new or default_max_new_tokens(student))


def parse_int_list(text: str, option: str) -> tuple[int, ...]:
    """'0,25,50' -> (0, 25, 50); anything else is a one-line error naming the option."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"{option} takes comma-separated integers like 0,25,50; got '{text}'")


@app.command()
def decay(
    student: Student = "toy-student",
    teacher: Teacher = "toy-teacher",
    dataset: Annotated[
        str | None, typer.Option(help="math500, aime24, amc23, gsm8k, toy, a hub id or a file.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Use the first N problems.")] = None,
    samples: Annotated[int, typer.Option(help="Student samples per problem (avg@k).")] = 4,
    prefix_lengths: Annotated[str, typer.Option(help="Student prefix lengths, tokens.")] = (
        "0,25,50,100,200,300"
    ),
    temperature: Temperature = 0.7,
    top_p: TopP = 1.0,
    max_new_tokens: MaxNew = None,
    batch_size: Annotated[int, typer.Option(help="Rows per generation batch.")] = 64,
    extraction: Annotated[str, typer.Option(help="last_boxed, first_boxed or relaxed.")] = (
        "last_boxed"
    ),
    device: Device = "auto",
    dtype: Dtype = "auto",
    instruction: Instruction = DEFAULT_INSTRUCTION,
    thinking: Thinking = False,
    seed: Seed = 0,
    results_dir: ResultsDir = Path("results"),
    figures_dir: FiguresDir = Path("figures"),
    run_id: RunId = None,
    quiet: Quiet = False,
) -> None:
    """Finding 1: teacher accuracy when it continues from student prefixes of growing length."""
    from esr_lab.experiments import decay as experiment

    cfg = experiment.DecayConfig(
        pair=_pair(student, teacher, device, dtype, instruction, thinking),
        dataset=dataset,
        limit=limit,
        samples=samples,
        prefix_lengths=parse_int_list(prefix_lengths, "--prefix-lengths"),
        sampling=_sampling(student, temperature, top_p, max_new_tokens),
        seed=seed,
        batch_size=batch_size,
        extraction=extraction,
    )
    run_dir, summary = experiment.run(cfg, results_dir, figures_dir, run_id, not quiet)
    experiment.print_summary(summary, run_dir)
    typer.echo(f"results: {run_dir.path}  figure: {figures_dir / 'decay.png'}")


@app.command("build-toy")
def build_toy(
    world: Annotated[str, typer.Argument(help="toy or micro.")] = "toy",
    out: Annotated[Path | None, typer.Option(help="Folder [default: the cache].")] = None,
    seed: Seed = 0,
) -> None:
    """Train the toy world's teacher and student from scratch (deterministic from the seed)."""
    from esr_lab.toy import build

    facts = build.build_world(world, out or build.world_dir(world), seed=seed)
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
    except (KeyboardInterrupt, typer.Abort):
        print("esr-lab: interrupted; rerun with the same --run-id to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
