"""What each token of a vocabulary writes, as bytes: the key cross-tokenizer pairs match on.

Raw token strings are spelled in each tokenizer's own alphabet. Byte-level BPE (GPT-2, Llama 3,
Qwen, SmolLM2) maps every byte to a printable character, so a leading space is `Ġ` and a
newline `Ċ`; SentencePiece (Gemma, Llama 2) writes a space as `▁` and a byte it has no piece
for as `<0xNN>`. Matching raw strings pairs SmolLM2's 49,152 tokens with 14,837 of Gemma 3's;
matching what the tokens write pairs 46,034 of them.

Keys: the UTF-8 bytes a token writes (`bytes`), decoded by the tokenizer's own scheme, which is
read from its decoder (byte-level, else SentencePiece). A special token (`<eos>`,
`<|im_end|>`) writes no text: its key is its string (`str`), so it pairs only with the same
special token on the other side. Where one vocabulary has several ids that write the same
bytes (SentencePiece's `A` and its byte token `<0x41>`), the key goes to the id the tokenizer
produces for that text: an ordinary piece before an added one before a byte token.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPACE_MARKER = "\u2581"  # SentencePiece's "▁"


@cache
def _byte_of_char() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable character table."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def is_byte_level(tokenizer: Any) -> bool:
    """Whether the tokenizer's decoder is byte-level BPE's (else SentencePiece's is assumed)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    return '"ByteLevel"' in json.dumps(decoder)


def _byte_level_bytes(token: str) -> bytes:
    table = _byte_of_char()
    if all(char in table for char in token):
        return bytes(table[char] for char in token)
    return token.encode()  # not in the byte alphabet: a literal piece


def _sentencepiece_bytes(token: str) -> bytes:
    byte = _BYTE_TOKEN.fullmatch(token)
    if byte:
        return bytes([int(byte.group(1), 16)])
    return token.replace(_SPACE_MARKER, " ").encode()


def special_ids(tokenizer: Any) -> set[int]:
    """Every special id: the named ones (`all_special_ids`: BOS, EOS, pad, ...) and the added
    tokens marked special, which `all_special_ids` leaves out (a chat template's `<|im_end|>`)."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}


def token_keys(tokenizer: Any) -> dict[bytes | str, int]:
    """Each key (see the module's docstring) and the one id of this vocabulary that writes it."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    special = special_ids(tokenizer)
    spell = _byte_level_bytes if is_byte_level(tokenizer) else _sentencepiece_bytes
    ranked: list[tuple[int, int, bytes | str]] = []
    for token, i in tokenizer.get_vocab().items():
        if i in special:
            ranked.append((0, i, token))
        elif i in added:  # added tokens are stored as the text they write
            ranked.append((1, i, token.encode()))
        else:
            ranked.append((2 if _BYTE_TOKEN.fullmatch(token) else 0, i, spell(token)))
    keys: dict[bytes | str, int] = {}
    for _, i, key in sorted(ranked, key=lambda entry: (entry[0], entry[1])):
        keys.setdefault(key, i)
    return keys


def match_by_text(student_tokenizer: Any, teacher_tokenizer: Any) -> list[tuple[int, int]]:
    """(student id, teacher id) for every key both vocabularies write, by student id."""
    teacher = token_keys(teacher_tokenizer)
    student = token_keys(student_tokenizer)
    return sorted((i, teacher[key]) for key, i in student.items() if key in teacher)
