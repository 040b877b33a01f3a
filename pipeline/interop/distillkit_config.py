"""DistillKit's compression configuration (`compression_config.yaml`), read and checked.

Mirrors `DistributionQuantizationConfig` of arcee-ai/DistillKit
(`distillkit/compression/config.py`, commit a61c2e7d25c2e990d45832e12bd8542bdee9c810):
`d` vocabulary size, `k` values per row, the first `exact_k` stored as
`exact_dtype` floats, the other k - exact_k approximated by a least-squares fit
over `polynomial_terms` (ints are powers of t, "sqrt"/"exp" special terms; t =
0..n-1, or linspace(0, 1) with `normalize_t`) plus `residual_bins` of quantized
residuals, all optionally `delta_encoding`-ed. Its capture script writes it as
`compression_config.yaml` beside the data files; a training YAML holds it under
`teacher.logprob_compressor`, and both are accepted here.

    >>> from pipeline.interop.distillkit_config import exact_config
    >>> c = exact_config(49152, 20)
    >>> c.index_bits, c.logprob_bytes(), c.index_bytes()
    (16, 40, 40)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

DTYPE_BITS = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}
SPECIAL_TERMS = ("sqrt", "exp")


class DistillKitFormatError(ValueError):
    """A DistillKit dataset or configuration cannot be read; the message names file, row, field."""


@dataclass(frozen=True)
class ResidualBin:
    """One bin of quantized residuals: a scale, then `num_elements` values of `element_bits`."""

    scale_dtype: str
    element_bits: int
    num_elements: int

    def nbytes(self) -> int:
        return DTYPE_BITS[self.scale_dtype] // 8 + (self.element_bits * self.num_elements + 7) // 8


@dataclass(frozen=True)
class DistillKitConfig:
    """`DistributionQuantizationConfig`, field for field (defaults as DistillKit's)."""

    d: int
    k: int
    exact_k: int
    exact_dtype: str = "float32"
    polynomial_terms: tuple[int | str, ...] = ()
    term_dtype: str = "float32"
    residual_bins: tuple[ResidualBin, ...] = field(default_factory=tuple)
    delta_encoding: bool = True
    error_diffusion: bool = False
    normalize_t: bool = False

    @property
    def index_bits(self) -> int:
        """Bits per packed vocabulary id: ceil(log2 d), computed in float32 as DistillKit does."""
        return int(np.ceil(np.log2(np.float32(self.d))))

    def logprob_bytes(self) -> int:
        """Bytes of one `compressed_logprobs` row (`DistributionQuantizationConfig.logprob_bits`)."""
        fixed = self.exact_k * DTYPE_BITS[self.exact_dtype]
        fixed += len(self.polynomial_terms) * DTYPE_BITS[self.term_dtype]
        return math.ceil(fixed / 8) + sum(b.nbytes() for b in self.residual_bins)

    def index_bytes(self) -> int:
        """Bytes of one `bytepacked_indices` row."""
        return (self.k * self.index_bits + 7) // 8

    def to_yaml_dict(self) -> dict[str, Any]:
        """The dict DistillKit writes (`model_dump(mode="json")`); yaml.safe_dump it."""
        data = asdict(self)
        data["polynomial_terms"] = list(self.polynomial_terms) or None
        data["residual_bins"] = [asdict(b) for b in self.residual_bins]
        return data


def exact_config(vocab_size: int, k: int, exact_dtype: str = "float16") -> DistillKitConfig:
    """The exact-value mode: all k values stored as floats, no tail model, no delta encoding."""
    return DistillKitConfig(d=vocab_size, k=k, exact_k=k, exact_dtype=exact_dtype,
                            delta_encoding=False)


def parse_config(data: Any, source: str) -> DistillKitConfig:
    """Build and check a config from a loaded YAML document (a compression config, or a
    DistillKit training config with `teacher.logprob_compressor`); errors name `source`."""
    if isinstance(data, dict) and isinstance(data.get("teacher"), dict):
        if "legacy_logit_compression" in data["teacher"]:
            raise DistillKitFormatError(f"{source}: legacy_logit_compression is not supported "
                                        "(only logprob_compressor datasets)")
        data = data["teacher"].get("logprob_compressor")
    if not isinstance(data, dict):
        raise DistillKitFormatError(f"{source}: not a DistillKit compression configuration")
    missing = [key for key in ("d", "k", "exact_k") if key not in data]
    if missing:
        raise DistillKitFormatError(f"{source}: missing field(s) {', '.join(missing)}")
    try:
        bins = tuple(ResidualBin(str(b["scale_dtype"]), int(b["element_bits"]),
                                 int(b["num_elements"])) for b in data.get("residual_bins") or [])
        terms = tuple(t if isinstance(t, str) else int(t) for t in data.get("polynomial_terms") or [])
        config = DistillKitConfig(
            int(data["d"]), int(data["k"]), int(data["exact_k"]),
            str(data.get("exact_dtype", "float32")), terms, str(data.get("term_dtype", "float32")),
            bins, bool(data.get("delta_encoding", True)), bool(data.get("error_diffusion", False)),
            bool(data.get("normalize_t", False)))
    except (KeyError, TypeError, ValueError) as exc:
        raise DistillKitFormatError(f"{source}: malformed field: {exc}") from exc
    check_config(config, source)
    return config


def check_config(c: DistillKitConfig, source: str) -> None:
    """DistillKit's own validation (`check_valid`), plus the dtypes and terms it can decode."""
    def bad(message: str) -> DistillKitFormatError:
        return DistillKitFormatError(f"{source}: {message}")
    if c.d < 1 or c.k < 1 or not 0 <= c.exact_k <= c.k:
        raise bad(f"need d >= 1, k >= 1 and 0 <= exact_k <= k (d={c.d}, k={c.k}, exact_k={c.exact_k})")
    dtypes = [("exact_dtype", c.exact_dtype), ("term_dtype", c.term_dtype)]
    dtypes += [(f"residual_bins[{i}].scale_dtype", b.scale_dtype) for i, b in enumerate(c.residual_bins)]
    for name, value in dtypes:
        if value not in DTYPE_BITS:
            raise bad(f"{name} {value!r} is not one of {', '.join(DTYPE_BITS)}")
    unknown = [t for t in c.polynomial_terms if isinstance(t, str) and t not in SPECIAL_TERMS]
    if unknown:
        raise bad(f"polynomial_terms {unknown} are not powers or one of {SPECIAL_TERMS}")
    if c.exact_k < c.k and not c.polynomial_terms and not c.residual_bins:
        raise bad("exact_k < k needs polynomial_terms or residual_bins")
    if sum(b.num_elements for b in c.residual_bins) > c.k - c.exact_k:
        raise bad("residual_bins hold more elements than k - exact_k")
    if any(not 1 <= b.element_bits <= 64 or b.num_elements < 1 for b in c.residual_bins):
        raise bad("residual_bins need 1 <= element_bits <= 64 and num_elements >= 1")
