"""DistillKit dataset rows: ours out (`kd export --format distillkit`), theirs in (`kd import`).

DistillKit's capture (`distillkit/sample_logits_vllm.py`, commit
a61c2e7d25c2e990d45832e12bd8542bdee9c810) writes per document `input_ids` (L
tokens) and L - 1 rows of `compressed_logprobs` / `bytepacked_indices`: row t
is vLLM's prompt logprobs for token t + 1, i.e. the distribution computed from
the logits at position t, and its trainer reads student logits at position t
against row t, masking row t where `labels[t] < 0` (`distillkit/trainer.py`).

Export writes the same L - 1 rows for every sample. Rows whose next token has
no teacher label (a generated sample's prompt, the unlabelled turns of a scored
chat) cannot be left out without shifting the rest, so they hold a placeholder
(ids 0..k-1 at logprob -log k) and are masked by an extra `labels` column: -100
where row t is a placeholder, else input_ids[t]. DistillKit's packer
(`pack_logits.py`) and trainer carry `labels` through.

Import reads such rows back: row t becomes a label of position t + 1 where
t + 1 < L (a packed row drops the last token, whose row then has no token) and
`labels[t] >= 0` when the column exists. Decoded rows are re-sorted descending
(a polynomial tail need not be monotone), clamped to <= 0, and values below
LOGPROB_FLOOR or -inf (ranks vLLM did not return) are stored as the floor;
the token's own logprob is its top-k value, or the row's k-th value (an upper
bound) when it is outside the top k.

    >>> import numpy as np
    >>> from pipeline.interop.distillkit_config import exact_config
    >>> from pipeline.interop.distillkit_rows import distillkit_row, labels_from_row
    >>> s = {"token_ids": np.array([5, 6, 7]), "positions": np.array([2]),
    ...      "topk_ids": np.array([[7, 1]]), "topk_logprobs": np.array([[-0.1, -3.0]], np.float16),
    ...      "sampled_logprobs": np.array([-0.1], np.float16)}
    >>> row = distillkit_row(s, exact_config(10, 2))
    >>> row["labels"].tolist(), len(row["compressed_logprobs"])
    ([-100, 6, -100], 2)
    >>> back = labels_from_row(row["input_ids"], row["compressed_logprobs"],
    ...                        row["bytepacked_indices"], row["labels"], exact_config(10, 2), "x")
    >>> back["positions"].tolist(), back["topk_ids"].tolist()
    ([2], [[7, 1]])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.interop.distillkit_codec import decode_indices, decode_logprobs, encode_exact
from pipeline.interop.distillkit_config import DistillKitConfig, DistillKitFormatError

LOGPROB_FLOOR = -1e4
"""Where decoded logprobs below it (or -inf) are stored: probability 0 for every reader."""

DISTILLKIT_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.uint64())),
    ("compressed_logprobs", pa.list_(pa.list_(pa.uint8()))),
    ("bytepacked_indices", pa.list_(pa.list_(pa.uint8()))),
    ("labels", pa.list_(pa.int64())),
])
"""DistillKit's `compressed_logit_schema()` plus the `labels` mask column."""


def distillkit_row(s: dict[str, Any], config: DistillKitConfig) -> dict[str, np.ndarray]:
    """One sample (a `ShardReader.sample` dict) as a DistillKit row, exact-value mode."""
    tokens = np.asarray(s["token_ids"], np.int64)
    rows = max(len(tokens) - 1, 0)
    ids = np.tile(np.arange(config.k, dtype=np.int64), (rows, 1))
    lps = np.full((rows, config.k), -np.log(config.k))
    labelled_rows = np.asarray(s["positions"], np.int64) - 1
    ids[labelled_rows] = s["topk_ids"]
    lps[labelled_rows] = s["topk_logprobs"]
    labels = np.full(len(tokens), -100, np.int64)
    labels[labelled_rows] = tokens[labelled_rows]
    compressed, packed = encode_exact(lps, ids, config)
    return {"input_ids": tokens, "compressed_logprobs": compressed,
            "bytepacked_indices": packed, "labels": labels}


def check_widths(compressed: np.ndarray, packed: np.ndarray, config: DistillKitConfig,
                 where: str) -> None:
    """Refuse rows whose byte widths are not the configuration's (a config of another dataset)."""
    for name, array, want in (("compressed_logprobs", compressed, config.logprob_bytes()),
                              ("bytepacked_indices", packed, config.index_bytes())):
        if array.ndim != 2 or (len(array) and array.shape[1] != want):
            got = array.shape[1] if array.ndim == 2 else "ragged"
            raise DistillKitFormatError(f"{where}: {name} rows have {got} bytes, the compression "
                                        f"configuration implies {want}: configuration and "
                                        "data do not match")
    if len(compressed) != len(packed):
        raise DistillKitFormatError(f"{where}: {len(compressed)} compressed_logprobs rows but "
                                    f"{len(packed)} bytepacked_indices rows")


def labels_from_row(input_ids: np.ndarray, compressed: np.ndarray, packed: np.ndarray,
                    labels: np.ndarray | None, config: DistillKitConfig, where: str
                    ) -> dict[str, np.ndarray] | None:
    """Decode one DistillKit row to our label arrays (None when no row carries a label)."""
    tokens = np.asarray(input_ids, np.int64)
    check_widths(compressed, packed, config, where)
    rows = len(compressed)
    if rows > len(tokens):
        raise DistillKitFormatError(f"{where}: {rows} logprob rows for {len(tokens)} input_ids "
                                    "(at most one row per token)")
    usable = np.arange(rows) + 1 < len(tokens)
    if labels is not None:
        if len(labels) < rows:
            raise DistillKitFormatError(f"{where}: labels has {len(labels)} entries for {rows} rows")
        usable &= np.asarray(labels[:rows]) >= 0
    picked = np.flatnonzero(usable)
    if not len(picked):
        return None
    values = decode_logprobs(compressed[picked], config)
    if np.isnan(values).any():
        raise DistillKitFormatError(f"{where}: row {picked[np.isnan(values).any(1)][0]} decodes "
                                    "to NaN logprobs")
    ids = decode_indices(packed[picked], config)
    order = np.argsort(-values, axis=1, kind="stable")
    values = np.clip(np.take_along_axis(values, order, 1), LOGPROB_FLOOR, 0.0)
    ids = np.take_along_axis(ids, order, 1)
    positions = picked + 1
    hit = ids == tokens[positions][:, None]
    sampled = np.where(hit.any(1), (values * hit).sum(1), values[:, -1])
    return {"token_ids": tokens, "positions": positions, "topk_ids": ids,
            "topk_logprobs": values.astype(np.float32), "sampled_logprobs": sampled.astype(np.float32)}
