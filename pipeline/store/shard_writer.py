"""Write one shard file (schema v3) from a list of samples, crash-safely.

All datasets are contiguous and uncompressed, so `numpy.memmap` at
`dataset.id.get_offset()` reads them without h5py (see `pipeline.store.shard_reader`).
The file is written under a hidden temporary name, fsynced and renamed; the
returned `ShardRecord` (name, sha256, counts, bytes) goes into the manifest.

    >>> from pipeline.store.shard_writer import write_shard, ShardAttrs
    >>> # write_shard("out/shard-00000.h5", samples, ShardAttrs(...))  # see tests/test_shards.py
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from pipeline.store.atomic_commit import commit_path, sha256_file, temp_path_for
from pipeline.store.codecs import (ROW_FIELDS, SAMPLE_TEXTS, hidden_format_named,
                                   label_format_named, label_kind_named)
from pipeline.store.sample import Sample
from pipeline.store.text_layout_datasets import pack_byte_lengths, write_regions
from schemas import SHARD_SCHEMA_NAME, SHARD_SCHEMA_VERSION, topk_id_dtype


@dataclass(frozen=True)
class ShardAttrs:
    """Root attributes shared by every shard of one output."""

    teacher: str
    tokenizer_fingerprint: str
    vocab_size: int
    top_k: int
    sampling: dict[str, Any]
    hidden_layers: tuple[int, ...] = ()
    hidden_size: int = 0
    label_format: str = "fp16"
    """How top-k logprobs are stored: a name of `pipeline.store.codecs.LABEL_FORMATS`."""
    hidden_format: str = "fp16"
    """How hidden states are stored: a name of `pipeline.store.codecs.HIDDEN_FORMATS`."""
    hidden_rank: int = 0
    """pca: coefficients stored per token and layer."""
    hidden_basis_sha256: str = ""
    """pca: checksum of the output's `hidden_basis.h5`."""
    hidden_basis: Any = field(default=None, compare=False, repr=False)
    """pca: {layer: (mean, basis)} the writer projects with (from `hidden_basis.h5`)."""
    label_kind: str = "topk"
    """What a label row holds: a name of `pipeline.store.codecs.LABEL_KINDS`."""
    samples_per_position: int = 0
    """sampled: N, the draws per labelled position."""
    vocab_fingerprint: str = ""
    """`pipeline.store.tokenizer_identity`: every id's token bytes ("" writes no attribute)."""
    special_tokens_fingerprint: str = ""
    """`pipeline.store.tokenizer_identity`: the listed special tokens ("" writes no attribute)."""
    label_source_k: int = 0
    """sampled: the engine's top-K the draws were made from (plus one tail bucket)."""


@dataclass
class ShardRecord:
    """What the manifest says about one committed shard."""

    name: str
    sha256: str
    samples: int
    tokens: int
    completion_tokens: int
    bytes: int
    generated: int = 0
    """Samples generated for this shard's prompts, kept (the `samples` above) or dropped."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Dropped samples by reason (see `pipeline.teacher.sample_filter.DROP_REASONS`)."""
    index_sha256: str = ""
    """Checksum of this shard's `index/part-NNNNN.parquet`."""
    hidden_layers: list[int] = field(default_factory=list)
    """Absolute layers whose hidden states this file holds (filled in after generation)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ShardRecord":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def offsets_of(lengths: Sequence[int]) -> np.ndarray:
    """(len + 1,) int64 prefix sums: item i spans offsets[i]:offsets[i+1]."""
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=out[1:])
    return out


def pack_samples(samples: Sequence[Sample], attrs: ShardAttrs) -> dict[str, np.ndarray]:
    """Concatenate samples into the schema's flat arrays, keyed by dataset path."""
    arrays: dict[str, np.ndarray] = {
        "samples/token_ids": np.fromiter(
            (t for s in samples for t in s.token_ids), dtype=np.uint32),
        "samples/offsets": offsets_of([len(s.prompt_token_ids) + s.completion_length
                                       for s in samples]),
        "samples/prompt_lengths": np.asarray([len(s.prompt_token_ids) for s in samples], np.int32),
        **pack_byte_lengths(samples),
        "labels/offsets": offsets_of([s.label_count for s in samples]),
        "labels/positions": (np.concatenate([s.positions for s in samples]).astype(np.int32)
                             if samples else np.zeros(0, np.int32)),
    }
    def stack(attr: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        parts = [np.asarray(getattr(s, attr)) for s in samples]
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)
    arrays |= label_kind_named(attrs.label_kind).pack(
        stack, attrs, label_format_named(attrs.label_format), topk_id_dtype(attrs.vocab_size))
    arrays["labels/sampled_logprobs"] = stack("sampled_logprobs", (0,), np.float32)
    for row_field in ROW_FIELDS.values():
        if carried_by_all(samples, row_field.name, row_field.what):
            arrays[row_field.dataset] = stack(row_field.name, (0,), row_field.dtype)
    hidden = hidden_format_named(attrs.hidden_format)
    for layer in attrs.hidden_layers:
        parts = [s.hidden[layer] for s in samples]
        states = (np.concatenate(parts).astype(np.float32) if parts
                  else np.zeros((0, attrs.hidden_size), np.float32))
        arrays |= hidden.encode(states, layer, attrs)
    return arrays


