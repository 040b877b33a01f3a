"""The `q8poly` label format: the head of each top-k row in q8, the sorted tail as a curve.

For k >= 2 x HEAD (k = 128, say) most of a row's bytes are the k - HEAD tail logprobs,
which are sorted, smooth in the log of their rank, and carry little mass. `q8poly`
stores per row, in one fixed-width uint8 row of HEAD + 2 x TERMS bytes (dataset
`labels/topk_logprobs_q8poly`, memmap-readable like every other dataset):

- the first HEAD = 16 logprobs as q8 codes (`pipeline.store.label_codec`, mass-preserving);
- the other k - HEAD as TERMS = 4 float16 coefficients c of a cubic in
  s = (log(1 + r) - log(1 + HEAD)) / (log(k) - log(1 + HEAD)), r = HEAD..k-1 the 0-based
  rank (s runs 0..1), least-squares fitted to the exact tail logprobs; then c_0 is moved
  so that the tail's mass (sum of exp) equals the exact one, and rounded to float16.

Decoding evaluates the cubic, caps it at the last head value, takes the running minimum
(rows stay sorted descending) and clamps at -MAX_NATS, like q8. At k = 128 and vocab
49,152 (uint16 ids) an entry costs (2 x 128 + 16 + 8) / 128 = 2.19 bytes (q8: 3.0).

Error. The head keeps q8's worst case, one code step (`q8_error_bound`). The tail has
no a-priori per-entry bound (a curve through a bumpy tail misses the bumps): what is
held exactly is the order and the tail's total mass, to float16 rounding of c_0
(|c_0| x 2**-11 nats, 0.4 % of the tail mass at c_0 = -8), except in rows where the cap
at the head cuts the curve. Measured on the demo teacher (`make bench-storage`, k = 128):
README, Compact labels. A decoded row re-encodes to the same values (within 1e-4 nats)
unless the cap or the clamp cut it, so a rewritten shard (hidden-state pass, merge)
barely drifts (`tests/store/test_label_q8poly.py`).

    >>> import numpy as np
    >>> r = np.arange(128)
    >>> lp = np.log(1 / (1 + r) ** 1.2 / np.sum(1 / (1 + np.arange(49152)) ** 1.2))[None]
    >>> raw = encode_q8poly(lp); raw.dtype.name, raw.shape
    ('uint8', (1, 24))
    >>> back = decode_q8poly(raw, 128)
    >>> bool(np.abs(back - lp)[:, HEAD:].max() < 0.02), bool(np.all(np.diff(back) <= 0))
    (True, True)
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from pipeline.store.label_codec import KNEE, MAX_NATS, encode_q8, q8_attrs, q8_table

HEAD = 16
TERMS = 4
F16_MAX = float(np.finfo(np.float16).max)


def row_bytes(head: int = HEAD, terms: int = TERMS) -> int:
    """Stored bytes per row: head codes, then float16 coefficients."""
    return head + 2 * terms


@lru_cache(maxsize=32)
def tail_terms(k: int, head: int = HEAD, terms: int = TERMS) -> np.ndarray:
    """(k - head, terms) float64 design matrix: powers 0.. of s (log rank, 0..1) per tail rank."""
    log_rank = np.log1p(np.arange(head, k, dtype=np.float64))
    s = (log_rank - log_rank[0]) / max(log_rank[-1] - log_rank[0], 1e-12)
    return s[:, None] ** np.arange(terms)


def encode_q8poly(lp: np.ndarray, head: int = HEAD, terms: int = TERMS,
                  max_nats: float = MAX_NATS, knee: float = KNEE) -> np.ndarray:
    """(rows, k) logprob rows sorted descending -> (rows, head + 2 x terms) uint8."""
    lp = np.clip(np.asarray(lp, np.float64), -max_nats, 0.0)
    rows, k = lp.shape
    codes = encode_q8(lp[:, :head], max_nats, knee)
    x = tail_terms(k, head, terms)
    tail = lp[:, head:]
    coef = np.linalg.lstsq(x, tail.T, rcond=None)[0].T
    coef = np.clip(coef, -F16_MAX, F16_MAX).astype(np.float16).astype(np.float64)
    # c_0 last, after the others are rounded: the tail's mass is what the bucket sees
    rest = coef[:, 1:] @ x[:, 1:].T
    top = np.maximum(tail.max(1, initial=-max_nats), rest.max(1, initial=-max_nats))[:, None]
    coef[:, 0] = (np.log(np.exp(tail - top).sum(1)) - np.log(np.exp(rest - top).sum(1)))
    out = np.empty((rows, row_bytes(head, terms)), np.uint8)
    out[:, :head] = codes
    out[:, head:] = np.ascontiguousarray(np.clip(coef, -F16_MAX, F16_MAX), "<f2").view(np.uint8)
    return out


def decode_q8poly(raw: np.ndarray, k: int, head: int = HEAD, terms: int = TERMS,
                  max_nats: float = MAX_NATS, knee: float = KNEE) -> np.ndarray:
    """(rows, head + 2 x terms) uint8 -> (rows, k) float32 logprobs, sorted descending."""
    raw = np.asarray(raw, np.uint8)
    first = q8_table(max_nats, knee)[raw[:, :head]]
    coef = np.ascontiguousarray(raw[:, head:]).view("<f2").astype(np.float64)
    tail = np.minimum(coef @ tail_terms(k, head, terms).T, first[:, -1:])
    tail = np.maximum(np.minimum.accumulate(tail, axis=1), -max_nats)
    return np.concatenate([first, tail.astype(np.float32)], axis=1)


def q8poly_attrs(head: int = HEAD, terms: int = TERMS) -> dict[str, Any]:
    """Root attributes of a q8poly shard: the q8 constants of the head, the tail's shape."""
    return q8_attrs() | {"label_format": "q8poly", "label_poly_head": head,
                         "label_poly_terms": terms}


def q8poly_decoder(attrs: dict[str, Any]):
    """Function (stored rows -> float32 logprobs) for a q8poly shard with these attributes."""
    k, head, terms = (int(attrs[a]) for a in ("top_k", "label_poly_head", "label_poly_terms"))
    consts = float(attrs["label_q8_max_nats"]), float(attrs["label_q8_knee"])
    return lambda raw: decode_q8poly(raw, k, head, terms, *consts)
