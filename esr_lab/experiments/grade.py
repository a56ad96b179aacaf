"""`esr-lab grade`: grade responses written by anything (another sampler, an API, a person).

Reads one row per response, with the problem's id (`problem_id`, `task_id` or `id`) and the
text (`response`, or `completion` as esr-lab's own sample tables name it); several rows per id
are several samples (pass@k). Writes `results/grade/<run>/samples.parquet` (per-sample grades)
and `summary.parquet` (avg@k; pass@k; name/full match for BFCL). `--protocol` picks whose
grade is `correct` (chat: esr-lab's, paper: the released code's; README, Tasks); the summary
shown has both where the responses can be read both ways.
Command: esr-lab grade --task humaneval --responses responses.jsonl --protocol paper
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import pandas as pd

from esr_lab import tasks
from esr_lab.data import LOCAL_SUFFIXES, read_table_file
from esr_lab.errors import UserError
from esr_lab.experiments.registry import Experiment, ExperimentResult, Paths
from esr_lab.options import Given, opt
from esr_lab.records import open_run

ID_COLUMNS = ("problem_id", "task_id", "id")
RESPONSE_COLUMNS = ("response", "completion")


@dataclass(frozen=True)
class GradeConfig:
    task: str = "math"
    responses: str = "responses.jsonl"
    dataset: str | None = None  # default: the task's benchmark
    protocol: str = "chat"  # chat or paper (tasks.PROTOCOLS)

    def resolved(self) -> GradeConfig:
        tasks.prompting(self.task, self.protocol)  # an unknown task or protocol: one line
        dataset = self.dataset or tasks.get_task(self.task).default_dataset
        return GradeConfig(self.task, self.responses, dataset, self.protocol)


def _first_present(columns: list[str], wanted: tuple[str, ...], path: str) -> str:
    found = next((c for c in wanted if c in columns), None)
    if found is None:
        raise UserError(
            f"{path} has no column {' or '.join(wanted)}; columns: {', '.join(columns) or 'none'}"
        )
    return found


def read_responses(path: str) -> pd.DataFrame:
    """problem_id, sample and completion of every response in a .jsonl/.json/.parquet/.csv."""
    file = Path(path).expanduser()
    if not file.is_file() or not file.name.lower().endswith(LOCAL_SUFFIXES):
        raise UserError(f"no responses file {path!r}; pass a {'/'.join(LOCAL_SUFFIXES)} file")
    frame = pd.DataFrame(read_table_file(file))
    if frame.empty:
        raise UserError(f"{path} has no responses")
    id_col = _first_present(list(frame.columns), ID_COLUMNS, path)
    text_col = _first_present(list(frame.columns), RESPONSE_COLUMNS, path)
    ids = frame[id_col].astype(str)
    samples = frame["sample"] if "sample" in frame else ids.groupby(ids).cumcount()
    return pd.DataFrame(
        {
            "problem_id": ids,
            "sample": samples.astype(int),
            "completion": frame[text_col].fillna("").astype(str),
        }
    )


def check_ids(samples: pd.DataFrame, problems: list, dataset: str) -> None:
    known = {p.id for p in problems}
    unknown = [pid for pid in dict.fromkeys(samples.problem_id) if pid not in known]
    if unknown:
        raise UserError(
            f"{len(unknown)} response id(s) not in {dataset}, e.g. {unknown[0]!r}; "
            "ids must match the dataset's (pass --dataset for another set)"
        )


@dataclass
class Options:
    responses: Annotated[str, opt("Responses (.jsonl): problem_id/task_id/id + response.")]
    task: Annotated[str, opt("math, humaneval or bfcl.")] = "math"
    dataset: Annotated[str | None, opt("Problems [default: math500, humaneval, bfcl by task].")] = (
        None
    )
    protocol: Annotated[
        str, opt("chat (esr-lab's grader) or paper (the released code's; humaneval, bfcl).")
    ] = "chat"
    results_dir: Annotated[Path, opt("Where run folders are written.")] = Path("results")
    run_id: Annotated[str | None, opt("Run name.")] = None


def configure(options: Options, given: Given) -> GradeConfig:
    return GradeConfig(options.task, options.responses, options.dataset, options.protocol)


def run(cfg: GradeConfig, paths: Paths) -> ExperimentResult:
    """Read, check, grade and summarise the responses; returns the run folder and summary."""
    cfg = cfg.resolved()
    samples = read_responses(cfg.responses)
    problems = tasks.load_task_problems(cfg.task, cfg.dataset, protocol=cfg.protocol)
    check_ids(samples, problems, cfg.dataset)
    run_dir = open_run(paths.results_dir, "grade", asdict(cfg), paths.run_id)
    summary = tasks.write_graded(run_dir, cfg.task, cfg.dataset, samples, problems, cfg.protocol)
    return ExperimentResult(run_dir, {"summary": summary})


def print_summary(result: ExperimentResult) -> None:
    """The grades table, shared with `esr-lab eval`."""
    tasks.print_summary(result.tables["summary"], result.run_dir)


EXPERIMENT = Experiment(
    command="grade",
    folder="grade",
    help="Grade responses written by anything: accuracy, pass@k, BFCL name/full match.",
    options=Options,
    groups=(),
    configure=configure,
    run=run,
    print_summary=print_summary,
    order=40,
)
