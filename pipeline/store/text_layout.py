"""What a student of another tokenizer needs to rebuild a sample's text: token bytes and regions.

Text is the common ground between two tokenizers, and bytes are its coordinates.
A sample's *teacher text* is the concatenation of its tokens' UTF-8 byte strings,
special tokens contributing none (they are markup, not text). Each token's byte
string comes from its id alone (`token_bytes_table`), never from re-tokenising:
vLLM's output need not be the canonical tokenisation of its text.

A sample's structure is a list of `TextRegion`s: byte ranges of the teacher text
with a role (a message's role, or `prompt`/`completion`/`text`) and whether the
teacher's labels cover it. A student renders the regions with its own chat
template and aligns its tokens to the teacher's inside the labelled ones.

Stored per shard (schema v3): `samples/token_byte_lengths` (one per token, 0 for
a special token) and `samples/text_regions` (one JSON list per sample, below).

    >>> from pipeline.store.text_layout import TextRegion, encode_regions, decode_regions
    >>> regions = [TextRegion("user", 0, 5, False), TextRegion("assistant", 5, 9, True)]
    >>> encode_regions(regions)
    '[["user",0,5,0],["assistant",5,9,1]]'
    >>> decode_regions(encode_regions(regions)) == regions
    True
    >>> byte_ends([1, 0, 3]).tolist()
    [1, 1, 4]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TextRegion:
    """A byte range `[start, end)` of a sample's teacher text."""

    role: str
    """A chat message's role (`system`, `user`, `assistant`, ...), or `prompt`, `completion`
    (generated and prompt/completion samples) or `text` (a scored document window)."""
    start: int
    end: int
    labelled: bool
    """True where the teacher's label rows cover every token inside the range."""


def encode_regions(regions: list[TextRegion]) -> str:
    """The compact JSON stored in `samples/text_regions`: `[[role, start, end, 0|1], ...]`."""
    rows = [[r.role, int(r.start), int(r.end), int(r.labelled)] for r in regions]
    return json.dumps(rows, separators=(",", ":"), ensure_ascii=False)


def decode_regions(text: str) -> list[TextRegion]:
    """Inverse of `encode_regions`; a malformed row raises ValueError naming it."""
    regions = []
    for i, row in enumerate(json.loads(text)):
        if not (isinstance(row, list) and len(row) == 4 and isinstance(row[0], str)):
            raise ValueError(f"text region {i}: expected [role, start, end, labelled], got {row!r}")
        regions.append(TextRegion(row[0], int(row[1]), int(row[2]), bool(row[3])))
    return regions


def byte_ends(byte_lengths) -> np.ndarray:
    """End offset of each token in the teacher text (start of token t = end of token t - 1)."""
    return np.cumsum(np.asarray(byte_lengths, np.int64))


# GPT-2's reversible byte <-> printable-unicode map, used by every byte-level BPE
# (GPT-2, SmolLM2, Llama 3, Qwen): token strings are these characters, one per byte.
@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _decoder_kinds(tokenizer: Any) -> set[str]:
    """The `type`s of the fast tokenizer's decoder (a Sequence's parts included)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    parts = spec.get("decoders") or [spec]
    return {part.get("type", "") for part in parts}


def token_bytes_table(tokenizer: Any) -> tuple[list[bytes], np.ndarray]:
    """Every id's UTF-8 byte string and a bool mask of special tokens (whose bytes are b"").

    Byte-level BPE tokens map through GPT-2's byte table; SentencePiece-style tokens
    (a `ByteFallback` decoder) read `<0xNN>` as one byte and `▁` as a space. Added
    tokens that are not special (e.g. a chat marker a tokenizer lists as plain) are
    text: their content's UTF-8 bytes (after the `▁` -> space map where the tokenizer
    normalises spaces to `▁`, as Gemma's whitespace-run tokens do).
    """
    size = len(tokenizer)
    vocab = tokenizer.get_vocab()
    strings = [""] * size
    for token, i in vocab.items():
        if i < size:
            strings[i] = token
    special = np.zeros(size, bool)
    special[[i for i in tokenizer.all_special_ids if i < size]] = True
    added = {i for i in getattr(tokenizer, "added_tokens_decoder", {}) or {}}
    kinds = _decoder_kinds(tokenizer)
    table = []
    for i, token in enumerate(strings):
        if special[i]:
            table.append(b"")
        elif i in added and "ByteLevel" in kinds:
            table.append(token.encode("utf-8"))
        else:
            table.append(_token_bytes(token, kinds))
    return table, special


def _token_bytes(token: str, kinds: set[str]) -> bytes:
    if "ByteLevel" in kinds:
        decoder = _byte_level_decoder()
        if all(c in decoder for c in token):
            return bytes(decoder[c] for c in token)
        return token.encode("utf-8")
    if "ByteFallback" in kinds and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return bytes([int(token[3:5], 16)])
    return token.replace("\u2581", " ").encode("utf-8")
