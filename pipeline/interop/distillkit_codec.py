"""DistillKit's byte formats in numpy: bit-packed ids and compressed monotonic logprobs.

A re-implementation, for decoding without torch, of arcee-ai/DistillKit
`distillkit/compression/bitpack.py` (`pack_to_bytes`, `unpack_from_bytes`:
each id as `bits` bits, most significant first, rows zero-padded to whole
bytes) and `distillkit/compression/monotonic_logprobs.py`
(`decompress_monotonic_logprobs`), commit a61c2e7d25c2e990d45832e12bd8542bdee9c810.
A `compressed_logprobs` row is, in order: exact_k floats (`exact_dtype`), the
polynomial coefficients (`term_dtype`), then per residual bin a scale
(`scale_dtype`) and its packed quantized residuals; floats are little-endian.
Decoding adds polynomial fit and residuals for the approximated tail and, with
delta encoding, takes the running sum. It is done here in float64; DistillKit
sums in float32 and rounds a delta-encoded row to `exact_dtype`, so values
differ by that rounding (one float16 ulp, ~1e-3 relative, at most).

Encoding is implemented for the exact-value mode only (what `kd export --format
distillkit` writes: every value a float, so decoding is lossless).

    >>> import numpy as np
    >>> from pipeline.interop.distillkit_codec import pack_bits, unpack_bits
    >>> pack_bits(np.array([[1, 2, 3]]), 3).tolist()   # 001 010 011 + 0000000 padding
    [[41, 128]]
    >>> unpack_bits(pack_bits(np.array([[5, 49151]]), 16), 16, 2).tolist()
    [[5, 49151]]
"""

from __future__ import annotations

import numpy as np

from pipeline.interop.distillkit_config import DTYPE_BITS, DistillKitConfig

NUMPY_FLOATS = {"float16": "<f2", "float32": "<f4", "float64": "<f8"}


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """(rows, n) non-negative ints -> (rows, ceil(n * bits / 8)) uint8, as `pack_to_bytes`."""
    x = np.asarray(values).astype(np.uint64)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    stream = ((x[..., None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(stream.reshape(*x.shape[:-1], -1), axis=-1)


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """(rows, nbytes) uint8 -> (rows, n) int64, as `unpack_from_bytes`."""
    packed = np.asarray(packed, np.uint8)
    if n * bits > packed.shape[-1] * 8:
        raise ValueError(f"{n} values of {bits} bits need {n * bits} bits, "
                         f"rows hold {packed.shape[-1] * 8}")
    stream = np.unpackbits(packed, axis=-1)[..., : n * bits].reshape(*packed.shape[:-1], n, bits)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    return (stream.astype(np.uint64) << shifts).sum(axis=-1, dtype=np.uint64).astype(np.int64)


def floats_from_bytes(raw: np.ndarray, dtype: str, count: int) -> np.ndarray:
    """(rows, count * width) little-endian bytes of `dtype` -> (rows, count) float64."""
    raw = np.ascontiguousarray(raw, np.uint8)
    if dtype == "bfloat16":  # the upper half of a float32
        halves = raw.view("<u2").astype(np.uint32) << np.uint32(16)
        return halves.view("<f4").astype(np.float64).reshape(len(raw), count)
    return raw.view(NUMPY_FLOATS[dtype]).astype(np.float64).reshape(len(raw), count)


def term_matrix(terms: tuple[int | str, ...], n: int, normalize_t: bool) -> np.ndarray:
    """(n, terms) design matrix of DistillKit's `polynomial_terms` over t = 0..n-1 (or [0, 1])."""
    t = np.linspace(0.0, 1.0, n) if normalize_t else np.arange(n, dtype=np.float64)
    columns = [t ** term if isinstance(term, int) else getattr(np, term)(t) for term in terms]
    return np.stack(columns, axis=-1) if columns else np.zeros((n, 0))


def dequantize(q: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """Quantized residuals back to values (1-bit bins are +-scale, as DistillKit's `dequantize`)."""
    if bits == 1:
        return (q * 2.0 - 1.0) * scale
    return (q - 2.0 ** (bits - 1)) * scale


def decode_logprobs(raw: np.ndarray, c: DistillKitConfig) -> np.ndarray:
    """(rows, c.logprob_bytes()) uint8 -> (rows, k) float64 logprobs."""
    raw = np.asarray(raw, np.uint8)
    rows, at = raw.shape[0], 0

    def take(nbytes: int) -> np.ndarray:
        nonlocal at
        at += nbytes
        return raw[:, at - nbytes: at]
    exact = floats_from_bytes(take(c.exact_k * DTYPE_BITS[c.exact_dtype] // 8), c.exact_dtype,
                              c.exact_k)
    n_terms = len(c.polynomial_terms)
    coeffs = floats_from_bytes(take(n_terms * DTYPE_BITS[c.term_dtype] // 8), c.term_dtype, n_terms)
    tail = np.zeros((rows, c.k - c.exact_k))
    start = 0
    for b in c.residual_bins:
        scale = floats_from_bytes(take(DTYPE_BITS[b.scale_dtype] // 8), b.scale_dtype, 1)
        q = unpack_bits(take((b.element_bits * b.num_elements + 7) // 8), b.element_bits,
                        b.num_elements)
        tail[:, start: start + b.num_elements] = dequantize(q, scale, b.element_bits)
        start += b.num_elements
    if n_terms:
        tail += coeffs @ term_matrix(c.polynomial_terms, c.k - c.exact_k, c.normalize_t).T
    values = np.concatenate([exact, tail], axis=1)
    return np.cumsum(values, axis=1) if c.delta_encoding else values


def decode_indices(raw: np.ndarray, c: DistillKitConfig) -> np.ndarray:
    """(rows, c.index_bytes()) uint8 -> (rows, k) int64 vocabulary ids."""
    return unpack_bits(raw, c.index_bits, c.k)


def encode_exact(logprobs: np.ndarray, ids: np.ndarray, c: DistillKitConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, k) descending logprobs and their ids -> (compressed_logprobs, bytepacked_indices)
    bytes, in the exact-value mode only (exact_k == k, no delta encoding)."""
    if c.exact_k != c.k or c.delta_encoding or c.exact_dtype == "bfloat16":
        raise ValueError("encode_exact writes the exact-value mode only "
                         "(exact_k == k, delta_encoding false, a numpy float exact_dtype)")
    values = np.ascontiguousarray(logprobs, NUMPY_FLOATS[c.exact_dtype])
    return values.view(np.uint8).reshape(len(values), -1), pack_bits(ids, c.index_bits)
