"""The `pca` hidden-state format: per token and layer, R coefficients on the output's basis.

The basis (mean and top-R directions per layer, `pipeline.store.hidden_basis`) is
fitted on the first captured shard and kept in `hidden_basis.h5` beside the
shards, checksummed in the manifest and named in every shard's root attributes
(`hidden_rank`, `hidden_basis_sha256`). The coefficients `(h - mean) @ basis.T`
are stored int8-companded like the int8 format (`pipeline.store.codecs.hidden_int8`)
and read back as coefficients, never expanded. Outputs on different bases (or a
pca output beside teacher states) are different spaces and are not read together.

    >>> from types import SimpleNamespace
    >>> m = SimpleNamespace(hidden_basis_sha256="ab" * 32)
    >>> PCA.space(m)[:8], [s.name for s in PCA.sidecars(m)]
    ('pca:abab', ['hidden_basis.h5'])
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from pipeline.store.codecs.base import Attrs, Sidecar
from pipeline.store.codecs.hidden_int8 import Int8Hidden
from pipeline.store.hidden_basis import BASIS_NAME, project


class PcaHidden(Int8Hidden):
    """pca: int8 coefficients on `hidden_basis.h5`; rows are `hidden_rank` wide."""

    name = "pca"
    width_field = "hidden_rank"
    needs_basis = True

    def space(self, manifest: Any) -> str:
        return f"pca:{manifest.hidden_basis_sha256}"

    def root_attrs(self, attrs: Any) -> dict[str, Any]:
        return {"hidden_format": self.name, "hidden_rank": attrs.hidden_rank,
                "hidden_basis_sha256": attrs.hidden_basis_sha256}

    def encode(self, states: np.ndarray, layer: int, attrs: Any) -> dict[str, np.ndarray]:
        mean, basis = attrs.hidden_basis[layer]
        return super().encode(project(states, mean, basis), layer, attrs)

    def check_attrs(self, attrs: Attrs, manifest: Any) -> list[str]:
        if not json.loads(attrs.get("hidden_layers", "[]")):
            return []  # a shard still waiting for the hidden-state pass predates the basis
        return [f"attribute {key} is {attrs.get(key)!r}, manifest says {getattr(manifest, key)!r}"
                for key in ("hidden_rank", "hidden_basis_sha256")
                if attrs.get(key) != getattr(manifest, key)]

    def sidecars(self, manifest: Any) -> list[Sidecar]:
        if not manifest.hidden_basis_sha256:
            return []  # the hidden-state pass has not fitted it yet
        return [Sidecar(BASIS_NAME, manifest.hidden_basis_sha256,
                        missing="pca basis named by the manifest is missing",
                        corrupt="basis checksum differs from the manifest (corrupt)")]


PCA = PcaHidden()
