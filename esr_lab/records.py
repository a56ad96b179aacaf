"""Where results live and what shape they have.

Every run gets its own folder `<results>/<experiment>/<run_id>/` holding `config.json` (every
option, the seed, the git commit, library versions) and long-format parquet tables whose
columns are declared once here. Writes are atomic (temp file, then rename), a finished piece of
work is saved as a part file as soon as it is done so a killed run resumes where it stopped, and
a run id that exists with another config is refused rather than overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from esr_lab import interrupts
from esr_lab.errors import UserError
from esr_lab.prompts import PLAIN_FORMAT


@dataclass(frozen=True)
class Paths:
    """Where a run writes, under which id, and whether it shows progress bars."""

    results_dir: Path = Path("results")
    figures_dir: Path | None = None  # a second copy of the figure, where asked
    run_id: str | None = None
    show_progress: bool = True
    jobs: int = 1  # training runs at once (--jobs): how, not what, so never in a config


# What grading a math response adds to it (tasks.grade_samples), in every table of graded math.
MATH_GRADES = (
    "correct",
    "correct_relaxed",
    "correct_first_boxed",
    "answer",
    "n_boxed",
    "repetitive",
    "chars",
)
SCHEMAS: dict[str, tuple[str, ...]] = {
    "train_steps": (
        "run_id",
        "label",
        "step",
        "loss",
        "kl_selected",
        "kl_all",
        "grad_norm",
        "lr",
        "rollout_tokens_mean",
        "selected_tokens_mean",
        "time_generation_s",
        "time_teacher_s",
        "time_training_s",
        "time_total_s",
        "peak_memory_mb",
    ),
    "train_evals": (
        "run_id",
        "label",
        "step",
        "avg_at_k",
        "avg_ci_low",
        "avg_ci_high",
        "pass_at_k",
        "maj_at_k",
        "relaxed_avg_at_k",
        "first_boxed_avg_at_k",
        "mean_tokens",
        "median_tokens",
        "mean_chars",
        "multi_boxed_pct",
        "boxes_per_response",
        "repetitive_pct",
        "n_problems",
    ),
    "eval_samples": (
        "run_id",
        "step",
        "problem_id",
        "sample",
        "completion",
        "completion_tokens",
        "finished",
        *MATH_GRADES,
    ),
    # `esr-lab grade` and `esr-lab eval --task`: one table of graded samples per task, one summary.
    "graded_math": (
        "run_id",
        "problem_id",
        "sample",
        "completion",
        *MATH_GRADES,
    ),
    # code and function calling: `correct` under the run's protocol, then under each protocol
    "graded_humaneval": (
        "run_id",
        "problem_id",
        "sample",
        "completion",
        "correct",
        "status",
        "correct_chat",
        "correct_paper",
    ),
    "graded_bfcl": (
        "run_id",
        "problem_id",
        "sample",
        "completion",
        "name_match",
        "correct",
        "status",
        "name_match_chat",
        "name_match_paper",
        "correct_chat",
        "correct_paper",
        "parsed_paper",
    ),
    "grade_summary": (
        "run_id",
        "task",
        "dataset",
        "protocol",
        "avg_at_k",
        "k",
        "pass_at_k",
        "maj_at_k",
        "relaxed_avg_at_k",
        "name_match",
        "full_match",
        "avg_at_k_chat",
        "avg_at_k_paper",
        "full_match_chat",
        "full_match_paper",
        "name_match_chat",
        "name_match_paper",
        "parse_rate_paper",
        "n_problems",
        "n_samples",
    ),
    "train_summary": (
        "run_id",
        "label",
        "base_avg_at_k",
        "best_avg_at_k",
        "best_step",
        "best_pass_at_k",
        "best_maj_at_k",
        "final_avg_at_k",
        "final_step",
        "collapsed",
    ),
    # `esr-lab ablate`: one row per evaluation of each variant, then one per variant.
    # Findings 4, 5, 7, 10, 11: per-position scans of student rollouts (esr_lab.analysis).
    "position_bins": (
        "run_id",
        "model",
        "window",
        "bin_start",
        "bin_end",
        "tokens",
        "reverse_kl",
        "student_entropy",
        "teacher_entropy",
    ),
    "bench": (
        "benchmark",
        "system",
        "setting",
        "steps",
        "rollout_tokens",
        "time_median_s",
        "time_min_s",
        "time_max_s",
        "peak_memory_mb",
        "step_memory_mb",
        "date",
        "machine",
    ),
}

VERSIONED_LIBRARIES = ("torch", "transformers", "peft", "datasets", "math-verify", "vllm", "gguf")
# Recorded, not compared: what the run was made with, or the prompt a model without a chat
# template reads (`prompts.PLAIN_FORMAT`, so an older run stays resumable when it changes).
VOLATILE_KEYS = ("created", "git_commit", "versions", "run_id", "plain_prompt_format")
# Options that name an input: where one is a local file or folder, the run's identity holds a
# hash of its content ("inputs" in config.json), so an edited file is another run, not this one.
INPUT_KEYS = (
    "dataset",
    "train_dataset",
    "eval_dataset",
    "responses",
    "student",
    "teacher",
    "model",
    "adapter",
)
_HASH_CACHE: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256


def git_commit() -> str:
    """The commit of the esr-lab checkout, with `-dirty` when it has uncommitted changes."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that change numbers."""
    versions = {}
    for name in VERSIONED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` so that `path` is either the old file or the whole new one, never half.

    The file gets the permissions of an ordinary new file under the user's umask (mkstemp's own
    are private). A failed write (a full disk, a folder that cannot be written) is a one-line
    UserError naming the file; the old file, if any, is left as it was.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise UserError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def declare(schemas: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Add an experiment's table schemas, declared in its own module, to SCHEMAS; returns them.
    A name may be declared once (or again with the same columns, as on a module reload)."""
    for name, columns in schemas.items():
        if SCHEMAS.setdefault(name, columns) != columns:
            raise ValueError(f"table schema '{name}' declared twice with different columns")
    return schemas


def write_table(path: Path, frame: pd.DataFrame, schema: str) -> None:
    """Atomic parquet write of a table whose columns must match its declared schema."""
    expected = SCHEMAS[schema]
    if tuple(frame.columns) != expected:
        raise ValueError(f"{schema} columns {tuple(frame.columns)} != declared {expected}")
    atomic_write_bytes(path, frame.to_parquet(index=False))


# One name per metric in every table (avg@k is `avg_at_k`, as in the training tables). Tables
# written before the metric columns took those names (decay's and grade's `accuracy`, ...) are
# read under them by `read_table`, so older run folders, committed ones among them, still plot.
RENAMED_COLUMNS = {
    "accuracy": "avg_at_k",
    "relaxed_accuracy": "relaxed_avg_at_k",
    "accuracy_chat": "avg_at_k_chat",
    "accuracy_paper": "avg_at_k_paper",
}


def read_table(path: Path) -> pd.DataFrame:
    """A saved table, its metric columns under today's names (RENAMED_COLUMNS)."""
    return pd.read_parquet(path).rename(columns=RENAMED_COLUMNS)


def _file_sha256(path: Path) -> str:
    """sha256 of one file's bytes, computed once per process for an unchanged file."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        try:
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror or e}") from e
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in order)."""
    if path.is_file():
        return _file_sha256(path)[:16]
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{_file_sha256(file)}\n".encode())
    return digest.hexdigest()[:16]


def with_input_hashes(config: dict[str, Any]) -> dict[str, Any]:
    """`config` plus `inputs`: the content hash of every INPUT_KEYS value that is a local file
    or folder (none: the config as it is, so runs of named models and datasets keep their
    ids)."""
    inputs = {}
    for key in INPUT_KEYS:
        value = config.get(key)
        if isinstance(value, str | Path) and str(value):
            path = Path(value).expanduser()
            if path.exists():
                inputs[key] = content_hash(path)
    return dict(config, inputs=inputs) if inputs else dict(config)


def differences(saved: dict[str, Any], config: dict[str, Any], most: int = 4) -> str:
    """The settings in which two configs differ, for a one-line refusal."""
    saved_inputs, new_inputs = saved.get("inputs", {}), config.get("inputs", {})
    old, new = _leaves(saved), _leaves(config)  # base.seed, not the whole of base
    keys = sorted(
        k for k in set(old) | set(new) if k.split(".")[0] not in (*VOLATILE_KEYS, "inputs")
    )
    changed = [
        f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
        for k in keys
        if old.get(k) != new.get(k)
    ]
    changed += [
        f"content of {config.get(k, saved.get(k))} ({k}) changed since the run was made"
        for k in sorted(set(saved_inputs) | set(new_inputs))
        if saved_inputs.get(k) != new_inputs.get(k) and saved.get(k) == config.get(k)
    ]
    more = f"; and {len(changed) - most} more" if len(changed) > most else ""
    return "; ".join(changed[:most]) + more


def _leaves(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys to its non-dict values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_hash(config: dict[str, Any]) -> str:
    stable = {k: v for k, v in config.items() if k not in VOLATILE_KEYS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class RunDir:
    """One run's folder; `parts/` holds finished pieces of work until the run is complete."""

    path: Path
    run_id: str
    resumed: bool

    @property
    def parts(self) -> Path:
        return self.path / "parts"

    def part_path(self, name: str) -> Path:
        return self.parts / f"{name}.parquet"

    def has_part(self, name: str) -> bool:
        return self.part_path(name).is_file()

    def write_part(self, name: str, frame: pd.DataFrame, schema: str) -> None:
        write_table(self.part_path(name), frame, schema)

    def read_parts(self) -> pd.DataFrame:
        files = sorted(self.parts.glob("*.parquet"))
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def open_run(
    results_dir: Path, experiment: str, config: dict[str, Any], run_id: str | None
) -> RunDir:
    """Create a new run folder, or reopen `run_id` to resume it if its config is the same.

    `config` is the run's options; the content hashes of its input files, the commit, versions,
    date and run id are added here.
    """
    root = Path(results_dir) / experiment
    config = with_input_hashes(config)
    if run_id is not None and existing_run(results_dir, experiment, config, run_id):
        interrupts.note_run(root / run_id, run_id)
        return RunDir(root / run_id, run_id, resumed=True)
    fresh = run_id is None
    run_id = run_id or _claim_fresh_run_id(root, config)
    path = root / run_id
    full = dict(
        config,
        run_id=run_id,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        git_commit=git_commit(),
        versions=library_versions(),
        plain_prompt_format=PLAIN_FORMAT,
    )
    created = fresh or not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run folder {path}: {e.strerror or e}") from e
    try:
        write_json(path / "config.json", full)
    except UserError:  # a full disk, say: leave no run folder without its config behind
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise
    interrupts.note_run(path, run_id)
    return RunDir(path, run_id, resumed=False)


def existing_run(results_dir: Path, experiment: str, config: dict[str, Any], run_id: str) -> bool:
    """True if run `run_id` exists with this config (a resume); refuses one with another config
    (other settings, or an input file whose content changed), naming what differs. Writes
    nothing, so commands call it before loading models."""
    _check_run_id(run_id)
    root = Path(results_dir) / experiment
    existing = root / run_id / "config.json"
    if not existing.is_file():
        return False
    saved = _read_config(existing)
    config = with_input_hashes(config)
    if config_hash(saved) != config_hash(config):
        raise UserError(
            f"run '{run_id}' already exists in {root} with other settings "
            f"({differences(saved, config)}); pick another --run-id, or none for a fresh one"
        )
    return True


def _read_config(path: Path) -> dict[str, Any]:
    """A saved config.json; a damaged one is a one-line error naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot read {path} ({type(e).__name__}); remove that run folder or pick another "
            "--run-id"
        ) from e


def _check_run_id(run_id: str) -> None:
    if not run_id or any(c in run_id for c in "/\\") or run_id.startswith("."):
        raise UserError(f"bad run id '{run_id}'; use letters, digits, '-' or '_'")


def _claim_fresh_run_id(root: Path, config: dict[str, Any]) -> str:
    """A time-stamped id whose folder this process creates: two processes started in the same
    second with the same config (say, two machines on one shared results folder) each get their
    own, because creating a folder that exists fails for all but one of them."""
    base = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{config_hash(config)[:6]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {root}: {e.strerror or e}") from e
    candidate, n = base, 1
    while True:
        try:
            (root / candidate).mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{base}-{n}"
        except OSError as e:
            raise UserError(
                f"cannot create run folder {root / candidate}: {e.strerror or e}"
            ) from e
