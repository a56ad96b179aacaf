"""The sandbox's launcher: run one program under its limits and report how it ended.

Run by esr_lab.sandbox as `python -I -S sandbox_jail.py CONFIG`, never imported; it imports
nothing from esr_lab, because in the default mode it starts as root inside fresh PID, network,
mount, IPC and UTS namespaces (util-linux `unshare --fork --kill-child`), where it is PID 1:

- it reads the program from stdin, mounts small private tmpfs over /tmp, /var/tmp and /dev/shm
  (the host's are hidden; what the program writes there vanishes with the namespace) and makes
  the program's empty folder inside the new /tmp;
- it forks the program: hard rlimits, no new privileges, no supplementary groups, then the
  sandbox's own uid and gid, cwd its folder, stdin /dev/null, only the token fds (3: read the
  pass token, 4: write it back) besides stdout and stderr; then `python -I -c HARNESS`;
- it waits for the program at most `timeout_s` (its own clock, so a program outlives nothing
  even if esr-lab itself dies), reports "exit N", "signal N" or "timeout" on its report fd, which
  the program never holds, and exits. As PID 1 leaves, the kernel kills every process left in
  the namespace, whatever sessions or process groups they made.

In the weaker "rlimits" mode (asked for by the user where namespaces are unavailable) the same
steps run without namespaces, mounts or the change of user: the program gets its own session
and folder, and its process group is killed when it ends.
"""

import ctypes
import fcntl
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time

MS_NOSUID, MS_NODEV = 2, 4
PR_SET_NO_NEW_PRIVS = 38
PRIVATE_MOUNTS = ("/tmp", "/var/tmp", "/dev/shm")
TOKEN_IN, TOKEN_OUT = 3, 4
PYTHON_FD = 5  # the interpreter, exec'd by fd


def mount_private_tmp(size_mb: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for target in PRIVATE_MOUNTS:
        if not os.path.isdir(target):
            continue
        options = f"size={size_mb}m,mode=1777".encode()
        if libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
            raise OSError(ctypes.get_errno(), f"mounting tmpfs on {target}")


def make_folder(config: dict, source: bytes) -> str:
    if config["mode"] == "namespaces":
        folder = "/tmp/program"
        os.mkdir(folder, 0o700)
        os.chown(folder, config["uid"], config["uid"])
    else:
        folder = tempfile.mkdtemp(prefix="esr-sandbox-")
    with open(os.path.join(folder, "program.py"), "wb") as file:
        file.write(source)
    return folder


def become_program(config: dict, folder: str, python_fd: int) -> None:
    """In the forked child: fds, limits, user, then exec the harness (never returns)."""
    token_in, token_out, _report = config["fds"]
    # Copied above any fd in use first, so that moving one to 3 cannot overwrite the other.
    high_in, high_out = (fcntl.fcntl(fd, fcntl.F_DUPFD, 1000) for fd in (token_in, token_out))
    high_python = fcntl.fcntl(python_fd, fcntl.F_DUPFD_CLOEXEC, 1000)
    os.dup2(high_in, TOKEN_IN)
    os.dup2(high_out, TOKEN_OUT)
    python = os.dup2(high_python, PYTHON_FD, inheritable=False)  # closed by the exec itself
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.closerange(PYTHON_FD + 1, 65536)  # the report fd and everything else
    for name, value in config["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    ctypes.CDLL(None).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if config["mode"] == "namespaces":
        uid = config["uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    else:
        os.setsid()
    os.chdir(folder)
    env = dict(config["env"], HOME=folder, TMPDIR=folder)
    os.execve(python, [sys.executable, "-I", "-c", config["harness"]], env)


def wait_for(pid: int, timeout_s: float, is_init: bool) -> str:
    """'exit N', 'signal N' or 'timeout'; as PID 1 also reaps orphans while waiting."""
    deadline = time.monotonic() + timeout_s
    pause = 0.001
    while time.monotonic() < deadline:
        while True:
            done, status = os.waitpid(-1 if is_init else pid, os.WNOHANG)
            if done == 0:
                break
            if done == pid:
                if os.WIFSIGNALED(status):
                    return f"signal {os.WTERMSIG(status)}"
                return f"exit {os.waitstatus_to_exitcode(status)}"
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
    return "timeout"


def main() -> None:
    config = json.loads(sys.argv[1])
    source = sys.stdin.buffer.read()
    namespaces = config["mode"] == "namespaces"
    # Opened as root and before the private /tmp hides the host's: the interpreter may live
    # where the sandbox uid may not look (a pyenv under /root) or under /tmp (a venv in a clone
    # there), though the file itself is world-executable. Exec'd by fd.
    python_fd = os.open(os.path.realpath(sys.executable), os.O_RDONLY | os.O_CLOEXEC)
    if namespaces:
        mount_private_tmp(config["folder_mb"])
    folder = make_folder(config, source)
    pid = os.fork()
    if pid == 0:
        try:
            become_program(config, folder, python_fd)
        except BaseException as error:  # the harness never started: say why on stderr
            os.write(2, f"sandbox: {type(error).__name__}: {error}\n".encode())
        os._exit(127)
    token_in, token_out, report = config["fds"]
    os.close(token_in)
    os.close(token_out)
    fate = wait_for(pid, config["timeout_s"], is_init=namespaces)
    if not namespaces:  # no namespace to take the rest down: the program's group goes
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        shutil.rmtree(folder, ignore_errors=True)
    os.write(report, fate.encode())
    os._exit(0)  # as PID 1: the kernel now kills everything left in the namespace


if __name__ == "__main__":
    main()
