"""The on-disk contract of offline-kd, versioned, and the typed stage configs.

`shard_v1.json` is the machine-readable description of a shard file that the
writer, the reader and `kd verify` all load from here; `shard_v1.md` is the
prose version. A change to either is a schema change: bump the version.

    >>> from schemas import SHARD_SCHEMA, shard_name
    >>> shard_name(3)
    'shard-00003.h5'
    >>> SHARD_SCHEMA["schema_version"]
    1
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

SCHEMA_DIR = Path(__file__).parent
SHARD_SCHEMA: dict = json.loads((SCHEMA_DIR / "shard_v1.json").read_text())
SHARD_SCHEMA_NAME: str = SHARD_SCHEMA["schema"]
SHARD_SCHEMA_VERSION: int = SHARD_SCHEMA["schema_version"]
MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_NAME = "offline-kd/manifest"
REJECTS_NAME = "rejects.jsonl"
CONFIG_NAME = "teacher_config.json"
VERIFIED_SHARDS_CACHE = os.environ.get("KD_VERIFY_CACHE", "~/.cache/offline-kd/verified-shards")
"""Where readers remember shards verified in full (`pipeline.store.verified_shards`);
the environment variable KD_VERIFY_CACHE moves it (the tests point it at a temporary folder)."""


def shard_name(index: int) -> str:
    """Zero-padded, sortable file name of shard `index`."""
    return SHARD_SCHEMA["file_pattern"].format(index=index)


def hidden_dataset_name(layer: int) -> str:
    """Dataset path of the stored hidden states of absolute layer `layer`."""
    return f"hidden/layer_{layer:02d}"


def topk_id_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits, else uint32 (the dtype of `labels/topk_ids`)."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)
