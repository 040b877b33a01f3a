"""The on-disk contract of offline-kd, versioned, and the typed stage configs.

`shard_v2.json` is the machine-readable description of a shard file that the
writer, the reader and `kd verify` all load from here; `shard_v2.md` is the
prose version. A change to either is a schema change: bump the version. Older
versions stay readable: `SHARD_SCHEMAS` holds every version this build reads
(v1: labels on one contiguous completion suffix; v2 adds `labels/positions`;
v3 adds the text layout, `samples/token_byte_lengths` and `samples/text_regions`).

    >>> from schemas import SHARD_SCHEMA, SHARD_SCHEMAS, shard_name
    >>> shard_name(3)
    'shard-00003.h5'
    >>> SHARD_SCHEMA["schema_version"], sorted(SHARD_SCHEMAS)
    (3, [1, 2, 3])
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from schemas.eagle3 import PRE_NORM_DATASET, PRE_NORM_LAST

SCHEMA_DIR = Path(__file__).parent
SHARD_SCHEMAS: dict[int, dict] = {
    v: json.loads((SCHEMA_DIR / f"shard_v{v}.json").read_text()) for v in (1, 2, 3)}
"""Every shard schema this build reads, by version; it writes the newest."""
SHARD_SCHEMA: dict = SHARD_SCHEMAS[max(SHARD_SCHEMAS)]
SHARD_SCHEMA_NAME: str = SHARD_SCHEMA["schema"]
SHARD_SCHEMA_VERSION: int = SHARD_SCHEMA["schema_version"]
MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_NAME = "offline-kd/manifest"
REJECTS_NAME = "rejects.jsonl"
CONFIG_NAME = "teacher_config.json"
STUDENT_LOGPROBS = "labels/student_logprobs"
"""Optional dataset: the sampling student's logprob of each labelled token (on-policy rounds)."""
VERIFIED_SHARDS_CACHE = "~/.cache/offline-kd/verified-shards"
"""Where readers remember shards verified in full (`pipeline.store.verified_shards`) unless
the environment variable KD_VERIFY_CACHE moves it (see `verified_shards_cache`)."""


def verified_shards_cache() -> str:
    """The verified-shard cache's folder, read when called (not at import): KD_VERIFY_CACHE,
    else `VERIFIED_SHARDS_CACHE` (the tests point the variable at a temporary folder)."""
    return os.environ.get("KD_VERIFY_CACHE") or VERIFIED_SHARDS_CACHE


def shard_name(index: int) -> str:
    """Zero-padded, sortable file name of shard `index`."""
    return SHARD_SCHEMA["file_pattern"].format(index=index)


def hidden_dataset_name(layer: int) -> str:
    """Dataset path of the stored hidden states of absolute layer `layer`."""
    if layer == PRE_NORM_LAST:
        return PRE_NORM_DATASET
    return f"hidden/layer_{layer:02d}"


def topk_id_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits, else uint32 (the dtype of `labels/topk_ids`)."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)
