"""Hashing: canonical JSON, short content digests and derived seeds.

Every identity of the project (an architecture's id, a trial key, a search key, a cache
key) and every derived random stream comes from these three functions, so two pieces
of code that describe the same thing always agree on its name.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_json", "derive_seed", "digest"]


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces, NaN rejected (it has no equal)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def digest(value: Any, length: int = 16) -> str:
    """A short hex name for a JSON-able value; equal values, equal names."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def derive_seed(seed: int | str, purpose: str) -> int:
    """An independent 63-bit seed per purpose (init, dropout, shuffling, one trial), so streams never overlap."""
    text = f"{seed}:{purpose}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2**63 - 1)
