"""Vocabularies matched on what their tokens write: byte-level BPE's `Ġ` and SentencePiece's `▁`
are one space, `<0xNN>` is its byte, special tokens match only themselves."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from esr_lab.crosstok import shared_vocab
from esr_lab.token_text import is_byte_level, match_by_text, special_ids, token_keys
from tests.tiny_models import CORPUS, byte_level_tokenizer

# A SentencePiece-style vocabulary (Gemma's decoder): `▁` pieces, byte tokens, specials.
SP_VOCAB = ["<pad>", "<eos>", "<bos>", "<0x41>", "<0xE2>", "A", "▁12", "12", "▁answer", "\n"]


def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SP_VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )


def test_sentencepiece_keys_are_the_bytes_each_piece_writes() -> None:
    sp = sentencepiece_tokenizer()
    assert not is_byte_level(sp)
    keys = token_keys(sp)
    assert keys[b" 12"] == 6 and keys[b"12"] == 7 and keys[b"\n"] == 9
    assert keys[b"\xe2"] == 4  # a byte token writes its byte
    assert keys[b"A"] == 5  # the piece, not its byte token <0x41>, owns "A"
    assert keys["<eos>"] == 1 and b"<eos>" not in keys  # a special writes no text


def test_special_ids_include_added_special_tokens() -> None:
    # an added special token, as a chat template's <|im_end|>, is not in all_special_ids
    sp = sentencepiece_tokenizer()
    sp.add_tokens(["<end_of_turn>"], special_tokens=True)
    sp.add_tokens(["plain"])  # an added token that is not special stays out
    end_of_turn = sp.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn not in sp.all_special_ids
    assert special_ids(sp) == {0, 1, 2, end_of_turn}


def test_byte_level_keys_read_the_byte_alphabet() -> None:
    bpe = byte_level_tokenizer(CORPUS)
    assert is_byte_level(bpe)
    keys = token_keys(bpe)
    vocab = bpe.get_vocab()
    assert keys[b" "] == vocab["Ġ"] and keys[b"\n"] == vocab["Ċ"]
    assert keys["<|im_end|>"] == vocab["<|im_end|>"]
    assert len(keys) == len(vocab)  # byte-level spellings are one-to-one


def test_a_leading_space_matches_across_the_two_schemes() -> None:
    bpe, sp = byte_level_tokenizer(CORPUS), sentencepiece_tokenizer()
    vocab = bpe.get_vocab()
    pairs = dict(match_by_text(bpe, sp))
    assert pairs[vocab["Ġ12"]] == 6 and pairs[vocab["12"]] == 7
    assert pairs[vocab["Ċ"]] == 9 and pairs[vocab["A"]] == 5
    assert vocab["<|im_end|>"] not in pairs  # no special token in common
    assert "Ġ12" not in sp.get_vocab()  # raw strings would not have matched


def test_shared_vocab_matches_decoded_strings() -> None:
    bpe, sp = byte_level_tokenizer(CORPUS), sentencepiece_tokenizer()
    vocab = shared_vocab(sp, bpe, min_overlap=0.5)
    teacher_tokens = bpe.convert_ids_to_tokens(vocab.teacher_ids_S.tolist())
    assert "Ġ12" in teacher_tokens and "Ċ" in teacher_tokens
