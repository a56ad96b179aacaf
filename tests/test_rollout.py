"""Seeded, batched sampling: same seed same tokens, batch-independent rows, greedy = HF."""

from __future__ import annotations

import math

import torch

from esr_lab.config import Sampling
from esr_lab.models import load_model
from esr_lab.rollout import TransformersEngine, left_pad, row_seed, sampling_logprobs

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]


def engine(folder, batch_size=8) -> TransformersEngine:
    return TransformersEngine(load_model(str(folder), device="cpu"), batch_size)


def test_same_seed_same_tokens(byte_model_dir):
    eng = engine(byte_model_dir)
    sampling = Sampling(temperature=0.7, max_new_tokens=12)
    seeds = [row_seed(0, "p", i) for i in range(3)]
    first, second = eng.generate(PROMPTS, seeds, sampling), eng.generate(PROMPTS, seeds, sampling)
    assert first.completion_ids == second.completion_ids
    other = eng.generate(PROMPTS, [s + 1 for s in seeds], sampling)
    assert other.completion_ids != first.completion_ids


def test_a_row_does_not_depend_on_its_batch(byte_model_dir):
    sampling = Sampling(temperature=1.0, max_new_tokens=10)
    seeds = [row_seed(3, i) for i in range(3)]
    together = engine(byte_model_dir).generate(PROMPTS, seeds, sampling)
    alone = engine(byte_model_dir, batch_size=1).generate(PROMPTS, seeds, sampling)
    assert together.completion_ids == alone.completion_ids


def test_greedy_matches_transformers_generate(byte_model_dir):
    eng = engine(byte_model_dir)
    out = eng.generate(PROMPTS, [0, 0, 0], Sampling(temperature=0, max_new_tokens=8))
    model, pad = eng.loaded.model, eng.loaded.tokenizer.pad_token_id
    ids, mask = left_pad(PROMPTS, pad)
    reference = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=8,
        eos_token_id=eng.loaded.stop_ids(),
        pad_token_id=pad,
    )
    for i, row in enumerate(out.completion_ids):
        expected = reference[i, ids.shape[1] :].tolist()[: len(row)]
        assert row == expected


def test_stops_at_eos_per_row(byte_model_dir):
    eng = engine(byte_model_dir)
    greedy = Sampling(temperature=0, max_new_tokens=6)
    first_tokens = [row[0] for row in eng.generate(PROMPTS, [0] * 3, greedy).completion_ids]
    eng.loaded.model.generation_config.eos_token_id = first_tokens[0]  # row 0 now stops at once
    out = eng.generate(PROMPTS, [0] * 3, greedy)
    assert out.completion_ids[0] == [first_tokens[0]] and out.finished[0]
    pairs = zip(out.completion_ids, out.logprobs, strict=True)
    assert all(len(ids) == len(lp) for ids, lp in pairs)


def test_sampler_logprobs_are_those_of_the_sampled_distribution(byte_model_dir):
    eng = engine(byte_model_dir)
    sampling = Sampling(temperature=0.5, max_new_tokens=1)
    out = eng.generate([PROMPTS[0]], [1], sampling)
    logits = eng.loaded.model(torch.tensor([PROMPTS[0]])).logits[0, -1]
    expected = torch.log_softmax(logits / 0.5, -1)[out.completion_ids[0][0]].item()
    assert math.isclose(out.logprobs[0][0], expected, abs_tol=1e-5)


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = sampling_logprobs(logits, 1.0, top_p=0.75).exp()[0]
    assert torch.allclose(kept, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    assert torch.allclose(sampling_logprobs(logits, 1.0, top_p=1.0).exp(), logits.exp())


def test_row_seed_is_stable():
    assert row_seed(0, "student", "p1", 0) == row_seed(0, "student", "p1", 0)
    assert row_seed(0, "student", "p1", 0) != row_seed(0, "student", "p1", 1)
