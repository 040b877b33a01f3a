"""The `int8` hidden-state format: one int8 per dimension and one float32 scale per token row.

A token's state h (hidden_size values, largest magnitude m) is stored square-root
companded: `q = round(127 * sign(h) * sqrt(|h| / m))` in `hidden/layer_NN` (int8) and
`s = m / 127**2` in `hidden/layer_NN_scale` (float32), decoded `q * |q| * s`. A row
costs hidden_size + 4 bytes (fp16: 2 x hidden_size) and stays a fixed-size row
`numpy.memmap` reads directly.

Why companded rather than linear: LLM residual streams carry a few outlier
dimensions (max|h| ~ 12 standard deviations of the row on the demo teacher), so a
linear step of m / 127 rounds most values coarsely (cosine to fp16 0.9986 at worst on
SmolLM2-135M); the square root spends the codes where most values are (worst cosine
0.99990). Worst case per value: |decoded - h| <= (127 * sqrt(|h| / m) + 1/4) * s,
i.e. m / 127 at |h| = m and m / 64516 near 0. A row of zeros gets the smallest
positive float32 scale, so every scale is finite and > 0 (what `kd verify` checks).

    >>> import numpy as np
    >>> h = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    >>> q, s = encode_int8(h); q.dtype.name, s.shape
    ('int8', (5,))
    >>> bool(np.all(np.abs(decode_int8(q, s) - h) <= int8_error_bound(h)))
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.store.codecs.array_checks import blocks
from pipeline.store.codecs.base import Arrays, Attrs, HiddenFormat
from schemas import hidden_dataset_name

TINY = np.finfo(np.float32).tiny


def scale_dataset_name(layer: int) -> str:
    """The per-token-row scales of an int8 layer (beside `hidden/layer_NN`)."""
    return f"{hidden_dataset_name(layer)}_scale"


LEVELS = 127


def encode_int8(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, d) states -> (rows, d) int8 codes, (rows,) float32 scales."""
    h = np.asarray(h, np.float32)
    m = np.maximum(np.abs(h).max(axis=1, initial=0.0), TINY * LEVELS**2)[:, None]
    q = np.rint(LEVELS * np.sign(h) * np.sqrt(np.abs(h) / m))
    return np.clip(q, -LEVELS, LEVELS).astype(np.int8), (m[:, 0] / LEVELS**2).astype(np.float32)


def decode_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 states of int8 codes and their row scales."""
    q = np.asarray(q, np.float32)
    return q * np.abs(q) * np.asarray(scale, np.float32)[:, None]


def int8_error_bound(h: np.ndarray) -> np.ndarray:
    """Worst-case |decoded - h| of each value (same shape as h)."""
    h = np.asarray(h, np.float32)
    m = np.abs(h).max(axis=1, keepdims=True)
    s = m / LEVELS**2
    return (LEVELS * np.sqrt(np.abs(h) / np.maximum(m, TINY)) + 0.25) * s * (1 + 1e-5) + 1e-7 * m


class Int8Hidden(HiddenFormat):
    """int8: companded codes in `hidden/layer_NN`, one float32 scale per token row beside."""

    name = "int8"
    stored_dtype = np.int8

    def encode(self, states: np.ndarray, layer: int, attrs: Any) -> dict[str, np.ndarray]:
        codes, scales = encode_int8(states)
        return {hidden_dataset_name(layer): codes, scale_dataset_name(layer): scales}

    def decode(self, arrays: Arrays, layer: int, rows: slice) -> np.ndarray:
        return decode_int8(arrays[hidden_dataset_name(layer)][rows],
                           arrays[scale_dataset_name(layer)][rows])

    def check_structure(self, arrays: Arrays, layer: int, tokens: int, attrs: Attrs
                        ) -> list[str]:
        errors = super().check_structure(arrays, layer, tokens, attrs)
        scale = arrays.get(scale_dataset_name(layer))
        if scale is None or scale.shape != (tokens,) or scale.dtype != np.float32:
            errors.append(f"{scale_dataset_name(layer)}: expected float32 shape ({tokens},)")
        return errors

    def check_values(self, arrays: Arrays, layer: int) -> list[str]:
        for sl in blocks(len(arrays[hidden_dataset_name(layer)])):
            scale = arrays[scale_dataset_name(layer)][sl]
            if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
                return [f"{scale_dataset_name(layer)} has scales that are not finite and positive"]
        return []


INT8 = Int8Hidden()
