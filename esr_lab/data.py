"""Prompt sets: the paper's benchmarks by alias, the toy world, or any local file or hub dataset.

Everything becomes a list of `Problem(id, problem, answer)` with the answer as a string that
`grading.grade_math` accepts as gold. Answers stored as worked solutions are reduced to the final
answer: GSM8K's text after "####" (commas removed) or the last \\boxed{} of a solution; rows
where no answer can be found are dropped, as the paper does for NuminaMath.

Training prompts need no answer (OPD grades nothing): the code and function-calling training
sets (`codeultrafeedback`, `glaive-fc`) have none, and `require_answer=False` accepts any file
without one. Their answer is "".

The four fixed evaluation sets (MATH-500, AIME24, AMC23, the GSM8K test split) ship with the
package (`esr_lab/data_files/benchmarks/`, origins and licences in its README.md): their aliases
read those copies, so evaluation needs no network and cannot drift; their hub ids
(`HuggingFaceH4/MATH-500`, ...) still load from the hub.

Every mistake a user can make here (bad path, bad column, unreadable or malformed file,
unreachable hub id) is a one-line UserError that names the file and says what would work.
"""

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from esr_lab import arithmetic
from esr_lab.errors import UserError
from esr_lab.grading import extract_boxed
from esr_lab.toy import TOY_WORLDS

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
PROBLEM_COLUMNS = ("problem", "question", "prompt")
ANSWER_COLUMNS = ("answer", "expected_answer", "final_answer")
SOLUTION_COLUMNS = ("solution",)
ID_COLUMNS = ("unique_id", "id", "idx")


@dataclass(frozen=True)
class Problem:
    """One prompt and its gold answer; id is stable across runs so results can be joined."""

    id: str
    problem: str
    answer: str


@dataclass(frozen=True)
class DatasetSpec:
    """Where an alias lives on the hub and how its answer column becomes a bare answer.

    extract: "auto" (text after "####" or the last \\boxed{} if present, else the value),
    "####" (GSM8K) or "boxed" (last \\boxed{} of a solution; rows without one are dropped).
    """

    hub_id: str
    split: str
    problem_column: str
    answer_column: str | None  # None: prompts only, no gold answer
    config: str | None = None
    extract: str = "auto"
    prompt_of: Callable[[dict], str | None] | None = None  # a prompt built from the whole row
    shipped: str | None = None  # the package's copy (data_files/benchmarks/), read instead


_TURN_RE = re.compile(r"USER:\s*(.*?)(?=\n\s*(?:ASSISTANT|FUNCTION RESPONSE|USER):|\Z)", re.DOTALL)


def glaive_prompt(row: dict) -> str | None:
    """glaive-function-calling-v2: its system text (the functions on offer), then the first
    USER turn of its chat; None when the chat has no user turn."""
    turn = _TURN_RE.search(str(row.get("chat") or ""))
    if turn is None or not turn.group(1).strip():
        return None
    system = str(row.get("system") or "").strip().removeprefix("SYSTEM:").strip()
    return f"{system}\n\n{turn.group(1).strip()}" if system else turn.group(1).strip()


DATASETS: dict[str, DatasetSpec] = {
    "math500": DatasetSpec(
        "HuggingFaceH4/MATH-500", "test", "problem", "answer", shipped="math500.jsonl"
    ),
    "aime24": DatasetSpec(
        "HuggingFaceH4/aime_2024", "train", "problem", "answer", shipped="aime24.jsonl"
    ),
    "amc23": DatasetSpec("math-ai/amc23", "test", "question", "answer", shipped="amc23.jsonl"),
    "gsm8k": DatasetSpec(
        "openai/gsm8k", "test", "question", "answer", "main", "####", shipped="gsm8k_test.jsonl"
    ),
    "numinamath": DatasetSpec(
        "AI-MO/NuminaMath-CoT", "train", "problem", "solution", None, "boxed"
    ),
    "codeultrafeedback": DatasetSpec("coseal/CodeUltraFeedback", "train", "instruction", None),
    "glaive-fc": DatasetSpec(
        "glaiveai/glaive-function-calling-v2", "train", "chat", None, prompt_of=glaive_prompt
    ),
}


