"""The collapse preconditions: hand-made tables for the late signal and a real pair's (a), the
micro world for a toy world's (a)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from esr_lab.preconditions import (
    after_answer_text,
    after_turn_text,
    late_signal,
    measure_real,
    sample_to_eos,
    teacher_after_turn,
)


def _write(folder, name, frame, config=None):
    path = folder / name
    path.parent.mkdir(parents=True)
    frame.to_parquet(path)
    if config is not None:
        (path.parent / "config.json").write_text(json.dumps(config))


def _sampled(to_end_of_turn: bool, **more) -> dict:
    return {"sampling": {"stop_at_end_of_turn": to_end_of_turn}, **more}


def _bins(teacher_entropy_past: float, window: int = 20) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": ["base", "base", "base", "trained"],
            "window": window,
            "bin_start": [0, 10, 20, 20],
            "tokens": [100, 100, 50, 999],
            "teacher_entropy": [0.2, 0.4, teacher_entropy_past, 9.0],
        }
    )


DECAY = pd.DataFrame(
    {
        "condition": ["teacher_alone", "teacher_from_prefix", "teacher_from_prefix"],
        "prefix_tokens": [0, 25, 200],
        "avg_at_k": [0.9, 0.5, 0.25],
    }
)


def test_late_signal_from_hand_made_tables(tmp_path):
    _write(tmp_path, "positions/r/bins.parquet", _bins(1.0), _sampled(True))
    _write(tmp_path, "decay/r/summary.parquet", DECAY)
    got = late_signal(tmp_path, window=20)
    assert got["past_window_share"] == pytest.approx(50 / 250)  # the trained row is ignored
    assert got["teacher_entropy_in_window"] == pytest.approx((0.2 * 100 + 0.4 * 100) / 200)
    assert got["teacher_entropy_past_window"] == pytest.approx(1.0)
    assert (got["shortest_prefix_tokens"], got["longest_prefix_tokens"]) == (25, 200)
    assert got["teacher_from_shortest_prefix_avg"] == 0.5
    assert got["teacher_from_longest_prefix_avg"] == 0.25
    assert got["teacher_alone_avg"] == 0.9
    assert "past_window_share_to_eos" not in got  # no run sampled to the EOS


def test_late_signal_reads_each_sampling_from_its_own_run(tmp_path):
    # the run sampled to the EOS sorts first; the cross-world numbers still come from the one
    # sampled to the end of turn, and the window is the one that run shaded
    _write(tmp_path, "positions/a-to-eos/bins.parquet", _bins(3.0, window=10), _sampled(False))
    _write(tmp_path, "positions/b/bins.parquet", _bins(1.0, window=10), _sampled(True))
    _write(tmp_path, "decay/r/summary.parquet", DECAY)
    got = late_signal(tmp_path)
    assert got["window"] == 10
    assert got["teacher_entropy_in_window"] == pytest.approx(0.2)
    assert got["teacher_entropy_past_window"] == pytest.approx((0.4 * 100 + 1.0 * 50) / 150)
    assert got["teacher_entropy_past_window_to_eos"] == pytest.approx((0.4 * 100 + 3.0 * 50) / 150)
    assert got["past_window_share_to_eos"] == pytest.approx(150 / 250)


def test_after_answer_text_counts_a_new_plain_turn():
    completions = ["12\nQuestion: x", "12 3", "Question: 2+2"]
    samples = pd.DataFrame({"completion": completions, "finished": [False, True, False]})
    got = after_answer_text(samples)
    assert got["after_turn_text_share"] == pytest.approx(2 / 3)
    after = len("Question: x") + len("Question: 2+2")  # from the new turn on
    assert got["after_turn_text_chars_share"] == pytest.approx(after / sum(map(len, completions)))
    assert got["ends_at_budget_share"] == pytest.approx(2 / 3)


def test_measure_real_reads_the_students_eval_run(tmp_path):
    pair = {"pair": {"student": "base-model"}}
    _write(tmp_path, "positions/r/bins.parquet", _bins(1.0), _sampled(True, **pair))
    _write(tmp_path, "decay/r/summary.parquet", DECAY)
    teacher_eval = pd.DataFrame({"completion": ["Question: no"], "finished": [True]})
    student_eval = pd.DataFrame({"completion": ["4", "4\nQuestion: 1+1"], "finished": [True] * 2})
    _write(tmp_path, "eval/a/samples.parquet", teacher_eval, {"model": "teacher-model"})
    _write(tmp_path, "eval/b/samples.parquet", student_eval, {"model": "base-model"})
    got = measure_real(tmp_path)
    assert (got["student"], got["after_turn_from"]) == ("base-model", "b")
    assert got["after_turn_text_share"] == 0.5
    assert got["window"] == 20 and got["teacher_alone_avg"] == 0.9


def test_measure_real_without_the_runs_says_what_to_run(tmp_path):
    _write(tmp_path, "positions/r/bins.parquet", _bins(1.0), _sampled(True, pair={"student": "s"}))
    with pytest.raises(SystemExit, match="lacks the student's eval run"):
        measure_real(tmp_path)
    with pytest.raises(SystemExit, match="lacks the student's eval run"):
        measure_real(tmp_path / "nothing-run-yet")  # no positions run: still the one line


def test_after_turn_text_counts_what_follows_the_end_of_turn():
    # ids: 7 = end of turn (an added special, as <|im_end|>), 0 = EOS, 1 = another special;
    # 5 and 6 are text
    tokenizer = SimpleNamespace(
        all_special_ids=[0, 1], added_tokens_decoder={7: SimpleNamespace(special=True)}
    )
    student = SimpleNamespace(loaded=SimpleNamespace(end_of_turn_id=7), tokenizer=tokenizer)
    ids = [[5, 7, 0], [5, 7, 7, 7, 5, 6], [5, 6, 6], [5, 7, 1, 0]]
    rollouts = SimpleNamespace(completion_ids=ids, finished=[True, False, False, True])
    got = after_turn_text(student, rollouts)
    assert got["after_turn_text_share"] == 0.25  # only the second writes text after its turn
    assert got["after_turn_text_tokens_mean"] == 2 / 4
    assert got["end_of_turn_repeats_mean"] == 2 / 4  # the second writes it twice more
    assert got["ends_at_budget_share"] == 0.5 and got["end_of_turn_share"] == 0.75


def test_the_micro_world_sampled_to_its_eos_and_its_teacher_past_the_turn():
    student, prompts, rollouts = sample_to_eos("micro", samples=4, max_new_tokens=48)
    got = after_turn_text(student, rollouts)
    shares = ("after_turn_text_share", "ends_at_budget_share", "end_of_turn_share")
    assert all(0 <= got[key] <= 1 for key in shares)
    assert len(rollouts.completion_ids) == len(prompts) == 4
    teacher = teacher_after_turn("micro", student, prompts, rollouts)
    ended = any(student.loaded.end_of_turn_id in ids for ids in rollouts.completion_ids)
    assert bool(teacher) == ended  # nothing to read where no rollout ends its turn
    assert all(0 <= value <= 1 for value in teacher.values())
