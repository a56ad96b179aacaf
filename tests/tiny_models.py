"""Tiny real models and tokenizers, built locally with no network: the builders behind
conftest's fixtures, for tests that build their own, and for the benchmarks' worlds.

A plain module (import `tests.tiny_models`), not a conftest, so that benchmarks can use it."""

from __future__ import annotations

import os

# Before transformers/datasets are imported: they read these once. Tests never touch a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
    "{% endif %}"
)
# A second family for cross-tokenizer tests: other specials (so every id moves), other template.
LLAMA_SPECIALS = ("<pad>", "<s>", "</s>", "<|eot_id|>")
LLAMA_TEMPLATE = (
    "<s>{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)
CORPUS = [
    "Compute 12 + 7 * 3. First multiply: 7 * 3 = 21. Then add: 12 + 21 = 33. \\boxed{33}",
    "The answer is \\boxed{42}. Please reason step by step.",
] * 20


def byte_level_tokenizer(
    merges_corpus: list[str] | None = None,
    vocab_size: int = 300,
    specials=tuple(SPECIALS),
    eos: str = "<|im_end|>",
    pad: str = "<|endoftext|>",
    chat_template: str = CHAT_TEMPLATE,
):
    """A lossless byte-level BPE tokenizer: raw bytes only, or with merges learned on a corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size if merges_corpus else 256 + len(specials),
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(merges_corpus or ["a"], trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad)
    wrapped.chat_template = chat_template
    return wrapped


def llama_tokenizer():
    """Byte-level BPE on CORPUS with fewer merges than `byte_level_tokenizer(CORPUS)` and other
    specials: the same strings under other ids, and some of its tokens split in two there."""
    return byte_level_tokenizer(
        CORPUS, 280, LLAMA_SPECIALS, eos="<|eot_id|>", pad="<pad>", chat_template=LLAMA_TEMPLATE
    )


# Per architecture: config class, model class, and what differs from the shared test size.
ARCHITECTURES = {
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16, "tie_word_embeddings": True}),
    "llama": (LlamaConfig, LlamaForCausalLM, {"bos_token_id": None}),
}


# The shared test size; a caller may override any of these (benchmarks build bigger worlds).
TEST_SIZE = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 512,
}


def tiny_model(
    vocab_size: int,
    seed: int = 0,
    eos_id: int | None = None,
    pad_id: int = 0,
    arch="qwen3",
    **sizes,
):
    """A randomly initialised model of a real architecture (Qwen3 by default; Llama is the other
    side of cross-tokenizer tests): 2 layers at test size, or `sizes` (config fields) instead."""
    config_cls, model_cls, own = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    config = config_cls(
        vocab_size=vocab_size,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        **{**TEST_SIZE, **own, **sizes},
    )
    return model_cls(config).eval()


def tiny_llama(vocab_size: int, seed: int = 0, eos_id: int | None = None, pad_id: int = 0):
    return tiny_model(vocab_size, seed, eos_id, pad_id, arch="llama")


def save_pair(folder: Path, tokenizer, seed: int = 0, build=tiny_model) -> Path:
    """A model+tokenizer folder as `save_pretrained` writes it (the local stand-in for a hub id)."""
    model = build(len(tokenizer), seed, tokenizer.eos_token_id, tokenizer.pad_token_id)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
