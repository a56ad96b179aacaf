"""`esr-lab grade`: grade responses written by anything (another sampler, an API, a person).

Reads one row per response, with the problem's id (`problem_id`, `task_id` or `id`) and the
text (`response`, or `completion` as esr-lab's own sample tables name it); several rows per id
are several samples (pass@k). Writes `results/grade/<run>/samples.parquet` (per-sample grades)
and `summary.parquet` (accuracy; pass@k; name/full match for BFCL).
Command: esr-lab grade --task humaneval --responses responses.jsonl
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from esr_lab import tasks
from esr_lab.console import print_table
from esr_lab.data import LOCAL_SUFFIXES, read_table_file
from esr_lab.errors import UserError
from esr_lab.records import SCHEMAS, RunDir, open_run, write_table

ID_COLUMNS = ("problem_id", "task_id", "id")
RESPONSE_COLUMNS = ("response", "completion")


@dataclass(frozen=True)
class GradeConfig:
    task: str = "math"
    responses: str = "responses.jsonl"
    dataset: str | None = None  # default: the task's benchmark


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


def write_graded(
    run_dir: RunDir, task: str, dataset: str, samples: pd.DataFrame, problems: list
) -> pd.DataFrame:
    """Grade, write samples.parquet and summary.parquet; returns the one-row summary."""
    graded = tasks.grade(task, samples, problems)
    graded.insert(0, "run_id", run_dir.run_id)
    write_table(run_dir.path / "samples.parquet", graded, f"graded_{task}")
    row = {"run_id": run_dir.run_id, "task": task, "dataset": dataset}
    summary = pd.DataFrame([{**row, **tasks.metrics(task, graded)}])
    summary = summary.reindex(columns=list(SCHEMAS["grade_summary"]))
    write_table(run_dir.path / "summary.parquet", summary, "grade_summary")
    return summary


def run(cfg: GradeConfig, results_dir: Path = Path("results"), run_id: str | None = None):
    """Read, check, grade and summarise the responses; returns the run folder and summary."""
    task = tasks.get_task(cfg.task)
    samples = read_responses(cfg.responses)
    dataset = cfg.dataset or task.default_dataset
    problems = tasks.load_task_problems(cfg.task, dataset)
    check_ids(samples, problems, dataset)
    run_dir = open_run(results_dir, "grade", dict(asdict(cfg), dataset=dataset), run_id)
    return run_dir, write_graded(run_dir, cfg.task, dataset, samples, problems)


def print_summary(summary: pd.DataFrame, run_dir: RunDir) -> None:
    """Percentages of the metrics this task has, and the counts."""
    row = summary.iloc[0]
    shown = {"task": row.task, "dataset": Path(str(row.dataset)).name}
    names = {"accuracy": "accuracy %", "name_match": "name match %", "full_match": "full match %"}
    if row.k > 1:
        names |= {"pass_at_k": f"pass@{int(row.k)} %", "maj_at_k": f"maj@{int(row.k)} %"}
    shown |= {label: row[key] * 100 for key, label in names.items() if pd.notna(row[key])}
    shown |= {"problems": int(row.n_problems), "samples": int(row.n_samples)}
    print_table(pd.DataFrame([shown]), f"Grades, run {run_dir.run_id}")
