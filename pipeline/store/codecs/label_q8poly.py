"""The `q8poly` label format: the head of each top-k row in q8, the sorted tail as a curve.

For k >= 2 x HEAD (k = 128, say) most of a row's bytes are the k - HEAD tail logprobs,
which are sorted, smooth in the log of their rank, and carry little mass. `q8poly`
stores per row, in one fixed-width uint8 row of HEAD + 2 x TERMS bytes (dataset
`labels/topk_logprobs_q8poly`, memmap-readable like every other dataset):

- the first HEAD = 16 logprobs as q8 codes (`pipeline.store.codecs.label_q8`, mass-preserving);
- the other k - HEAD as TERMS = 4 float16 coefficients c of a cubic in
  s = (log(1 + r) - log(1 + HEAD)) / (log(k) - log(1 + HEAD)), r = HEAD..k-1 the 0-based
  rank (s runs 0..1), least-squares fitted to the exact tail logprobs; then c_0 is set
  (by bisection through the decoder below, then the nearer float16) so that the decoded
  tail's mass (sum of exp) is the exact one.

Decoding evaluates the cubic, caps it at the last head value, takes the running minimum
(rows stay sorted descending) and clamps at -MAX_NATS, like q8. At k = 128 and vocab
49,152 (uint16 ids) an entry costs (2 x 128 + 16 + 8) / 128 = 2.19 bytes (q8: 3.0).

Error. The head keeps q8's worst case, one code step (`q8_error_bound`). The tail has
no a-priori per-entry bound (a curve through a bumpy tail misses the bumps): what is
held is the order and the tail's total mass, to float16 rounding of c_0 (|c_0| x 2**-11
nats, 0.4 % of the tail mass at c_0 = -8; a tail flatter than the cap allows can fall
short). Measured on the demo teacher (`make bench-storage`, k = 128):
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

from pipeline.store.codecs.base import Attrs
from pipeline.store.codecs.label_q8 import KNEE, MAX_NATS, Q8Labels, encode_q8, q8_attrs, q8_table

Q8POLY_DATASET = "labels/topk_logprobs_q8poly"

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
    first = q8_table(max_nats, knee)[codes].astype(np.float64)
    x = tail_terms(k, head, terms)
    coef = np.linalg.lstsq(x, lp[:, head:].T, rcond=None)[0].T
    coef = np.clip(coef, -F16_MAX, F16_MAX).astype(np.float16).astype(np.float64)
    # c_0 last, after the others are rounded, so that the decoded tail's mass (what the
    # tail bucket sees) is the exact one
    want = np.exp(lp[:, head:]).sum(1)
    coef[:, 0] = mass_matching_c0(coef, x, first[:, -1:], want, max_nats)
    out = np.empty((rows, row_bytes(head, terms)), np.uint8)
    out[:, :head] = codes
    out[:, head:] = np.ascontiguousarray(coef, "<f2").view(np.uint8)
    return out


def decoded_tail(coef: np.ndarray, x: np.ndarray, cap: np.ndarray, max_nats: float) -> np.ndarray:
    """The curve, capped at the last head value, non-increasing, clamped at -max_nats."""
    tail = np.minimum(coef @ x.T, cap)
    return np.maximum(np.minimum.accumulate(tail, axis=1), -max_nats)


def mass_matching_c0(coef: np.ndarray, x: np.ndarray, cap: np.ndarray, want: np.ndarray,
                     max_nats: float, steps: int = 20) -> np.ndarray:
    """Per row, the float16 c_0 whose decoded tail mass comes closest to `want`.

    Without cap and clamp, c_0 follows in closed form; the decoded mass only grows with
    c_0, and the cap only removes mass, so bisection from there upwards finds it (within
    [-2, +14] nats of it); then the nearer of the two float16 neighbours wins."""
    def mass(c0: np.ndarray) -> np.ndarray:
        return np.exp(decoded_tail(np.column_stack([c0, coef[:, 1:]]), x, cap, max_nats)).sum(1)
    rest = coef[:, 1:] @ x[:, 1:].T
    top = rest.max(1)
    free = np.log(want) - np.log(np.exp(rest - top[:, None]).sum(1)) - top
    lo, hi = free - 2.0, free + 14.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        low = mass(mid) < want
        lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
    c0 = np.clip((lo + hi) / 2, -F16_MAX, F16_MAX).astype(np.float16)
    other = np.where(mass(c0.astype(np.float64)) < want, np.nextafter(c0, np.float16(np.inf)),
                     np.nextafter(c0, np.float16(-np.inf))).astype(np.float64)
    c0 = c0.astype(np.float64)
    closer = np.abs(mass(other) - want) < np.abs(mass(c0) - want)
    return np.where(closer, other, c0)


def decode_q8poly(raw: np.ndarray, k: int, head: int = HEAD, terms: int = TERMS,
                  max_nats: float = MAX_NATS, knee: float = KNEE) -> np.ndarray:
    """(rows, head + 2 x terms) uint8 -> (rows, k) float32 logprobs, sorted descending."""
    raw = np.asarray(raw, np.uint8)
    first = q8_table(max_nats, knee)[raw[:, :head]]
    coef = np.ascontiguousarray(raw[:, head:]).view("<f2").astype(np.float64)
    tail = decoded_tail(coef, tail_terms(k, head, terms), first[:, -1:].astype(np.float64),
                        max_nats)
    return np.concatenate([first, tail.astype(np.float32)], axis=1)


def q8poly_attrs(head: int = HEAD, terms: int = TERMS) -> dict[str, Any]:
    """Root attributes of a q8poly shard: the q8 constants of the head, the tail's shape."""
    return q8_attrs() | {"label_format": "q8poly", "label_poly_head": head,
                         "label_poly_terms": terms}


class Q8PolyLabels(Q8Labels):
    """q8poly: the head in q8 (same constants and checks), the tail as a curve."""

    name = "q8poly"
    dataset = Q8POLY_DATASET

    def root_attrs(self) -> dict[str, Any]:
        return q8poly_attrs()

    def encode(self, logprobs: np.ndarray) -> np.ndarray:
        return encode_q8poly(logprobs)

    def decoder(self, attrs: Attrs):
        k, head, terms = (int(attrs[a]) for a in ("top_k", "label_poly_head", "label_poly_terms"))
        consts = float(attrs["label_q8_max_nats"]), float(attrs["label_q8_knee"])
        return lambda raw: decode_q8poly(raw, k, head, terms, *consts)

    def row_width(self, attrs: Attrs) -> int:
        return row_bytes(int(attrs["label_poly_head"]), int(attrs["label_poly_terms"]))

    def check_attrs(self, attrs: Attrs) -> list[str]:
        errors = super().check_attrs(attrs)
        head, terms = attrs.get("label_poly_head"), attrs.get("label_poly_terms")
        if not (isinstance(head, int) and isinstance(terms, int)
                and 1 <= head < int(attrs.get("top_k", 0)) and terms >= 1):
            errors.append(f"q8poly label_poly_head, label_poly_terms are {[head, terms]}, "
                          f"expected 1 <= head < top_k {attrs.get('top_k')!r} and terms >= 1")
        return errors


Q8POLY = Q8PolyLabels()