def shipped_file(alias: str) -> Path:
    """The package's copy of an evaluation set (`math500`, `aime24`, `amc23`, `gsm8k`)."""
    spec = DATASETS.get(alias)
    if spec is None or spec.shipped is None:
        shipped = ", ".join(name for name, s in DATASETS.items() if s.shipped)
        raise UserError(f"no shipped copy of {alias!r}; shipped: {shipped}")
    return Path(str(resources.files("esr_lab") / "data_files" / "benchmarks" / spec.shipped))


def _after_hashes(text: str) -> str | None:
    """GSM8K's final answer: the text after the last "####", thousands separators removed."""
    if "####" not in text:
        return None
    return text.rsplit("####", 1)[1].strip().replace(",", "") or None


def _clean_answer(value: Any, extract: str) -> str | None:
    """A bare answer string from a cell, or None when the row has no usable answer."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # amc23 stores 27 as 27.0; graders and prompts want "27"
    text = str(value).strip()
    if extract == "####":
        return _after_hashes(text)
    if extract == "boxed":
        return extract_boxed(text)
    if "####" in text:
        return _after_hashes(text)
    if "\\boxed" in text or "\\fbox" in text:
        return extract_boxed(text)
    return text or None


def _read_jsonl(path: Path) -> list[dict]:
    """json per line; plain json keeps answers like "0.50" as strings, unlike pandas' inference."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise UserError(
                    f"{path} line {number} is not valid JSON ({e.__class__.__name__}: "
                    f"{str(e).split(':')[0]}); each line must be one JSON object"
                ) from e
            if not isinstance(row, dict):
                raise UserError(
                    f"{path} line {number} is a JSON {type(row).__name__}, not an object; "
                    "each line must be one JSON object"
                )
            rows.append(row)
    return rows


def _read_json(path: Path) -> list[dict]:
    """A list of records, or a dict of equal-length columns."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(
            f"{path} is not valid JSON ({e.__class__.__name__}: {str(e).split(':')[0]}); "
            "pass a list of records or a .jsonl file"
        ) from e
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        if len({len(v) for v in data.values()}) > 1:
            raise UserError(f"{path} has columns of different lengths; pass equal-length columns")
        return [dict(zip(data, row, strict=True)) for row in zip(*data.values(), strict=True)]
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return data
    raise UserError(f"{path} is not a list of records or a dict of columns; use .jsonl instead")


def _read_parquet(path: Path) -> list[dict]:
    import pandas as pd

    return pd.read_parquet(path).to_dict("records")


def _read_csv(path: Path) -> list[dict]:
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")


READERS: dict[str, Callable[[Path], list[dict]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": _read_parquet,
    ".csv": _read_csv,
}


def read_table_file(path: Path) -> list[dict]:
    """Rows of a local .jsonl/.json/.parquet/.csv file; an unreadable, binary, truncated or
    malformed file is a one-line UserError naming it."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(
            f"cannot read {str(path)!r}; use one of {', '.join(LOCAL_SUFFIXES)} files "
            "or a folder saved with save_to_disk"
        )
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a {path.suffix} file")
    try:
        return reader(path)
    except UserError:
        raise
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); is it a binary file?") from e
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from e
    except Exception as e:  # pyarrow's and pandas' parse errors have no common base class
        raise UserError(
            f"cannot read {path} as {path.suffix[1:]} ({_reason(e)}); check the file"
        ) from e


def _pick_split(splits: Any, split: str | None, name: str) -> Any:
    """One split of a DatasetDict: the one asked for, the only one, or "test"."""
    names = list(splits.keys())
    if split is not None:
        if split not in splits:
            raise UserError(f"dataset {name!r} has no split {split!r}; splits: {', '.join(names)}")
        return splits[split]
    if len(names) == 1:
        return splits[names[0]]
    if "test" in splits:
        return splits["test"]
    raise UserError(f"dataset {name!r} has splits {', '.join(names)}; pass --split")


def _load_folder(path: Path, split: str | None) -> Any:
    """A Dataset or DatasetDict written by save_to_disk."""
    import datasets

    return _rows_or_refuse(
        lambda: datasets.load_from_disk(str(path)),
        str(path),
        split,
        lambda reason: (
            f"cannot read folder {str(path)!r} ({reason}); "
            "pass a folder saved with save_to_disk or a .jsonl/.parquet file"
        ),
    )


