"""The vLLM engine against a fake vLLM on the CPU (mapping, seeds, stops, weight sync, sleep);
the real thing only where CUDA and vllm are present."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch

from esr_lab import vllm_engine
from esr_lab.config import ModelPair, Sampling
from esr_lab.errors import UserError
from esr_lab.models import load_model
from esr_lab.policy import make_engine
from esr_lab.vllm_engine import VLLMEngine, completion_row, sampling_kwargs


@dataclass
class FakeLLM:
    """Records what vLLM is asked; answers each prompt with its own seed's tokens."""

    calls: list = field(default_factory=list)

    def generate(self, prompts, params, use_tqdm, lora_request):
        self.calls.append(("generate", prompts, params, lora_request))
        outs = []
        for p in params:
            ids = [p["seed"] % 7 + 3] * min(p["max_tokens"], 3)
            out = SimpleNamespace(token_ids=ids, logprobs=None, finish_reason="length",
                                  stop_reason=None)  # fmt: skip
            outs.append(SimpleNamespace(outputs=[out]))
        return outs

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self):
        self.calls.append(("wake_up",))

    def apply_model(self, fn):
        self.calls.append(("apply_model",))
        return [fn(self)]

    def load_weights(self, weights):
        self.calls.append(("load_weights", len(weights)))


@pytest.fixture
def micro():
    return load_model("micro-student", device="cpu")


def fake_engine(loaded, **kw) -> tuple[VLLMEngine, FakeLLM]:
    llm = FakeLLM()
    return VLLMEngine(loaded, llm=llm, params_cls=dict, **kw), llm


def test_sampling_params_carry_the_rows_settings_seed_and_stops():
    kw = sampling_kwargs(Sampling(temperature=0.7, top_p=0.95), 123, [2, 7], 50)
    assert kw == {
        "n": 1, "temperature": 0.7, "top_p": 0.95, "top_k": -1, "max_tokens": 50, "seed": 123,
        "stop_token_ids": [2, 7], "logprobs": 0, "skip_special_tokens": False,
        "detokenize": False,
    }  # fmt: skip
    assert sampling_kwargs(Sampling(top_k=50), 1, [2], 5)["top_k"] == 50


def test_completion_keeps_its_stop_token_and_logprobs():
    step = {5: SimpleNamespace(logprob=-0.5), 6: SimpleNamespace(logprob=-1.5)}
    out = SimpleNamespace(token_ids=[5, 6], logprobs=[step, step], finish_reason="stop",
                          stop_reason=9)  # fmt: skip
    assert completion_row(out, [9]) == ([5, 6, 9], [-0.5, -1.5, 0.0], True)
    eos = SimpleNamespace(token_ids=[5, 9], logprobs=None, finish_reason="stop", stop_reason=None)
    assert completion_row(eos, [9]) == ([5, 9], [0.0, 0.0], True)
    cut = SimpleNamespace(token_ids=[5], logprobs=None, finish_reason="length", stop_reason=None)
    assert completion_row(cut, [9])[2] is False


def test_generate_passes_per_row_seeds_budgets_and_sleeps(micro):
    engine, llm = fake_engine(micro)
    long_prompt = [5] * (micro.context_length - 2)
    out = engine.generate([[5, 6], long_prompt], [11, 12], Sampling(max_new_tokens=40))
    _, prompts, params, lora = llm.calls[0]
    assert [p["seed"] for p in params] == [11, 12] and lora is None
    assert [p["max_tokens"] for p in params] == [40, 2]  # capped at the context
    assert params[0]["stop_token_ids"] == micro.stop_ids(True)
    assert prompts[1] == {"prompt_token_ids": long_prompt}
    assert out.completion_ids == [[11 % 7 + 3] * 3, [12 % 7 + 3] * 2]
    assert llm.calls[-1] == ("sleep", 1)
    engine.generate([[5]], [1], Sampling(max_new_tokens=4))
    assert ("wake_up",) in llm.calls  # woken before sampling again


def test_lora_weights_reach_vllm_once_per_version(micro, monkeypatch, tmp_path):
    engine, llm = fake_engine(micro, sleep=False)
    made = []
    monkeypatch.setattr(vllm_engine, "lora_request", lambda *a: made.append(a) or a)

    class Adapter:
        peft_config = {"default": None}

        def save_pretrained(self, folder):
            folder.mkdir(parents=True)

    engine.sync(Adapter(), 0)
    engine.sync(Adapter(), 0)
    engine.sync(Adapter(), 1)
    assert [(name, index) for name, index, _ in made] == [("student-v1", 1), ("student-v2", 2)]
    engine.generate([[5]], [1], Sampling(max_new_tokens=2))
    assert llm.calls[-1][3] == made[-1]  # sampled through the latest adapter
    folders = made[-1][2].parent
    assert [f.name for f in folders.iterdir()] == ["v2"]  # only the live adapter is on disk
    del engine
    import gc

    gc.collect()
    assert not folders.exists()  # and none once the engine is gone


def test_full_finetuning_weights_are_loaded_in_place(micro):
    engine, llm = fake_engine(micro)
    engine.sync(micro.model, 3)
    assert ("apply_model",) in llm.calls
    assert ("load_weights", len(micro.model.state_dict())) in llm.calls


def test_vllm_needs_a_gpu(micro):
    with pytest.raises(UserError, match="--engine vllm needs a CUDA GPU"):
        make_engine(micro, ModelPair(engine="vllm"), 8)
    with pytest.raises(UserError, match="--vllm-memory"):
        VLLMEngine(micro, memory=1.5)


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
    reason="needs a CUDA GPU and vllm",
)
def test_vllm_greedy_matches_transformers(tmp_path):
    from esr_lab.rollout import TransformersEngine

    loaded = load_model("micro-student", device="cuda", dtype="float32")
    prompts = [[5, 6, 7, 8], [9, 10]]
    greedy = Sampling(temperature=0, max_new_tokens=16)
    reference = TransformersEngine(loaded).generate(prompts, [0, 0], greedy)
    vllm = VLLMEngine(loaded, memory=0.2).generate(prompts, [0, 0], greedy)
    assert vllm.completion_ids == reference.completion_ids
    seeded = Sampling(temperature=1.0, max_new_tokens=16)
    engine = VLLMEngine(loaded, memory=0.2)
    first = engine.generate(prompts, [1, 2], seeded).completion_ids
    assert engine.generate(prompts, [1, 2], seeded).completion_ids == first