def carried_by_all(samples: Sequence[Sample], name: str, what: str) -> bool:
    """Whether the samples carry the optional field `name`; ValueError if only some do."""
    carried = [getattr(s, name, None) is not None for s in samples]
    if any(carried) and not all(carried):
        raise ValueError(f"{carried.count(False)} of {len(samples)} samples lack the {what} the "
                         "others carry: a shard stores them for every row or none")
    return any(carried)


def pack_texts(samples: Sequence[Sample]) -> dict[str, list[str]]:
    """The shard's UTF-8 string datasets (one string per sample), keyed by dataset path."""
    texts = {"samples/ids": [s.sample_id for s in samples],
             "samples/finish_reasons": [s.finish_reason for s in samples]}
    for text_field in SAMPLE_TEXTS.values():
        if carried_by_all(samples, text_field.name, text_field.what):
            texts[text_field.dataset] = [getattr(s, text_field.name) for s in samples]
    return texts


def format_attrs(attrs: ShardAttrs) -> dict[str, Any]:
    """The root attributes the output's label format, hidden format and label kind write.

    The defaults write none: fp16 top-k files stay byte-identical to those of earlier
    builds (absent means the default to every reader)."""
    return (label_format_named(attrs.label_format).root_attrs()
            | hidden_format_named(attrs.hidden_format).root_attrs(attrs)
            | label_kind_named(attrs.label_kind).root_attrs(attrs))


def write_shard(path: str | Path, index: int, samples: Sequence[Sample],
                attrs: ShardAttrs) -> ShardRecord:
    """Write `samples` to `path` atomically and return its manifest record."""
    path = Path(path)
    arrays, texts = pack_samples(samples, attrs), pack_texts(samples)
    tmp = temp_path_for(path)
    text = h5py.string_dtype("utf-8")
    try:
        # libver="latest" keeps the superblock small and lets the file be read
        # by any h5py >= 3; track_order keeps dataset order stable across writes.
        with h5py.File(tmp, "w", libver="latest", track_order=True) as f:
            f.attrs["schema"] = SHARD_SCHEMA_NAME
            f.attrs["schema_version"] = SHARD_SCHEMA_VERSION
            f.attrs["teacher"] = attrs.teacher
            f.attrs["tokenizer_fingerprint"] = attrs.tokenizer_fingerprint
            f.attrs["vocab_size"] = attrs.vocab_size
            f.attrs["top_k"] = attrs.top_k
            f.attrs["sampling"] = json.dumps(attrs.sampling, sort_keys=True)
            f.attrs["shard_index"] = index
            f.attrs["hidden_layers"] = json.dumps(list(attrs.hidden_layers))
            f.attrs["hidden_size"] = attrs.hidden_size
            for key in ("vocab_fingerprint", "special_tokens_fingerprint"):
                if getattr(attrs, key):
                    f.attrs[key] = getattr(attrs, key)
            for key, value in format_attrs(attrs).items():
                f.attrs[key] = value
            for name, data in arrays.items():
                f.create_dataset(name, data=data)
            for name, values in texts.items():
                f.create_dataset(name, data=values, dtype=text)
            write_regions(f, samples, text)
        commit_path(tmp, path)
    finally:
        if tmp.exists():
            os.unlink(tmp)
    return ShardRecord(
        name=path.name, sha256=sha256_file(path), samples=len(samples),
        tokens=int(arrays["samples/offsets"][-1]),
        completion_tokens=int(arrays["labels/offsets"][-1]), bytes=path.stat().st_size)
