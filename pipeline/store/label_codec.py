"""The `q8` label format: top-k logprobs in one byte each, on a log scale, fixed-size rows.

A logprob `lp` (<= 0) is stored as the code
`q = round(log1p(x / KNEE) / STEP)`, x = min(-lp, MAX_NATS), STEP = log1p(MAX_NATS / KNEE) / 255,
and decoded as `-KNEE * expm1(q * STEP)`. The scale is fixed per shard (the constants are
root attributes `label_q8_max_nats`, `label_q8_knee`; no per-row header), so a row is
k bytes that `numpy.memmap` reads directly and decoding is one 256-entry table lookup.

Why this scale: the codes are dense near lp = 0 (where the probability mass, and the KL,
is) and coarse in the far tail (where a large logprob error moves almost no mass). The
worst-case absolute logprob error for -MAX_NATS <= lp <= 0 is
`(KNEE + |lp|) * expm1(STEP / 2)`: 0.0073 nats at lp = 0, 0.044 at lp = -5, 0.30 at
lp = -40 (MAX_NATS = 40, KNEE = 1); a probability's relative error is at most
`expm1` of that. Below -MAX_NATS (p < 4e-18) values clamp to -MAX_NATS. Codes increase
as logprobs decrease, so a descending row stays (non-strictly) descending once decoded.

    >>> import numpy as np
    >>> lp = np.array([[-0.01, -2.5, -39.0]], np.float32)
    >>> codes = encode_q8(lp); codes.dtype.name, codes.shape
    ('uint8', (1, 3))
    >>> bool(np.all(np.abs(decode_q8(codes) - lp) <= q8_error_bound(lp)))
    True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Q8_DATASET = "labels/topk_logprobs_q8"
MAX_NATS = 40.0
KNEE = 1.0


def q8_step(max_nats: float = MAX_NATS, knee: float = KNEE) -> float:
    return math.log1p(max_nats / knee) / 255


def encode_q8(lp: np.ndarray, max_nats: float = MAX_NATS, knee: float = KNEE) -> np.ndarray:
    """uint8 codes of logprobs (any shape); values above 0 (float rounding) count as 0."""
    x = np.clip(-np.asarray(lp, np.float64), 0.0, max_nats)
    return np.rint(np.log1p(x / knee) / q8_step(max_nats, knee)).astype(np.uint8)


def q8_table(max_nats: float = MAX_NATS, knee: float = KNEE) -> np.ndarray:
    """(256,) float32: the logprob each code decodes to."""
    return (-knee * np.expm1(np.arange(256) * q8_step(max_nats, knee))).astype(np.float32)


def decode_q8(codes: np.ndarray, max_nats: float = MAX_NATS, knee: float = KNEE) -> np.ndarray:
    """float32 logprobs of uint8 codes (same shape)."""
    return q8_table(max_nats, knee)[np.asarray(codes)]


def q8_error_bound(lp: np.ndarray, max_nats: float = MAX_NATS, knee: float = KNEE) -> np.ndarray:
    """Worst-case |decoded - lp| for each logprob in [-max_nats, 0] (plus float32 rounding)."""
    x = np.clip(-np.asarray(lp, np.float64), 0.0, max_nats)
    return (knee + x) * math.expm1(q8_step(max_nats, knee) / 2) + 1e-6


def q8_attrs(max_nats: float = MAX_NATS, knee: float = KNEE) -> dict[str, Any]:
    """Root attributes of a q8 shard: the decoding constants travel with the data."""
    return {"label_format": "q8", "label_q8_max_nats": max_nats, "label_q8_knee": knee}


def label_format(attrs: dict[str, Any]) -> str:
    """A shard's label format from its root attributes (absent: fp16, every older output)."""
    return str(attrs.get("label_format", "fp16"))


def decoder_of(attrs: dict[str, Any]):
    """Function (raw stored rows -> float32 logprobs) for a shard with these root attributes."""
    if label_format(attrs) == "q8":
        table = q8_table(float(attrs["label_q8_max_nats"]), float(attrs["label_q8_knee"]))
        return lambda codes: table[np.asarray(codes)]
    return lambda lps: np.asarray(lps, np.float32)


def logprob_dataset(attrs: dict[str, Any]) -> str:
    """Which dataset holds the top-k logprobs of a shard with these root attributes."""
    return Q8_DATASET if label_format(attrs) == "q8" else "labels/topk_logprobs"
