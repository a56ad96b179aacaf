"""Ctrl-C and SIGTERM: stop with the right exit code and one line saying how to resume.

Every run is resumable (finished pieces are saved as they finish and a rerun with the same run
id continues from them), so an interrupt only has to say where the run stopped and which command
picks it up. The records layer notes each run folder it opens and the training loop each
checkpoint it saves; `message` turns those notes and the command line into that one line.

SIGTERM is turned into a `KeyboardInterrupt` subclass so that it unwinds exactly like Ctrl-C
(progress bars closed, temp files removed, locks released) and is not swallowed by the
`except Exception` of code that wraps library errors.
"""

from __future__ import annotations

import shlex
import signal
from dataclasses import dataclass, field
from pathlib import Path

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread happens to be."""


class Stopped(BaseException):  # noqa: N818 - a stop, not an error; BaseException so no handler eats it
    """An interrupted command, carrying its exit code; raised past typer, which would otherwise
    turn a KeyboardInterrupt into a silent return value."""

    def __init__(self, exit_code: int, line: str):
        super().__init__(line)
        self.exit_code = exit_code
        self.line = line


@dataclass
class _Notes:
    """What this process has opened and saved so far."""

    runs: list[tuple[Path, str]] = field(default_factory=list)  # (run folder, run id), in order
    checkpoint: tuple[int, Path] | None = None  # (step, run folder) of the last one saved


NOTES = _Notes()


def note_run(path: Path, run_id: str) -> None:
    """A run folder was opened (records.open_run); the first one is the command's own run."""
    NOTES.runs.append((Path(path), run_id))


def note_checkpoint(step: int, run_folder: Path) -> None:
    """A training checkpoint was saved: a resumed run starts after it."""
    NOTES.checkpoint = (step, Path(run_folder))


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def install_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C (call once, from the main thread)."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def resume_command(argv: list[str], run_id: str | None) -> list[str]:
    """The command line that resumes: the same arguments, with `--run-id` set to the run that
    was opened (fresh runs get a time-stamped id, so the rerun must name it)."""
    args = list(argv)
    if run_id is None or any(a == "--run-id" or a.startswith("--run-id=") for a in args):
        return args
    return [*args, "--run-id", run_id]


def message(interrupt: KeyboardInterrupt, argv: list[str], takes_run_id: bool) -> Stopped:
    """The Stopped to raise for `interrupt` during `esr-lab ARGV`."""
    sig = signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT
    name = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C (SIGINT)"
    if NOTES.runs:
        own_path, own_id = NOTES.runs[0]
        where = f"run {own_path}"
        if NOTES.checkpoint is not None:
            step, folder = NOTES.checkpoint
            inner = "" if folder == own_path else f" of {folder}"
            where += f" (last checkpoint: step {step}{inner})"
        elif NOTES.runs[-1][0] != own_path:
            where += f" (in {NOTES.runs[-1][0]})"
        rerun = resume_command(argv, own_id if takes_run_id else None)
        line = f"stopped by {name} in {where}; finished work is kept; resume with: "
    else:
        line = f"stopped by {name} before any run folder was written; start again with: "
        rerun = list(argv)
    return Stopped(EXIT_CODES[sig], line + shlex.join(["esr-lab", *rerun]))