def _rows_or_refuse(
    load: Callable[[], Any], source: str, split: str | None, refusal: Callable[[str], str]
) -> Any:
    """What `load` returns (the split asked for, where it is a DatasetDict), or else a one-line
    error: `refusal` of the first line of what went wrong."""
    import datasets

    try:
        loaded = load()
    except Exception as e:
        raise UserError(refusal(_reason(e))) from e
    if isinstance(loaded, datasets.DatasetDict):
        return _pick_split(loaded, split, source)
    return loaded


def _reason(e: Exception) -> str:
    """The first line of an exception, short enough for a one-line error."""
    lines = str(e).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(e).__name__}: {first[:150]}" if first else type(e).__name__


def load_hub_rows(hub_id: str, config: str | None, split: str | None) -> Any:
    """A hub dataset through datasets.load_dataset; any failure becomes a UserError.

    An unreachable hub fails at once rather than after the hub client's retries (~30 s).
    """
    import datasets

    from esr_lab.models import hub_reachable

    if not datasets.config.HF_HUB_OFFLINE and not hub_reachable():
        raise UserError(
            f"cannot load dataset {hub_id!r}: the hub cannot be reached; pass a local "
            ".jsonl/.parquet file or a folder saved with save_to_disk, or set "
            "HF_DATASETS_OFFLINE=1 to use a copy cached earlier"
        )
    return _rows_or_refuse(
        lambda: datasets.load_dataset(hub_id, config, split=split),
        hub_id,
        split,
        lambda reason: (
            f"cannot load dataset {hub_id!r} from the hub ({reason}); pass a local "
            ".jsonl/.parquet file or a folder saved with save_to_disk"
        ),
    )


def _is_local(name: str) -> bool:
    """A string meant as a path: it exists, has a table suffix, or starts like a path."""
    return (
        Path(name).expanduser().exists()
        or name.lower().endswith(LOCAL_SUFFIXES)
        or (name.startswith((".", "/", "~")))
    )


def _load_rows(name: str, spec: DatasetSpec | None, split: str | None) -> Any:
    """Rows (a list of dicts or a datasets.Dataset) of an alias, a local path or a hub id."""
    if spec is not None and spec.shipped is not None and split in (None, spec.split):
        return read_table_file(shipped_file(name))
    if spec is not None:
        return load_hub_rows(spec.hub_id, spec.config, split or spec.split)
    if not _is_local(name):
        return load_hub_rows(name, None, split)
    path = Path(name).expanduser()
    if not path.exists():
        raise UserError(
            f"no such file or folder {name!r}; pass an existing .jsonl/.json/.parquet/"
            ".csv file, a save_to_disk folder, or a hub dataset id"
        )
    return _load_folder(path, split) if path.is_dir() else read_table_file(path)


def _columns(rows: Any) -> list[str]:
    """Column names of a datasets.Dataset or of a list of dicts (union, in first-seen order)."""
    if hasattr(rows, "column_names"):
        return list(rows.column_names)
    return list(dict.fromkeys(key for row in rows for key in row))


def _missing_column(name: str, column: str, columns: list[str]) -> UserError:
    """The one-line error for a column the dataset doesn't have."""
    return UserError(
        f"dataset {name!r} has no column {column!r}; columns: {', '.join(columns)} "
        f"(rename the columns to {PROBLEM_COLUMNS[0]}/{ANSWER_COLUMNS[0]})"
    )


def _pick_column(
    name: str, columns: list[str], explicit: str | None, candidates: Iterable[str], what: str
) -> str:
    """The explicit column if given and present, else the first candidate present."""
    if explicit is not None:
        if explicit not in columns:
            raise _missing_column(name, explicit, columns)
        return explicit
    for column in candidates:
        if column in columns:
            return column
    raise UserError(
        f"dataset {name!r} has no {what} column (looked for "
        f"{', '.join(candidates)}); columns: {', '.join(columns)} "
        f"(rename the columns to {PROBLEM_COLUMNS[0]}/{ANSWER_COLUMNS[0]})"
    )


def _answer_source(
    name: str,
    columns: list[str],
    spec: DatasetSpec | None,
    answer_column: str | None,
    require_answer: bool,
) -> tuple[str | None, str]:
    """(column, extract mode) for the answer: explicit, then alias spec, then auto-detection;
    (None, ...) for prompts without answers."""
    if answer_column is not None:
        return _pick_column(name, columns, answer_column, (), "answer"), "auto"
    if spec is not None:
        if spec.answer_column is None:
            return None, "auto"
        return _pick_column(name, columns, spec.answer_column, (), "answer"), spec.extract
    if any(c in columns for c in ANSWER_COLUMNS):
        return _pick_column(name, columns, None, ANSWER_COLUMNS, "answer"), "auto"
    cands = ANSWER_COLUMNS + SOLUTION_COLUMNS
    if not require_answer and not any(c in columns for c in cands):
        return None, "auto"
    return _pick_column(name, columns, None, cands, "answer"), "boxed"


