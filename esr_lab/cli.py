"""The `esr-lab` command: one subcommand per experiment, plus reproduce, plot and build-toy.

The subcommands are built from the experiment registry (`esr_lab.experiments.registry`): each
experiment's own options and the option groups it takes become typer options, and the command
configures, runs and summarises the experiment. User mistakes print one line and exit 2;
Ctrl-C and SIGTERM print one line with the command that resumes and exit 130 / 143.
"""

import functools
import inspect
import sys
from pathlib import Path
from typing import Annotated

import typer

from esr_lab import interrupts, options, presets, toy
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


def run_experiment(
    experiment: registry.Experiment, values: dict
) -> registry.ExperimentResult | None:
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


def interruptible(takes_run_id: bool):
    """Turn Ctrl-C / SIGTERM inside a command into `interrupts.Stopped`, which carries the exit
    code and the resume line past typer (typer would return a KeyboardInterrupt's code as a
    value, and `main` would then exit 0)."""

    def wrap(function):
        @functools.wraps(function)
        def wrapped(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except KeyboardInterrupt as interrupt:
                raise interrupts.message(interrupt, sys.argv[1:], takes_run_id) from None

        return wrapped

    return wrap


def add_command(experiment: registry.Experiment) -> None:
    """Register `experiment` as a subcommand whose parameters are its options' fields."""
    option_classes = (experiment.options, *experiment.groups)
    parameters = options.parameters(option_classes)

    @interruptible(takes_run_id=any(p.name == "run_id" for p in parameters))
    def command(**values) -> None:
        run_experiment(experiment, values)

    command.__signature__ = inspect.Signature(parameters)
    # short_help whole: click would cut the summary in the command list with "..."
    app.command(experiment.command, help=experiment.help, short_help=experiment.help)(command)


for _experiment in registry.experiments():
    add_command(_experiment)


@app.command(
    "reproduce",
    short_help="Every experiment in order on one pair; resumable (rerun the same command).",
)
@interruptible(takes_run_id=False)  # its run ids are fixed: the same command resumes
def reproduce_command(
    preset: Annotated[
        str, opt("Preset in experiments/: toy, capable, micro, paper-qwen, paper-gemma.")
    ] = "toy",
    student: Annotated[str | None, opt("Student [toy: toy-student; paper: required].")] = None,
    teacher: Annotated[str | None, opt("Teacher [toy: toy-teacher; paper: required].")] = None,
    only: Annotated[str | None, opt("Comma-separated steps to run (default: all).")] = None,
    results_dir: Annotated[Path, opt("Where run folders are written.")] = Path("results"),
    figures_dir: Annotated[
        Path | None,
        opt("Also redraw every figure here at the end (e.g. figures) [default: run folders only]."),
    ] = None,
    quiet: Annotated[bool, opt("No progress bars.")] = False,
    seeds: Annotated[
        str | None,
        opt("Train every variant once per seed (0,1,2, or a count) [default: seed 0 alone]."),
    ] = None,
    jobs: Annotated[int, opt("Training runs at once, each in its own process.", min=1)] = 1,
    export: Annotated[
        Path | None, opt("Also copy the small result tables here (e.g. results/toy).")
    ] = None,
) -> None:
    """Every experiment in order on one pair; resumable (rerun the same command)."""
    from esr_lab.experiments import reproduce

    presets.load_preset(preset)  # an unknown preset fails before any work
    options.writable_folder(results_dir, "--results-dir")
    if figures_dir is not None:
        options.writable_folder(figures_dir, "--figures-dir")
    if export is not None:
        options.writable_folder(export, "--export")
    if preset not in toy.TOY_WORLDS and not (student and teacher):
        raise UserError(f"--preset {preset} needs --student and --teacher (hub ids or folders)")
    world = preset if preset in toy.TOY_WORLDS else None
    replicated = options.parse_seeds(seeds)  # a bad list fails before any work
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
        if options.SeedOptions in experiment.groups:
            values.update(seeds=seeds, jobs=jobs)
            if replicated is not None:  # its own run id: a seeded step has another config
                values["run_id"] = seeded_run_id(given["run_id"], replicated)
        if world is None and "preset" in values:  # a toy student finds its world's preset
            values["preset"] = preset
        run_experiment(experiment, values)

    reproduce.run(reproduce.pick_steps(only, registry.reproduction_steps()), invoke)
    if figures_dir is not None:
        for path in registry.rebuild_all(results_dir, figures_dir):
            typer.echo(f"figure: {path}")
    if export is not None:
        run_ids = {f"reproduce-{preset}"}
        if replicated is not None:
            run_ids.add(seeded_run_id(f"reproduce-{preset}", replicated))
        copied = [
            path
            for run_id in sorted(run_ids)
            for path in reproduce.export_summaries(results_dir, run_id, export)
        ]
        typer.echo(f"exported {len(copied)} files to {export}")


def seeded_run_id(run_id: str, seeds: tuple[int, ...]) -> str:
    """The fixed run id of a reproduce step trained over seeds: reproduce-toy-seeds-0-1-2."""
    return f"{run_id}-seeds-{'-'.join(map(str, seeds))}"


@app.command(
    "plot", short_help="Rebuild every figure from saved results alone (no model is loaded)."
)
def plot_command(
    results_dir: Annotated[Path, opt("Results folder to read.")] = Path("results"),
    out: Annotated[Path, opt("Folder for the figures.")] = Path("figures"),
) -> None:
    """Rebuild every figure from saved results alone (no model is loaded)."""
    if not Path(results_dir).is_dir():
        raise UserError(f"--results-dir {results_dir} is not a folder; pass a results folder")
    written = registry.rebuild_all(results_dir, options.writable_folder(out, "--out"))
    if not written:
        raise UserError(
            f"no finished runs in '{results_dir}' to plot; run an experiment first "
            "(e.g. esr-lab decay) or pass --results-dir"
        )
    for path in written:
        typer.echo(f"wrote {path}")


@app.command(
    "build-toy",
    short_help="Train a toy world's teacher and student (deterministic from the seed).",
)
def build_toy(
    world: Annotated[str, typer.Argument(help="toy, capable, runon or micro.")] = "toy",
    out: Annotated[Path | None, opt("Folder [default: the cache].")] = None,
    seed: Annotated[int, opt("Seed of the whole build.")] = 0,
) -> None:
    """Train a toy world's teacher and student (deterministic from the seed; capable starts from
    the toy world's teacher)."""
    facts = toy.build_into(world, out or toy.cached_world_dir(world), seed=seed)
    for key, value in facts.items():
        typer.echo(f"{key}: {value}")


def main() -> None:
    """Console entry point: one line and exit 2 for every user mistake, 130 / 143 with the
    command that resumes for Ctrl-C / SIGTERM, the command list for a bare `esr-lab`."""
    interrupts.install_sigterm()
    try:
        if len(sys.argv) < 2:  # click would print a usage error without the commands
            app(["--help"], prog_name="esr-lab", standalone_mode=False)
            sys.exit(0)
        code = app(prog_name="esr-lab", standalone_mode=False)
    except interrupts.Stopped as stop:
        print(f"esr-lab: {stop.line}", file=sys.stderr)
        sys.exit(stop.exit_code)
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
    except (KeyboardInterrupt, typer.Abort) as interrupt:  # outside a command: nothing ran yet
        stop = interrupts.message(
            interrupt if isinstance(interrupt, KeyboardInterrupt) else KeyboardInterrupt(),
            sys.argv[1:],
            takes_run_id=False,
        )
        print(f"esr-lab: {stop.line}", file=sys.stderr)
        sys.exit(stop.exit_code)
    if isinstance(code, int) and code == 130:  # typer caught an interrupt outside a command
        print("esr-lab: stopped by Ctrl-C (SIGINT)", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
