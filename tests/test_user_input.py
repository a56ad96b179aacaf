"""What a careful user meets: bad files and folders, interrupts, edited inputs, where figures go.

Every bad input gives exit 2 and one line naming the bad file or folder, before any work, and
leaves no run folder behind. Ctrl-C / SIGTERM on a real `esr-lab train` give 130 / 143 and one
line with the command that resumes; that command finishes the run exactly.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import MICRO, run_cli, wait_for_checkpoint

PAIR = MICRO[:4]  # --student micro-student --teacher micro-teacher
ESR_LAB = [sys.executable, "-m", "esr_lab"]
GOOD_ROWS = '{"problem": "1+1?", "answer": "2"}\n'


def _parquet_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    pd.DataFrame({"problem": ["1+1?"], "answer": ["2"]}).to_parquet(buffer)
    return buffer.getvalue()


# name -> (file name, content) of the bad file each case reads as `{bad}`
BAD_FILES: dict[str, tuple[str, str | bytes]] = {
    "jsonl_bad_line": ("a.jsonl", GOOD_ROWS + '{"problem": \n'),
    "jsonl_truncated": ("b.jsonl", GOOD_ROWS + '{"problem": "y", "ans'),
    "jsonl_array_line": ("c.jsonl", "[1, 2]\n"),
    "jsonl_binary": ("d.jsonl", bytes(range(256)) * 4),
    "jsonl_empty": ("e.jsonl", ""),
    "json_malformed": ("f.json", '[{"problem": "x"'),
    "json_scalar": ("g.json", "42"),
    "json_ragged_columns": ("h.json", '{"problem": ["a", "b"], "answer": ["1"]}'),
    "csv_unclosed_quote": ("i.csv", 'problem,answer\n"1+1?,2\n'),
    "csv_empty": ("j.csv", ""),
    "csv_wrong_columns": ("k.csv", "q,a\n1+1?,2\n"),
    "parquet_truncated": ("l.parquet", _parquet_bytes()[:100]),
    "parquet_garbage": ("m.parquet", b"not parquet at all"),
    "jsonl_no_problem_column": ("n.jsonl", '{"text": "x", "answer": "1"}\n'),
    "jsonl_no_answers": ("o.jsonl", '{"problem": "x", "answer": null}\n'),
    "txt_suffix": ("p.txt", "1+1?"),
    "responses_no_text_column": ("q.jsonl", '{"problem_id": "0", "text": "x"}\n'),
    "responses_no_id_column": ("r.jsonl", '{"response": "2"}\n'),
    "responses_unknown_ids": ("s.jsonl", '{"problem_id": "99", "response": "2"}\n'),
}

EVAL = ["eval", "--model", "micro-student", "--samples", "1"]
GRADE = ["grade", "--responses", "{bad}", "--dataset", "{good}"]
# responses file case -> words its one line must hold
GRADE_CASES = {
    "jsonl_bad_line": "a.jsonl line 2",
    "parquet_truncated": "l.parquet as parquet",
    "jsonl_binary": "d.jsonl is not UTF-8 text",
    "responses_no_text_column": "q.jsonl has no column response or completion",
    "responses_no_id_column": "r.jsonl has no column problem_id or task_id or id",
    "responses_unknown_ids": "not in {good}",
}
# name -> (command line with {bad}/{good}/{tmp}, BAD_FILES case read as {bad}, words of the line)
BAD_INPUTS: dict[str, tuple[list[str], str | None, str]] = {
    **{
        f"eval_dataset_{name}": ([*EVAL, "--dataset", "{bad}"], name, "{bad_name}")
        for name in BAD_FILES
        if not name.startswith("responses")
    },
    **{f"grade_{name}": (GRADE, name, words) for name, words in GRADE_CASES.items()},
    "train_dataset_malformed": (
        ["train", *PAIR, "--train-dataset", "{bad}", "--steps", "2"],
        "jsonl_bad_line",
        "a.jsonl line 2 is not valid JSON",
    ),
    "decay_dataset_malformed": (
        ["decay", *PAIR, "--dataset", "{bad}"],
        "jsonl_bad_line",
        "a.jsonl line 2",
    ),
    "grade_responses_missing": (
        ["grade", "--responses", "{tmp}/none.jsonl", "--dataset", "{good}"],
        None,
        "none.jsonl",
    ),
    "dataset_missing": ([*EVAL, "--dataset", "{tmp}/nope.jsonl"], None, "nope.jsonl"),
    "dataset_folder_not_saved": ([*EVAL, "--dataset", "{tmp}/inputs"], None, "inputs"),
    "results_dir_is_a_file": (["decay", *PAIR, "--results-dir", "{good}"], None, "is a file"),
    "figures_dir_is_a_file": (
        ["decay", *PAIR, "--results-dir", "{tmp}/results", "--figures-dir", "{good}"],
        None,
        "--figures-dir",
    ),
    "results_dir_under_a_file": (
        ["decay", *PAIR, "--results-dir", "{good}/sub"],
        None,
        "lies under the file",
    ),
    "adapter_missing": ([*EVAL, "--adapter", "{tmp}/no-adapter"], None, "no-adapter"),
    "model_folder_without_config": (["eval", "--model", "{tmp}/inputs/"], None, "inputs"),
    "plot_results_dir_is_a_file": (["plot", "--results-dir", "{good}"], None, "not a folder"),
    "plot_out_is_a_file": (["plot", "--results-dir", "{tmp}", "--out", "{good}"], None, "--out"),
}


def _fill(word: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        word = word.replace("{" + key + "}", value)
    return word


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2_with_no_run_folder(case, tmp_path, monkeypatch, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = inputs / "good.jsonl"
    good.write_text(GOOD_ROWS)
    args, file_case, words = BAD_INPUTS[case]
    name, content = BAD_FILES.get(file_case, ("unused.jsonl", ""))
    bad = inputs / name
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    values = {"bad": str(bad), "good": str(good), "tmp": str(tmp_path), "bad_name": name}
    argv = [_fill(a, values) for a in args]
    if "--results-dir" not in argv and argv[0] != "plot":
        argv += ["--results-dir", str(tmp_path / "results")]
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, *argv, dirs=False)
    lines = err.strip().splitlines()
    assert code == 2, (case, out, err)
    assert len(lines) == 1 and lines[0].startswith("esr-lab: error: "), lines
    assert _fill(words, values) in lines[0], lines[0]
    assert not list(tmp_path.rglob("config.json")), "a run folder was left behind"


def test_a_failed_write_names_the_file_and_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    """A full disk, simulated where the bytes reach the disk."""
    import errno

    from esr_lab import records

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.os, "fsync", full)
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, "decay", *MICRO, "--limit", "2")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot write" in err and "config.json: No space left on device" in err
    assert not list((tmp_path / "results" / "decay").iterdir())  # no run folder


def _in_own_mount(tmp_path: Path, mount: str, setup: str, argv: list[str]):
    """Run `esr-lab ARGV` in a mount namespace of its own, where tmp_path/mnt is a tmpfs mounted
    with `mount` options and `setup` (shell) has run first; nothing outside sees the mount."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")
    probe = subprocess.run(["unshare", "--mount", "--map-root-user", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no mount namespaces on this machine")
    target = tmp_path / "mnt"
    target.mkdir()
    script = (
        f"mount -t tmpfs -o {mount} tmpfs {shlex.quote(str(target))} && {setup} && "
        f"exec {shlex.join([*ESR_LAB, *argv])}"
    )
    return subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    full = tmp_path / "mnt" / "results"
    fill = f"mkdir {full} && (cat /dev/zero > {full}/fill 2>/dev/null; true)"
    argv = ["decay", *MICRO, "--limit", "2", "--results-dir", str(full)]
    ran = _in_own_mount(tmp_path, "size=64k", fill, argv)
    lines = ran.stderr.strip().splitlines()
    assert ran.returncode == 2 and len(lines) == 1, ran.stderr
    assert "No space left on device" in lines[0] and str(full) in lines[0]


def test_a_read_only_results_folder_is_refused_before_any_work(tmp_path):
    results = tmp_path / "mnt" / "results"
    ran = _in_own_mount(tmp_path, "ro", "true", ["decay", *MICRO, "--results-dir", str(results)])
    lines = ran.stderr.strip().splitlines()
    assert ran.returncode == 2 and len(lines) == 1, ran.stderr
    assert lines[0].startswith(f"esr-lab: error: --results-dir {results} cannot be written")


def _wait_for(path: Path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_train_says_how_to_resume_and_the_resume_is_exact(tmp_path, sig, code):
    argv = [
        "train",
        *MICRO,
        "--steps",
        "8",
        "--eval-every",
        "4",
        "--results-dir",
        str(tmp_path / "results"),
    ]
    proc = subprocess.Popen(
        [*ESR_LAB, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    runs = tmp_path / "results" / "train"
    _wait_for(runs)
    wait_for_checkpoint(runs, "*/checkpoints/step-*", proc, timeout_s=240)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    line = err.strip().splitlines()[-1]
    run_id = next(runs.iterdir()).name
    name = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C (SIGINT)"
    assert line.startswith(f"esr-lab: stopped by {name} in run {runs / run_id}"), line
    resume = shlex.split(line.split("resume with: ", 1)[1])
    assert resume[0] == "esr-lab" and resume[1:] == [*argv, "--run-id", run_id]
    steps_before = pd.read_parquet(runs / run_id / "steps.parquet")

    finished = subprocess.run(
        [*ESR_LAB, *resume[1:]], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert finished.returncode == 0, finished.stderr
    steps = pd.read_parquet(runs / run_id / "steps.parquet")
    assert list(steps.step) == list(range(1, 9))  # each step once, none lost or repeated
    kept = steps[steps.step <= steps_before.step.max()]
    pd.testing.assert_frame_equal(kept, steps_before[steps_before.step <= kept.step.max()])
    assert (runs / run_id / "summary.parquet").is_file()


def test_an_edited_input_under_the_same_run_id_is_refused(tmp_path, monkeypatch, capsys):
    dataset = tmp_path / "problems.jsonl"
    dataset.write_text(GOOD_ROWS)
    responses = tmp_path / "responses.jsonl"
    responses.write_text('{"problem_id": "0", "response": "\\\\boxed{2}"}\n')
    args = ("grade", "--responses", str(responses), "--dataset", str(dataset), "--run-id", "g")
    assert run_cli(monkeypatch, capsys, tmp_path, *args)[0] == 0
    assert run_cli(monkeypatch, capsys, tmp_path, *args)[0] == 0  # unchanged: the same run
    saved = json.loads((tmp_path / "results" / "grade" / "g" / "config.json").read_text())
    assert set(saved["inputs"]) == {"responses", "dataset"}
    responses.write_text('{"problem_id": "0", "response": "\\\\boxed{3}"}\n')
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"content of {responses} (responses) changed since the run was made" in err
    samples = pd.read_parquet(tmp_path / "results" / "grade" / "g" / "samples.parquet")
    assert samples.correct.tolist() == [True]  # the earlier grade is kept


def test_a_refusal_names_the_settings_that_differ(tmp_path, monkeypatch, capsys):
    base = ("decay", *MICRO, "--limit", "2", "--samples", "1", "--run-id", "d")
    assert run_cli(monkeypatch, capsys, tmp_path, *base)[0] == 0
    other = ("decay", *MICRO, "--limit", "3", "--samples", "1", "--run-id", "d")
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, *other)
    assert code == 2 and "limit: 2 -> 3" in err


def test_figures_go_beside_their_run_unless_asked(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    monkeypatch.chdir(tmp_path)
    argv = ("decay", *MICRO, "--limit", "2", "--samples", "1", "--results-dir", str(results))
    code, out, _ = run_cli(monkeypatch, capsys, tmp_path, *argv, dirs=False)
    assert code == 0
    (run,) = (results / "decay").iterdir()
    assert (run / "decay.png").is_file() and f"figure: {run / 'decay.png'}" in out
    assert not (tmp_path / "figures").exists()
    mode = stat.S_IMODE((run / "summary.parquet").stat().st_mode)
    assert mode == 0o666 & ~_umask()  # written with the user's umask, not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_bare_command_lists_commands_and_summaries_are_whole(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("COLUMNS", "100")
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, dirs=False)
    assert code == 0 and not err
    for command in ("decay", "train", "reproduce", "plot", "build-toy"):
        assert f"  {command}" in out
    commands = out.split("Commands:", 1)[1]
    assert "..." not in commands  # click cuts summaries to 45 characters unless told not to
