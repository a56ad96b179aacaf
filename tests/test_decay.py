"""`esr-lab decay`: prefix hand-over across tokenizers, end to end on the micro world, resume."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from esr_lab.config import ModelPair, Sampling
from esr_lab.experiments import decay
from esr_lab.experiments.registry import Paths
from esr_lab.models import load_tokenizer

MICRO = dict(
    pair=ModelPair("micro-student", "micro-teacher"),
    limit=6,
    samples=2,
    prefix_lengths=(0, 5, 20),
    sampling=Sampling(max_new_tokens=96),
    batch_size=4,  # 2 problems per chunk: 3 chunks, so resuming has something to skip
)


def test_prefix_is_handed_over_as_text_across_tokenizers(byte_model_dir, bpe_model_dir):
    student, teacher = load_tokenizer(str(byte_model_dir)), load_tokenizer(str(bpe_model_dir))
    response = "First multiply: 7 * 3 = 21. Then add: 12 + 21 = 33."
    ids = student(response, add_special_tokens=False).input_ids
    text, teacher_ids = decay.reencode_prefix(student, teacher, ids, 20)
    assert text == response[:20]  # byte-level: one token per ASCII character
    assert teacher.decode(teacher_ids) == text
    assert len(teacher_ids) < len(ids[:20])  # the BPE tokenizer merges: really another vocab
    assert decay.reencode_prefix(student, teacher, ids, 0) == ("", [])


def test_decay_end_to_end_on_the_micro_world(tmp_path):
    paths = Paths(tmp_path / "results", tmp_path / "figures", show_progress=False)
    result = decay.run(decay.DecayConfig(**MICRO), paths)
    run_dir, summary = result.run_dir, result.tables["summary"]
    assert (tmp_path / "figures" / "decay.png").stat().st_size > 10_000
    assert (run_dir.path / "decay.png").is_file()
    config = json.loads((run_dir.path / "config.json").read_text())
    assert config["dataset"] == "micro" and config["samples"] == 2 and config["git_commit"]
    samples = pd.read_parquet(run_dir.path / "samples.parquet")
    # student_alone + teacher_alone + two prefix lengths, for 6 problems x 2 samples
    assert len(samples) == 4 * 6 * 2
    assert set(samples.condition) == {"student_alone", "teacher_alone", "teacher_from_prefix"}
    prefixed = samples[(samples.prefix_tokens == 20) & ~samples.prefix_complete]
    assert (prefixed.completion_tokens >= 20).all()
    curve = ["teacher_from_prefix"] * 3
    assert list(summary.condition) == ["teacher_alone", "student_alone", *curve]
    assert summary.iloc[0].avg_at_k == summary.iloc[2].avg_at_k  # the curve starts at the teacher
    assert ((summary.ci_low <= summary.avg_at_k) & (summary.avg_at_k <= summary.ci_high)).all()
    assert (summary.n_problems == 6).all()


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    cfg = decay.DecayConfig(**MICRO)
    reference = decay.run(cfg, Paths(tmp_path / "a", tmp_path / "fa", "ref", False)).run_dir

    real_chunk, calls = decay._run_chunk, []

    def dies_on_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_chunk(*args, **kwargs)

    monkeypatch.setattr(decay, "_run_chunk", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        decay.run(cfg, Paths(tmp_path / "b", tmp_path / "fb", "killed", False))
    run_path = tmp_path / "b" / "decay" / "killed"
    assert len(list((run_path / "parts").glob("*.parquet"))) == 1
    assert not (run_path / "summary.parquet").exists()

    monkeypatch.setattr(decay, "_run_chunk", real_chunk)
    resumed = decay.run(cfg, Paths(tmp_path / "b", tmp_path / "fb", "killed", False)).run_dir
    assert resumed.resumed
    columns = ["problem_id", "sample", "condition", "prefix_tokens", "completion", "correct"]
    before = pd.read_parquet(reference.path / "samples.parquet")[columns]
    after = pd.read_parquet(resumed.path / "samples.parquet")[columns]
    pd.testing.assert_frame_equal(before, after)
