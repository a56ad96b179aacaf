"""The code sandbox: a pass is the harness's token, never an exit status, and hostile programs
(the adversarial list of README, Tasks) fail cleanly, leave esr-lab alive and nothing running.

Every case is a wrong solution to HumanEval/0 followed by a trick that would make it pass, or
hurt esr-lab, if the sandbox let it. Limits are small so that the file stays fast.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from esr_lab import sandbox
from esr_lab.errors import UserError
from esr_lab.humaneval import grade_code, load_code_problems
from esr_lab.sandbox import Limits, run_python

FAST = Limits(timeout_s=2.0, memory_mb=512, max_processes=8, max_file_mb=4, folder_mb=8)
WRONG = "def has_close_elements(numbers, threshold):\n    return True\n\n"
SECRET = "esr-secret-7f3a"
ESCAPE = "esr-lab-escape"


def _sandbox_processes() -> list[int]:
    """Live processes owned by a sandbox uid: nothing may outlive its run."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        uids = [line.split()[1] for line in status.splitlines() if line.startswith("Uid:")]
        if uids and int(uids[0]) in sandbox.SANDBOX_UIDS:
            found.append(int(entry.name))
    return found


def _listener() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


SERVER = _listener()
# name: (trick after the wrong solution, the status it must get: exact, or a prefix ending ":")
CASES = {
    "endless_loop": ("while True:\n    pass\n", "timeout"),
    "fork_bomb": (
        "import ctypes\nlibc = ctypes.CDLL(None)\nwhile True:\n    libc.fork()\n",
        "timeout",
    ),
    "allocate_6gb": ("x = bytearray(6 * 2**30)\n", "failed: MemoryError"),
    "output_200mb": (
        "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 2**20)\nsys.stdout.flush()\n",
        "failed: OSError: [Errno 27] File too large",
    ),
    "write_outside_folder": (
        f"open('/tmp/{ESCAPE}', 'w').write('x')\nopen('/etc/{ESCAPE}', 'w').write('x')\n",
        f"failed: PermissionError: [Errno 13] Permission denied: '/etc/{ESCAPE}'",
    ),
    "sys_exit_0": (
        "import sys\nsys.exit(0)\n",
        "failed: exited with code 0 but its tests did not finish",
    ),
    "os_exit_0": (
        "import os\nos._exit(0)\n",
        "failed: exited with code 0 but its tests did not finish",
    ),
    "unittest_main": (
        "import unittest\nif __name__ == '__main__':\n    unittest.main()\n",
        "failed: exited with code 0 but its tests did not finish",
    ),
    "atexit_exit_0": (
        "import atexit, os\natexit.register(os._exit, 0)\n",
        "failed: exited with code 0 but its tests did not finish",
    ),
    "steal_token_fd": (
        "import os\nos.write(4, os.read(3, 64))\nos._exit(0)\n",
        "failed: OSError: [Errno 9] Bad file descriptor",
    ),
    "token_from_harness_globals": (
        "import os, sys\nharness = vars(sys.modules['__main__']).values()\n"
        "found = [d for f in harness for d in getattr(f, '__defaults__', None) or ()]\n"
        "os.write(4, b''.join(d for d in found if isinstance(d, bytes)))\nos._exit(0)\n",
        "failed: exited with code 0 but its tests did not finish",
    ),
    "ctypes_fork_setsid": (
        "import ctypes, time\nlibc = ctypes.CDLL(None)\nif libc.fork() == 0:\n"
        "    libc.setsid()\n    time.sleep(30)\n    libc._exit(0)\n",
        "failed: AssertionError",
    ),
    "kill_parent": (
        "import ctypes, os, signal\nlibc = ctypes.CDLL(None)\n"
        f"for pid in (os.getppid(), 1, -1, {os.getpid()}):\n    libc.kill(pid, signal.SIGKILL)\n",
        "failed: AssertionError",
    ),
    "read_environment": (
        "import glob, os\nfound = [k for k, v in os.environ.items() if v == "
        f"{SECRET!r}]\nfor path in glob.glob('/proc/*/environ'):\n    try:\n"
        f"        found += [path] if {SECRET!r}.encode() in open(path, 'rb').read() else []\n"
        "    except OSError:\n        pass\nraise RuntimeError(f'found {found}')\n",
        "failed: RuntimeError: found []",
    ),
    "open_socket": (
        f"import socket\nsocket.create_connection(('127.0.0.1', {SERVER.getsockname()[1]}), 1)\n",
        "failed: OSError: [Errno 101] Network is unreachable",
    ),
}


@pytest.fixture(scope="module")
def problem():
    return load_code_problems("humaneval", limit=1)[0]


def _grade(problem, responses: list[str], limits: Limits = FAST) -> pd.DataFrame:
    samples = pd.DataFrame(
        {"problem_id": problem.id, "sample": range(len(responses)), "completion": responses}
    )
    return grade_code(samples, [problem], limits)


