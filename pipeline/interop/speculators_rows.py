"""One offline-kd sample as vllm-project/speculators' offline EAGLE-3 training data.

speculators' `ArrowDataset` (src/speculators/train/data.py, commit pinned in
docs/draft-models.md) reads a `datasets` directory whose row i has `input_ids`,
`loss_mask` (int64, 1 on the tokens trained on) and `seq_len`, and the file
`hidden_states/hs_{i}.safetensors` with `hidden_states` [seq, 4, H] (the three aux
layers, then the last layer *before* the final norm, which it normalises itself) and
`token_ids` [seq] equal to `input_ids`. The fp8 variant (its FP8 hidden-states
backend) stores float8_e4m3fn values and one float32 scale per token across all four
layers, `hidden_states_scales` [seq, 1, 1]: scale = max|row| / 448, value = row / scale.

    >>> import numpy as np, torch
    >>> s = {"token_ids": np.array([5, 6, 7, 8]), "positions": np.array([2, 3])}
    >>> {k: np.asarray(v).tolist() for k, v in dataset_row(s).items()}
    {'input_ids': [5, 6, 7, 8], 'loss_mask': [0, 0, 1, 1], 'seq_len': 4}
    >>> x = torch.tensor([[[1.0, -300.0], [0.01, 2.0]]])
    >>> q, scale = fp8_per_token(x); q.dtype, scale.shape, round(float(scale) * 448, 3)
    (torch.float8_e4m3fn, torch.Size([1, 1, 1]), 300.0)
    >>> bool(torch.all((q.float() * scale - x).abs() <= fp8_error_bound(x)))
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from schemas.config_base import ConfigError
from schemas.eagle3 import PRE_NORM_DATASET, PRE_NORM_LAST, eagle3_layers

HIDDEN_DTYPES = ("bf16", "fp8")
SCALES_KEY = "hidden_states_scales"
FP8_MAX = 448.0
"""Largest finite float8_e4m3fn."""
FP8_MIN_SCALE = 1e-12
"""speculators' floor on a scale (an all-zero token)."""


def missing_eagle3_layers(hidden_layers: list[int], num_layers: int) -> list[str]:
    """What an output lacks for an EAGLE-3 export, in words (empty: nothing)."""
    have = set(hidden_layers)
    try:
        wanted = eagle3_layers(num_layers)
    except ConfigError as exc:
        return [f"a teacher depth the eagle3 layers exist for ({exc})"]
    missing = [f"layer {layer} (input of block {layer})" for layer in wanted
               if layer not in have and layer != PRE_NORM_LAST]
    if PRE_NORM_LAST not in have:
        missing.append(f"the last layer before the final norm ({PRE_NORM_DATASET})")
    return missing


def dataset_row(s: dict[str, Any]) -> dict[str, Any]:
    """`input_ids`, `loss_mask` (1 at every labelled position) and `seq_len` of one sample."""
    ids = np.asarray(s["token_ids"], np.int64)
    mask = np.zeros(len(ids), np.int64)
    mask[np.asarray(s["positions"], np.int64)] = 1
    return {"input_ids": ids, "loss_mask": mask, "seq_len": len(ids)}


def stacked_states(s: dict[str, Any], layers: list[int]) -> torch.Tensor:
    """[seq, len(layers), H] float32 of the sample's stored (decoded) states, in `layers` order."""
    return torch.from_numpy(np.stack([np.asarray(s[f"hidden_{layer}"], np.float32)
                                      for layer in layers], axis=1))


def fp8_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """speculators' merged fp8: values and one float32 scale per token ([seq, 1, 1])."""
    amax = x.float().abs().amax(dim=tuple(range(1, x.dim())), keepdim=True)
    scale = (amax / FP8_MAX).clamp(min=FP8_MIN_SCALE)
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


def fp8_error_bound(x: torch.Tensor) -> torch.Tensor:
    """Worst |decoded - x| per value: half a step of e4m3 (3 mantissa bits: 2^-4 relative for
    normals, 2^-10 of the scale below the smallest normal 2^-6), in float32 arithmetic."""
    scale = (x.abs().amax(dim=tuple(range(1, x.dim())), keepdim=True) / FP8_MAX).clamp(min=FP8_MIN_SCALE)
    return torch.maximum(x.abs() * 2.0**-4, scale * 2.0**-10) * (1 + 1e-6) + scale * 1e-6


def hs_tensors(s: dict[str, Any], layers: list[int], hidden_dtype: str) -> dict[str, torch.Tensor]:
    """The tensors of one `hs_{i}.safetensors` file."""
    states = stacked_states(s, layers)
    out = {"token_ids": torch.from_numpy(np.asarray(s["token_ids"], np.int64))}
    if hidden_dtype == "fp8":
        out["hidden_states"], out[SCALES_KEY] = fp8_per_token(states)
    else:
        out["hidden_states"] = states.to(torch.bfloat16)
    return out
