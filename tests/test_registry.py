"""The experiment contract: a new finding is one new module. The CLI, `reproduce` and `plot`
find it through the registry, with no edit to cli.py, records.py, figures.py or reproduce.py."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

from esr_lab import options
from esr_lab.experiments import registry

HELLO = textwrap.dedent(
    '''
    """A made-up finding: how often a greeting is repeated."""

    from __future__ import annotations

    from dataclasses import asdict, dataclass
    from typing import Annotated

    import pandas as pd

    from esr_lab.errors import UserError
    from esr_lab.experiments.registry import Experiment, Figure, Paths, ExperimentResult
    from esr_lab.options import Given, RunOptions, opt
    from esr_lab.records import declare, open_run, write_table

    SCHEMAS = declare({"hello_summary": ("run_id", "greeting", "times")})


    def plot_hello(summary: pd.DataFrame, paths: list) -> None:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(summary.to_csv(index=False))


    FIGURE = Figure("hello.txt", ("summary.parquet",), plot_hello)


    @dataclass(frozen=True)
    class Config:
        greeting: str = "hello"
        times: int = 1

        def resolved(self) -> Config:
            if self.times < 1:
                raise UserError(f"--times must be at least 1, got {self.times}")
            return self


    @dataclass
    class Options:
        times: Annotated[int, opt("How many times.")] = 1


    def configure(options: Options, given: Given) -> Config:
        return Config(times=options.times)


    def run(cfg: Config, paths: Paths) -> ExperimentResult:
        cfg = cfg.resolved()
        run_dir = open_run(paths.results_dir, "hello", asdict(cfg), paths.run_id)
        summary = pd.DataFrame([{"run_id": run_dir.run_id, **asdict(cfg)}])
        write_table(run_dir.path / "summary.parquet", summary, "hello_summary")
        figure = FIGURE.save(run_dir.path, paths)
        return ExperimentResult(run_dir, {"summary": summary}, figure)


    def print_summary(result: ExperimentResult) -> None:
        row = result.tables["summary"].iloc[0]
        print(f"{row.greeting} x {row.times}")


    EXPERIMENT = Experiment(
        command="hello",
        folder="hello",
        help="A finding added as one module.",
        options=Options,
        groups=(RunOptions,),
        configure=configure,
        run=run,
        print_summary=print_summary,
        figure=FIGURE,
        finding="99 greetings",
        step=99,
    )
    '''
)

DRIVER = textwrap.dedent(
    """
    import sys
    import esr_lab.experiments
    esr_lab.experiments.__path__.append(sys.argv[1])  # the new module, outside the package
    from esr_lab.cli import main
    from esr_lab.experiments import registry, reproduce
    if sys.argv[2] == "steps":
        print([step.command for step in reproduce.pick_steps(None, registry.reproduction_steps())])
    else:
        sys.argv = ["esr-lab", *sys.argv[2:]]
        main()
    """
)


def esr_lab(plugins: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(plugins), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_new_experiment_module_is_a_command_a_reproduce_step_and_a_figure(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "hello.py").write_text(HELLO)
    results, figures = tmp_path / "results", tmp_path / "figures"

    listed = esr_lab(plugins, "--help")
    assert "hello" in listed.stdout and "A finding added as one module." in listed.stdout

    ran = esr_lab(
        plugins, "hello", "--times", "3", "--results-dir", str(results), "--figures-dir",
        str(figures), "--run-id", "r1",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "hello x 3" in ran.stdout
    assert f"results: {results / 'hello' / 'r1'}  figure: {figures / 'hello.txt'}" in ran.stdout

    bad = esr_lab(plugins, "hello", "--times", "0", "--results-dir", str(results))
    assert (
        bad.returncode == 2
        and bad.stderr.strip() == "esr-lab: error: --times must be at least 1, got 0"
    )

    redrawn = esr_lab(plugins, "plot", "--results-dir", str(results), "--out", str(tmp_path / "p"))
    assert redrawn.returncode == 0, redrawn.stderr
    assert (tmp_path / "p" / "hello.txt").read_text() == (figures / "hello.txt").read_text()

    steps = esr_lab(plugins, "steps")
    assert steps.stdout.strip().endswith("'ablate', 'hello']")


def test_every_shipped_experiment_follows_the_contract():
    found = registry.experiments()
    commands = [e.command for e in found]
    assert len(commands) == len(set(commands))
    for experiment in found:
        assert experiment.help and experiment.folder
        # configure builds a frozen Config with a resolved() from the options' defaults
        defaults = options.defaults((experiment.options, *experiment.groups))
        cfg = experiment.configure(*options.split(defaults, experiment.options, experiment.groups))
        assert dataclasses.is_dataclass(cfg) and cfg.__dataclass_params__.frozen
        assert callable(cfg.resolved), experiment.command
    steps = [e.command for e in registry.reproduction_steps()]
    assert steps == [
        "decay", "positions", "suggest-n", "tokens", "sweep-n", "select", "cascade", "submode",
        "profile", "ablate",
    ]  # fmt: skip
