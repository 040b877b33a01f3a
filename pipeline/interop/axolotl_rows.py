"""`kd export --format axolotl`: pre-tokenized rows for axolotl's knowledge-distillation trainer.

Written against axolotl 0.18.0 (axolotl-ai-cloud/axolotl commit
067b021c8b87a9e5e380b9173c704cf7340e30f5): `src/axolotl/integrations/kd/trainer.py`
pops `labels`, `target_token_ids`, `target_logprobs`, `target_mask` and
`topk_logprob/forward_kl.py` reads student logits at position t against target
row t without a shift, the teacher logprobs "already re-normalized" over the k
ids (as `chat_template.py` does before training), the loss summed over masked
rows and divided by the number of labels != -100.

So row t of a sample of L tokens holds the teacher's distribution for token
t + 1 (computed from the logits at position t); `labels[t]` is token t where t
is labelled, else -100 (the model's own cross-entropy shifts it). Rows whose
next token has no label, and the last row, are masked (`target_mask` 0) and
padded with ids 0..k-1 at logprob -log k (finite, so no masked row can turn
into NaN). Renormalising drops the tail: the mass outside the top k, whose
-log is exactly the top-k KL of the teacher against itself. With
`kd_temperature` T the trainer divides the student's logits by T but uses the
targets as stored, so export with the same T (`p^(1/T)` renormalised, as
axolotl's chat_template strategy does at preprocessing).

    >>> import numpy as np
    >>> from pipeline.interop.axolotl_rows import spans
    >>> spans(10, 4)      # windows overlap by one token: each label keeps its row
    [(0, 4), (3, 7), (6, 10)]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

AXOLOTL_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int64())), ("attention_mask", pa.list_(pa.int64())),
    ("labels", pa.list_(pa.int64())), ("target_token_ids", pa.list_(pa.list_(pa.int64()))),
    ("target_logprobs", pa.list_(pa.list_(pa.float32()))),
    ("target_mask", pa.list_(pa.list_(pa.int64()))),
])


def renormalised(logprobs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Top-k logprobs renormalised over the k ids, at `temperature`: log softmax(lp / T)."""
    scaled = np.asarray(logprobs, np.float64) / temperature
    top = scaled.max(axis=-1, keepdims=True)
    return scaled - top - np.log(np.exp(scaled - top).sum(axis=-1, keepdims=True))


def spans(length: int, max_length: int | None) -> list[tuple[int, int]]:
    """Token windows [a, b) of at most `max_length` covering a sample: consecutive windows share
    one token, so every labelled position p >= 1 has its row (at p - 1) in exactly one window."""
    if not max_length or length <= max_length:
        return [(0, length)]
    out, a = [], 0
    while True:
        out.append((a, min(a + max_length, length)))
        if a + max_length >= length:
            return out
        a += max_length - 1


def axolotl_row(s: dict[str, Any], span: tuple[int, int], temperature: float = 1.0
                ) -> dict[str, np.ndarray]:
    """The row of tokens [a, b) of a sample (a `ShardReader.sample` dict)."""
    a, b = span
    tokens = np.asarray(s["token_ids"][a:b], np.int64)
    ids, lps = np.asarray(s["topk_ids"]), np.asarray(s["topk_logprobs"])
    n, k = len(tokens), ids.shape[1]
    positions = np.asarray(s["positions"], np.int64)
    inside = (positions > a) & (positions < b)
    local = positions[inside] - a
    labels = np.full(n, -100, np.int64)
    labels[local] = tokens[local]
    target_ids = np.tile(np.arange(k, dtype=np.int64), (n, 1))
    target_lps = np.full((n, k), -np.log(k), np.float32)
    mask = np.zeros((n, k), np.int64)
    target_ids[local - 1] = ids[inside]
    target_lps[local - 1] = renormalised(lps[inside], temperature)
    mask[local - 1] = 1
    return {"input_ids": tokens, "attention_mask": np.ones(n, np.int64), "labels": labels,
            "target_token_ids": target_ids, "target_logprobs": target_lps, "target_mask": mask}
