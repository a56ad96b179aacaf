"""Seeds derived from keys, so that every sampled row is reproducible on its own."""

from __future__ import annotations

import hashlib


def row_seed(*keys: object) -> int:
    """A 63-bit seed from any tuple of keys, stable across processes and Python versions."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
