"""The `fp16` hidden-state format: each stored layer's states as float16, read as stored.

`hidden/layer_NN` (tokens, hidden size) float16; a shard of this format writes
no `hidden_format` attribute (absent means fp16), as every older output.

    >>> import numpy as np
    >>> arrays = FP16_HIDDEN.encode(np.ones((2, 3), np.float32), 5, None)
    >>> list(arrays), arrays["hidden/layer_05"].dtype.name
    (['hidden/layer_05'], 'float16')
    >>> FP16_HIDDEN.check_structure(arrays, 5, 2, {"hidden_size": 3})
    []
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.store.codecs.array_checks import blocks
from pipeline.store.codecs.base import Arrays, HiddenFormat
from schemas import hidden_dataset_name


class Fp16Hidden(HiddenFormat):
    """fp16: the teacher's states rounded to float16."""

    name = "fp16"

    def root_attrs(self, attrs: Any) -> dict[str, Any]:
        return {}

    def encode(self, states: np.ndarray, layer: int, attrs: Any) -> dict[str, np.ndarray]:
        return {hidden_dataset_name(layer): states.astype(np.float16)}

    def decode(self, arrays: Arrays, layer: int, rows: slice) -> np.ndarray:
        return arrays[hidden_dataset_name(layer)][rows]

    def check_values(self, arrays: Arrays, layer: int) -> list[str]:
        h = arrays[hidden_dataset_name(layer)]
        for sl in blocks(len(h)):
            if not np.all(np.isfinite(h[sl])):
                return [f"{hidden_dataset_name(layer)} has non-finite values"]
        return []


FP16_HIDDEN = Fp16Hidden()
