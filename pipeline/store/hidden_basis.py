"""The `pca` hidden format's basis: per stored layer, the mean and top-R principal
directions of the teacher's states, fitted once per output and kept in `hidden_basis.h5`.

`--hidden-format pca --hidden-rank R` fits the basis on the first shard the hidden-state
pass captures (at most FIT_TOKENS tokens, the "first sample of the run"), writes it
beside the shards (checksummed in the manifest and named in every shard's root
attributes), then stores each token's coefficients `(h - mean) @ basis.T` (R values)
int8-companded like `hidden_format` int8 (`pipeline.store.codecs.hidden_int8`). The student's
adapter targets the R coefficients directly, so nothing is expanded at training time;
`reconstruct` maps coefficients back when the full state is wanted (measurements).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> h = rng.standard_normal((500, 3)) @ rng.standard_normal((3, 16))  # rank-3 states
    >>> mean, basis, explained = fit_basis(h.astype(np.float32), 3)
    >>> basis.shape, round(float(explained.sum()), 4)
    ((3, 16), 1.0)
    >>> c = project(h, mean, basis)
    >>> bool(np.allclose(reconstruct(c, mean, basis), h, atol=1e-4))
    True
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from pipeline.store.atomic_commit import commit_path, sha256_file, temp_path_for

BASIS_NAME = "hidden_basis.h5"
FIT_TOKENS = 16384
"""Tokens of the first captured shard the basis is fitted on (more adds cost, not rank)."""


def fit_basis(states: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (d,), basis (rank, d) orthonormal rows, explained variance ratio (rank,)).

    Eigenvectors of the covariance, largest first; each row's sign is fixed (largest
    |component| positive) so a refit on the same states gives the same bytes."""
    x = np.asarray(states, np.float64)
    mean = x.mean(0)
    x = x - mean
    cov = x.T @ x / max(len(x) - 1, 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:rank]
    basis = vectors[:, order].T
    flip = np.sign(basis[np.arange(len(basis)), np.abs(basis).argmax(1)])
    basis *= flip[:, None]
    total = max(float(values.clip(min=0).sum()), 1e-30)
    return (mean.astype(np.float32), basis.astype(np.float32),
            (values[order].clip(min=0) / total).astype(np.float32))


def project(states: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(rows, d) states -> (rows, rank) float32 coefficients."""
    return ((np.asarray(states, np.float32) - mean) @ basis.T).astype(np.float32)


def reconstruct(coeffs: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(rows, rank) coefficients -> (rows, d) states in the teacher's space."""
    return (np.asarray(coeffs, np.float32) @ basis + mean).astype(np.float32)


Basis = dict[int, tuple[np.ndarray, np.ndarray]]
"""Absolute layer -> (mean (d,), basis (rank, d))."""


def write_basis(out_dir: str | Path, bases: Basis, explained: dict[int, np.ndarray]) -> str:
    """Write `hidden_basis.h5` atomically (contiguous float32 datasets); return its sha256."""
    path = Path(out_dir) / BASIS_NAME
    tmp = temp_path_for(path)
    with h5py.File(tmp, "w", libver="latest", track_order=True) as f:
        for layer, (mean, basis) in sorted(bases.items()):
            f.create_dataset(f"layer_{layer:02d}/mean", data=mean.astype(np.float32))
            f.create_dataset(f"layer_{layer:02d}/basis", data=basis.astype(np.float32))
            f.create_dataset(f"layer_{layer:02d}/explained", data=explained[layer])
    commit_path(tmp, path)
    return sha256_file(path)


def read_basis(out_dir: str | Path) -> Basis:
    """Every layer's (mean, basis) from `hidden_basis.h5`."""
    with h5py.File(Path(out_dir) / BASIS_NAME, "r") as f:
        return {int(name.split("_")[1]): (f[name]["mean"][()], f[name]["basis"][()])
                for name in f}
