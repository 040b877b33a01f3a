"""Stable fingerprints: of a tokenizer (vocabulary and special tokens) and of id strings.

Shards store the tokenizer's; the student stage refuses a student whose
tokenizer hashes differently, because soft labels are indexed by token id.
`stable_hash` is the 64-bit hash that worker partitions, per-prompt seeds and
the student's held-out split key on: identical on every machine and process,
unlike Python's `hash`.

    >>> from pipeline.store.fingerprint import tokenizer_fingerprint
    >>> class Tok:  # any object with get_vocab() and special tokens works
    ...     all_special_tokens = ["</s>"]
    ...     def get_vocab(self): return {"a": 0, "</s>": 1}
    >>> len(tokenizer_fingerprint(Tok()))
    64
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over the sorted (token, id) vocabulary and the special tokens with their ids."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    specials = sorted(set(getattr(tokenizer, "all_special_tokens", []) or []))
    payload = {"vocab": vocab, "special_tokens": [[t, tokenizer.get_vocab().get(t)] for t in specials]}
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def prompt_hashes(sample_ids: list[str]) -> np.ndarray:
    """uint64 `stable_hash` of the prompt id of each "<prompt id>/<index>" sample id."""
    return np.fromiter((stable_hash(sid.rsplit("/", 1)[0]) for sid in sample_ids), np.uint64,
                       len(sample_ids))


def stable_hash(text: str) -> int:
    """64-bit integer hash of `text`, identical across processes and machines."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
