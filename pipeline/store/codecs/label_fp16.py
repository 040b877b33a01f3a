"""The `fp16` label format: top-k logprobs as float16, the format of every older output.

A shard of this format writes no `label_format` attribute (absent means fp16 to
every reader), so its files stay byte-identical to those of earlier builds. The
reader hands out the float16 memmap view itself, no copy.

    >>> import numpy as np
    >>> rows = FP16.encode(np.array([[-0.1, -2.0]], np.float16))
    >>> rows.dtype.name, FP16.decoder({})(rows) is rows, FP16.root_attrs()
    ('float16', True, {})
"""

from __future__ import annotations

import numpy as np

from pipeline.store.codecs.base import Attrs, LabelFormat


class Fp16Labels(LabelFormat):
    """fp16: the schema's `labels/topk_logprobs` (float16), read as stored."""

    name = "fp16"
    input_dtype = np.float16

    def encode(self, logprobs: np.ndarray) -> np.ndarray:
        return np.asarray(logprobs)

    def decoder(self, attrs: Attrs):
        return lambda stored: stored


FP16 = Fp16Labels()
