"""`kd export --format parquet`: one plain row per sample, for pyarrow, pandas and `datasets`.

Columns (lists are Arrow `list<...>`; a label row j belongs to token
`positions[j]` and is the teacher's distribution computed from the logits at
position `positions[j] - 1`, raw (temperature 1, not renormalised):

    sample_id       string             as in the labels (`<prompt id>/<index>`)
    token_ids       list<int32>        the whole sample, prompt and completion
    prompt_length   int32              tokens before the first labelled position
    positions       list<int32>        labelled token positions, increasing
    topk_ids        list<list<int32>>  per labelled position, k ids, most likely first
    topk_logprobs   list<list<float32>> their raw logprobs, descending (stored float16, exact)
    token_logprobs  list<float32>      the teacher's logprob of the token at each position

    >>> import numpy as np
    >>> from pipeline.interop.parquet_view import view_row
    >>> s = {"token_ids": np.array([5, 6, 7]), "prompt_length": 1, "positions": np.array([1, 2]),
    ...      "topk_ids": np.array([[6, 1], [7, 2]]), "topk_logprobs": np.array([[-0.1, -3.0]] * 2),
    ...      "sampled_logprobs": np.array([-0.1, -0.1])}
    >>> view_row("p/0", s)["positions"].tolist()
    [1, 2]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

VIEW_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("token_ids", pa.list_(pa.int32())),
    ("prompt_length", pa.int32()), ("positions", pa.list_(pa.int32())),
    ("topk_ids", pa.list_(pa.list_(pa.int32()))),
    ("topk_logprobs", pa.list_(pa.list_(pa.float32()))),
    ("token_logprobs", pa.list_(pa.float32())),
])


def view_row(sample_id: str, s: dict[str, Any]) -> dict[str, Any]:
    """The view's row of one sample (a `ShardReader.sample` dict)."""
    return {"sample_id": sample_id, "token_ids": np.asarray(s["token_ids"]),
            "prompt_length": int(s["prompt_length"]), "positions": np.asarray(s["positions"]),
            "topk_ids": np.asarray(s["topk_ids"]), "topk_logprobs": np.asarray(s["topk_logprobs"]),
            "token_logprobs": np.asarray(s["sampled_logprobs"])}
