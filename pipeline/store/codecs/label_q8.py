"""The `q8` label format: top-k logprobs in one byte each, on a log scale, fixed-size rows.

A logprob `lp` (<= 0) is stored as a code q near `u = log1p(x / KNEE) / STEP`,
x = min(-lp, MAX_NATS), STEP = log1p(MAX_NATS / KNEE) / 255, and decoded as
`-KNEE * expm1(q * STEP)`. The scale is fixed per shard (the constants are root
attributes `label_q8_max_nats`, `label_q8_knee`; no per-row header), so a row is k
bytes that `numpy.memmap` reads directly and decoding is one 256-entry table lookup.

Why this scale: codes are dense near lp = 0 (where the probability mass, and the KL,
is) and coarse in the far tail (where a large logprob error moves almost no mass).

Why mass-preserving rounding: the student's `bucket` tail is 1 - sum(top-k), and a
peaked teacher leaves a tail of 1e-3 or less, so independent per-entry rounding errors
of the big entries (0.5 % of 0.9 is 5e-3) would swamp it (mean KL 1.1e-3 at k = 20 on
the demo teacher). Each row is therefore coded left to right, choosing for every entry
the floor or ceiling code of u, whichever keeps the decoded cumulative mass closest to
the exact one (and never breaking the descending order): the row's total, hence its
tail, stays exact to within the last entries' steps (mean KL 2.4e-4 at k = 20, 3.6e-4 at
k = 128). The price is a worst case of one step instead of half:
`|decoded - lp| <= (KNEE + |lp|) * expm1(STEP)` for -MAX_NATS <= lp <= 0: 0.0055 nats at
lp = 0, 0.097 at lp = -5, 0.55 at lp = -30 (MAX_NATS = 30, KNEE = 0.3). Below -MAX_NATS
(p < 1e-13) values clamp to -MAX_NATS. Decoded rows stay sorted descending, and
re-encoding a decoded row gives the same codes (a rewritten shard does not drift).

    >>> import numpy as np
    >>> lp = np.array([[-0.01, -2.5, -29.0]], np.float32)
    >>> codes = encode_q8(lp); codes.dtype.name, codes.shape
    ('uint8', (1, 3))
    >>> bool(np.all(np.abs(decode_q8(codes) - lp) <= q8_error_bound(lp)))
    True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.store.codecs.base import Attrs, LabelFormat

Q8_DATASET = "labels/topk_logprobs_q8"
MAX_NATS = 30.0
KNEE = 0.3


def q8_step(max_nats: float = MAX_NATS, knee: float = KNEE) -> float:
    return math.log1p(max_nats / knee) / 255


def encode_q8(lp: np.ndarray, max_nats: float = MAX_NATS, knee: float = KNEE) -> np.ndarray:
    """uint8 codes of (rows, k) logprob rows sorted descending, mass-preserving (see the
    module docstring); values above 0 (float rounding) count as 0."""
    lp = np.asarray(lp, np.float64)
    x = np.clip(-lp, 0.0, max_nats)
    u = np.log1p(x / knee) / q8_step(max_nats, knee)
    near = np.rint(u)
    exact = np.abs(u - near) < 1e-3  # a decoded value: keep its code
    lo = np.where(exact, near, np.floor(u)).clip(0, 255).astype(np.int64)
    hi = np.where(exact, near, np.ceil(u)).clip(0, 255).astype(np.int64)
    mass = np.exp(q8_table(max_nats, knee).astype(np.float64))
    p = np.exp(-x)
    codes = np.zeros(lp.shape, np.int64)
    carry = np.zeros(lp.shape[:-1])  # exact minus decoded mass so far, per row
    prev = np.zeros(lp.shape[:-1], np.int64)
    for j in range(lp.shape[-1]):
        a, b = lo[..., j], hi[..., j]
        c = np.where(np.abs(carry + p[..., j] - mass[a]) <= np.abs(carry + p[..., j] - mass[b]),
                     a, b)
        c = np.maximum(c, prev)  # stays in {a, b}: keeps the decoded row descending
        carry += p[..., j] - mass[c]
        codes[..., j] = prev = c
    return codes.astype(np.uint8)


def q8_table(max_nats: float = MAX_NATS, knee: float = KNEE) -> np.ndarray:
    """(256,) float32: the logprob each code decodes to."""
    return (-knee * np.expm1(np.arange(256) * q8_step(max_nats, knee))).astype(np.float32)


def decode_q8(codes: np.ndarray, max_nats: float = MAX_NATS, knee: float = KNEE) -> np.ndarray:
    """float32 logprobs of uint8 codes (same shape)."""
    return q8_table(max_nats, knee)[np.asarray(codes)]


def q8_error_bound(lp: np.ndarray, max_nats: float = MAX_NATS, knee: float = KNEE) -> np.ndarray:
    """Worst-case |decoded - lp| for each logprob in [-max_nats, 0] (plus float32 rounding):
    one code step, as each entry takes the floor or the ceiling code."""
    x = np.clip(-np.asarray(lp, np.float64), 0.0, max_nats)
    return (knee + x) * math.expm1(q8_step(max_nats, knee)) + 1e-6


def q8_attrs(max_nats: float = MAX_NATS, knee: float = KNEE) -> dict[str, Any]:
    """Root attributes of a q8 shard: the decoding constants travel with the data."""
    return {"label_format": "q8", "label_q8_max_nats": max_nats, "label_q8_knee": knee}


class Q8Labels(LabelFormat):
    """q8: one uint8 code per logprob; the shard's root attributes carry the scale."""

    name = "q8"
    dataset = Q8_DATASET
    stored_dtype = np.dtype(np.uint8)

    def root_attrs(self) -> dict[str, Any]:
        return q8_attrs()

    def encode(self, logprobs: np.ndarray) -> np.ndarray:
        return encode_q8(logprobs)

    def decoder(self, attrs: Attrs):
        table = q8_table(float(attrs["label_q8_max_nats"]), float(attrs["label_q8_knee"]))
        return lambda codes: table[np.asarray(codes)]

    def check_attrs(self, attrs: Attrs) -> list[str]:
        consts = [attrs.get("label_q8_max_nats"), attrs.get("label_q8_knee")]
        if not all(isinstance(c, (int, float)) and np.isfinite(c) and c > 0 for c in consts):
            return [f"q8 constants label_q8_max_nats, label_q8_knee are {consts}, "
                    "expected finite and positive"]
        return []


Q8 = Q8Labels()