def _problems(
    rows: Iterable[dict],
    prompt_of: Callable[[dict], Any],
    answer_col: str | None,
    extract: str,
    id_col: str | None,
    require_answer: bool,
) -> Iterator[Problem]:
    """Problems from rows, skipping those with no problem text or no answer when one is needed."""
    for i, row in enumerate(rows):
        problem = prompt_of(row)
        answer = None if answer_col is None else _clean_answer(row.get(answer_col), extract)
        if problem is None or not str(problem).strip():
            continue
        if answer is None and require_answer and answer_col is not None:
            continue
        pid = row.get(id_col) if id_col is not None else None
        yield Problem(id=str(i if pid is None else pid), problem=str(problem), answer=answer or "")


def _arithmetic(split: str) -> list[Problem]:
    """The real-CPU world's generated arithmetic problems (esr_lab/arithmetic.py)."""
    try:
        rows = arithmetic.rows(split)
    except ValueError as err:
        raise UserError(str(err)) from None
    return [Problem(id=r["id"], problem=r["problem"], answer=r["answer"]) for r in rows]


def _toy(world: str, split: str | None, limit: int | None) -> list[Problem]:
    """The toy world's own problems; imported lazily so data.py never needs torch."""
    from esr_lab.toy import toy_problems

    rows = toy_problems(world, split=split or "test", n=limit)
    return [
        Problem(id=str(r["id"]), problem=str(r["problem"]), answer=str(r["answer"])) for r in rows
    ]


def _take(problems: Iterable[Problem], limit: int | None) -> list[Problem]:
    """The first `limit` problems (all when None), stopping early on big datasets."""
    out: list[Problem] = []
    for p in problems:
        if limit is not None and len(out) >= limit:
            break
        out.append(p)
    return out


def load_problems(
    name: str,
    limit: int | None = None,
    split: str | None = None,
    problem_column: str | None = None,
    answer_column: str | None = None,
    require_answer: bool = True,
) -> list[Problem]:
    """Problems from an alias (DATASETS, "toy", "micro", "arithmetic"), a local file/folder or a
    hub id.

    Columns: explicit arguments win, then the alias spec, then auto-detection (problem:
    problem/question/prompt; answer: answer/expected_answer/final_answer, else the last
    \\boxed{} of solution). ids come from unique_id/id/idx, else the row index. `limit` keeps
    the first `limit` problems, so subsets are deterministic. `require_answer=False` (training
    prompts) keeps rows without an answer, with answer "".
    """
    if limit is not None and limit < 1:
        raise UserError(f"limit={limit} is not valid; use a positive number of problems or none")
    world, _, world_split = name.partition(":")  # "capable:val": a generated set's named split
    if world in TOY_WORLDS:
        problems = _take(_toy(world, world_split or split, limit), limit)
    elif world == "arithmetic":
        problems = _take(_arithmetic(world_split or split or "test"), limit)
    else:
        spec = DATASETS.get(name)
        rows = _load_rows(name, spec, split)
        if len(rows) == 0:
            raise UserError(f"dataset {name!r} is empty; pass a file or split with rows in it")
        columns = _columns(rows)
        default_problem = (spec.problem_column,) if spec is not None else PROBLEM_COLUMNS
        problem_col = _pick_column(name, columns, problem_column, default_problem, "problem")
        answer_col, extract = _answer_source(name, columns, spec, answer_column, require_answer)
        id_col = next((c for c in ID_COLUMNS if c in columns), None)
        prompt_of = (
            spec.prompt_of
            if spec and spec.prompt_of and problem_column is None
            else lambda row: row.get(problem_col)
        )
        rows_out = _problems(rows, prompt_of, answer_col, extract, id_col, require_answer)
        problems = _take(rows_out, limit)
    if not problems:
        raise UserError(
            f"dataset {name!r} has no problems with both a problem and an answer; "
            f"check the file (columns {PROBLEM_COLUMNS[0]} and {ANSWER_COLUMNS[0]})"
        )
    return problems
