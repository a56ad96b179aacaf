"""The `esr-lab` command: one subcommand per experiment, plus reproduce, plot and build-toy.

The subcommands are built from the experiment registry (`esr_lab.experiments.registry`): each
experiment's own options and the option groups it takes become typer options, and the command
configures, runs and summarises the experiment. User mistakes print one line and exit 2.
"""

import inspect
import sys
from pathlib import Path
from typing import Annotated

import typer

from esr_lab import options, presets, toy
from esr_lab.errors import TrainingDiverged, UserError
from esr_lab.experiments import registry
from esr_lab.options import opt

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Reproduce and extend Early Stopping Rollout (ESR) for on-policy distillation.",
)


def run_experiment(experiment: registry.Experiment, values: dict) -> registry.Result | None:
    """Configure, run and summarise `experiment` from flat option values."""
    own, given = options.split(values, experiment.options, experiment.groups)
    cfg = experiment.configure(own, given)
    paths = given.paths(own)
    result = experiment.run(cfg, paths)
    if result is None:  # a worker process of a distributed run: the main one reports
        return None
    experiment.print_summary(result)
    figure = f"  figure: {result.figure}" if result.figure is not None else ""
    typer.echo(f"results: {result.run_dir.path}{figure}")
    return result


def add_command(experiment: registry.Experiment) -> None:
    """Register `experiment` as a subcommand whose parameters are its options' fields."""
    option_classes = (experiment.options, *experiment.groups)

    def command(**values) -> None:
        run_experiment(experiment, values)

    command.__signature__ = inspect.Signature(options.parameters(option_classes))
    app.command(experiment.command, help=experiment.help)(command)


for _experiment in registry.experiments():
    add_command(_experiment)


@app.command("reproduce")
def reproduce_command(
    preset: Annotated[
        str, opt("Preset in experiments/: toy, capable, micro, paper-qwen, paper-gemma.")
    ] = "toy",
    student: Annotated[str | None, opt("Student [toy: toy-student; paper: required].")] = None,
    teacher: Annotated[str | None, opt("Teacher [toy: toy-teacher; paper: required].")] = None,
    only: Annotated[str | None, opt("Comma-separated steps to run (default: all).")] = None,
    results_dir: Annotated[Path, opt("Where run folders are written.")] = Path("results"),
    figures_dir: Annotated[Path, opt("Where figures are written.")] = Path("figures"),
    quiet: Annotated[bool, opt("No progress bars.")] = False,
    export: Annotated[
        Path | None, opt("Also copy the small result tables here (e.g. results/toy).")
    ] = None,
) -> None:
    """Every experiment in order on one pair; resumable (rerun the same command)."""
    from esr_lab import figures
    from esr_lab.experiments import reproduce

    presets.load_preset(preset)  # an unknown preset fails before any work
    if preset not in toy.TOY_WORLDS and not (student and teacher):
        raise UserError(f"--preset {preset} needs --student and --teacher (hub ids or folders)")
    world = preset if preset in toy.TOY_WORLDS else None
    given = {
        "student": student or f"{world}-student",
        "teacher": teacher or f"{world}-teacher",
        "run_id": f"reproduce-{preset}",
        "results_dir": results_dir,
        "figures_dir": figures_dir,
        "quiet": quiet,
    }

    def invoke(experiment: registry.Experiment) -> None:
        values = options.defaults((experiment.options, *experiment.groups))
        values.update(given)
        if world is None and "preset" in values:  # a toy student finds its world's preset
            values["preset"] = preset
        run_experiment(experiment, values)

    reproduce.run(reproduce.pick_steps(only, registry.reproduction_steps()), invoke)
    for path in figures.rebuild_all(results_dir, figures_dir):
        typer.echo(f"figure: {path}")
    if export is not None:
        copied = reproduce.export_summaries(results_dir, f"reproduce-{preset}", export)
        typer.echo(f"exported {len(copied)} files to {export}")


@app.command("plot")
def plot_command(
    results_dir: Annotated[Path, opt("Results folder to read.")] = Path("results"),
    out: Annotated[Path, opt("Folder for the figures.")] = Path("figures"),
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
    out: Annotated[Path | None, opt("Folder [default: the cache].")] = None,
    seed: Annotated[int, opt("Seed of the whole build.")] = 0,
) -> None:
    """Train a toy world's teacher and student (deterministic from the seed; capable starts from
    the toy world's teacher)."""
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
