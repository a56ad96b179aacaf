"""Model loading from local folders (the stand-in for hub ids), errors, prompt rendering."""

from __future__ import annotations

import time

import pytest
import torch

from esr_lab.errors import UserError
from esr_lab.models import load_model, load_tokenizer, pick_dtype
from esr_lab.prompts import DEFAULT_INSTRUCTION, render_prompt


def test_loads_a_save_pretrained_folder(byte_model_dir):
    loaded = load_model(str(byte_model_dir), device="cpu")
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.stop_ids() == [loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_dtype_override_and_auto():
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype 'fp7'"):
        pick_dtype("fp7", torch.device("cpu"))


def test_missing_folder_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no model folder") as err:
        load_model(str(tmp_path / "nope"))
    assert "\n" not in str(err.value)


def test_folder_without_weights(tmp_path, byte_model_dir):
    (tmp_path / "config.json").write_text((byte_model_dir / "config.json").read_text())
    with pytest.raises(UserError, match="has no weights"):
        load_model(str(tmp_path))


def test_hub_id_offline_is_a_clear_error():
    start = time.time()
    with pytest.raises(UserError, match="cannot load model 'no-such-org/no-such-model'"):
        load_tokenizer("no-such-org/no-such-model")
    assert time.time() - start < 30


def test_prompt_goes_through_the_models_own_template(byte_model_dir):
    tok = load_tokenizer(str(byte_model_dir))
    text = render_prompt(tok, "What is 2+2?")
    assert text == (
        f"<|im_start|>user\nWhat is 2+2?\n{DEFAULT_INSTRUCTION}<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>"
    )
    thinking = render_prompt(tok, "What is 2+2?", enable_thinking=True)
    assert thinking.endswith("<|im_start|>assistant\n")


def test_prompt_without_chat_template(byte_model_dir):
    tok = load_tokenizer(str(byte_model_dir))
    tok.chat_template = None
    assert render_prompt(tok, "Q", instruction="") == "Question: Q\nAnswer:"


def test_plain_prompt_writes_the_bos_its_tokenizer_adds_exactly_once():
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<eos>": 1, "Q": 2, "x": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="x"))
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 0)]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>")
    text = render_prompt(tok, "Q", instruction="")
    assert text == "<bos>Question: Q\nAnswer:"
    assert render_prompt(tok, "Q", placement="raw") == "<bos>Q"
    ids = tok(text, add_special_tokens=False).input_ids  # as Policy.prompt_ids tokenizes
    assert ids.count(0) == 1 and ids[0] == 0