@pytest.mark.parametrize("case", list(CASES))
def test_adversarial_case_fails_cleanly(case, problem, monkeypatch):
    monkeypatch.setenv("ESR_LAB_TEST_SECRET", SECRET)
    trick, status = CASES[case]
    start = time.monotonic()
    graded = _grade(problem, [WRONG + trick])
    assert not graded.correct[0] and graded.status[0] == status
    assert time.monotonic() - start < FAST.timeout_s + 2
    assert _sandbox_processes() == []  # the grading returned with nothing of it left
    assert not Path(f"/tmp/{ESCAPE}").exists() and not Path(f"/etc/{ESCAPE}").exists()


def test_the_same_tricks_after_a_right_solution_still_fail(problem):
    """An early exit fails even when the code before it is right: the tests never ran."""
    right = problem.prompt + problem.answer + "\n\n"
    exits = ["sys_exit_0", "os_exit_0", "unittest_main"]
    graded = _grade(problem, [right] + [right + CASES[case][0] for case in exits])
    assert graded.correct.tolist() == [True, False, False, False]


def test_grade_command_survives_every_fast_case(problem, tmp_path):
    """`esr-lab grade --task humaneval` as a user runs it: all fail, exit 0, summary written."""
    fast = [case for case, (_, status) in CASES.items() if status != "timeout"]
    responses = pd.DataFrame(
        {"task_id": problem.id, "response": [WRONG + CASES[case][0] for case in fast]}
    )
    responses.to_json(tmp_path / "responses.jsonl", orient="records", lines=True)
    env = dict(os.environ, ESR_LAB_TEST_SECRET=SECRET, PYTHONPATH=str(Path.cwd()))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "esr_lab",
            "grade",
            "--task",
            "humaneval",
            "--responses",
            str(tmp_path / "responses.jsonl"),
            "--results-dir",
            str(tmp_path),
            "--run-id",
            "adv",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    graded = pd.read_parquet(tmp_path / "grade" / "adv" / "samples.parquet")
    assert graded.status.tolist() == [CASES[case][1] for case in fast]
    assert _sandbox_processes() == []


def test_concurrent_programs_keep_their_own_results(problem):
    """Many programs at once (the grading thread pool): each gets its own token and verdict."""
    right = problem.prompt + problem.answer
    responses = [right, WRONG, right + "\nimport os\nos._exit(0)\n"] * 4
    graded = _grade(problem, responses)
    assert graded.correct.tolist() == [True, False, False] * 4


def test_pass_fail_and_exception_line():
    assert run_python("print('hi')", FAST).passed
    outcome = run_python("raise ValueError('bad input')", FAST)
    assert not outcome.passed and outcome.status == "failed: ValueError: bad input"
    assert run_python("import os\nos.kill(os.getpid(), 9)\n", FAST, guard=False).status == (
        "failed: killed by SIGKILL"
    )


def test_guard_stops_ordinary_fork_and_subprocess():
    assert "TypeError" in run_python("import os\nos.fork()\n", FAST).status
    assert "TypeError" in run_python("import subprocess\nsubprocess.run(['true'])\n", FAST).status


def test_boundary_user_namespace_folder_and_limits(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret")
    source = (
        "import os, resource as r\n"
        "assert os.getuid() != 0 and os.getgroups() == [], os.getuid()\n"
        "assert os.getpid() == 2 and os.getppid() == 1\n"
        "assert 'HF_TOKEN' not in os.environ, 'leaked'\n"
        "assert os.listdir('.') == ['program.py'] and os.listdir('/tmp') == ['program']\n"
        "assert r.getrlimit(r.RLIMIT_AS) == (512 * 2**20, 512 * 2**20)\n"
        "assert r.getrlimit(r.RLIMIT_CPU) == (3, 3)\n"
        "assert r.getrlimit(r.RLIMIT_NPROC)[0] == 8\n"
        "assert r.getrlimit(r.RLIMIT_FSIZE)[0] == 4 * 2**20\n"
        "assert sorted(os.listdir('/proc/self/fd')) == ['0', '1', '2', '3', '4']\n"
    )
    assert run_python(source, FAST).status == "passed"


def test_weaker_mode_must_be_asked_for(monkeypatch):
    monkeypatch.setenv("ESR_LAB_SANDBOX", "none")
    with pytest.raises(UserError, match="ESR_LAB_SANDBOX='none' is not a sandbox mode"):
        run_python("pass", FAST)
    monkeypatch.setenv("ESR_LAB_SANDBOX", "rlimits")
    assert run_python("pass", FAST).passed
    assert run_python("import sys\nsys.exit(0)\n", FAST).status.startswith("failed: exited")
    assert run_python("while True:\n    pass\n", Limits(timeout_s=1.0)).status == "timeout"


def test_without_root_namespaces_fail_in_one_line(monkeypatch):
    monkeypatch.setattr(sandbox, "_checked", set())
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UserError, match="needs root; run as root, or set ESR_LAB_SANDBOX=rlim"):
        run_python("pass", FAST)
