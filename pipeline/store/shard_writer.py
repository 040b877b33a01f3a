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

from pipeline.store.checksum import commit_path, sha256_file, temp_path_for
from pipeline.store.hidden_basis import project
from pipeline.store.hidden_codec import encode_int8, scale_dataset_name
from pipeline.store.label_codec import encode_q8, logprob_dataset, q8_attrs
from pipeline.store.q8poly_codec import encode_q8poly, q8poly_attrs
from pipeline.store.sample import Sample
from pipeline.store.sampled_codec import SAMPLED_DATASETS, ragged_rows
from pipeline.store.text_layout_datasets import pack_byte_lengths, write_regions
from schemas import (STUDENT_LOGPROBS, SHARD_SCHEMA_NAME, SHARD_SCHEMA_VERSION, hidden_dataset_name,
                     topk_id_dtype)


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
    """How top-k logprobs are stored: fp16, q8 (`pipeline.store.label_codec`) or q8poly
    (`pipeline.store.q8poly_codec`)."""
    hidden_format: str = "fp16"
    """How hidden states are stored: fp16, int8 (`pipeline.store.hidden_codec`) or pca
    (int8 coefficients on `hidden_basis`, `pipeline.store.hidden_basis`)."""
    hidden_rank: int = 0
    """pca: coefficients stored per token and layer."""
    hidden_basis_sha256: str = ""
    """pca: checksum of the output's `hidden_basis.h5`."""
    hidden_basis: Any = field(default=None, compare=False, repr=False)
    """pca: {layer: (mean, basis)} the writer projects with (from `hidden_basis.h5`)."""
    label_kind: str = "topk"
    """topk, or sampled: counts of N draws per position (`pipeline.store.sampled_codec`)."""
    samples_per_position: int = 0
    """sampled: N, the draws per labelled position."""
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
    k = attrs.top_k
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
    id_dtype = topk_id_dtype(attrs.vocab_size)
    if attrs.label_kind == "sampled":
        n = attrs.samples_per_position
        offsets, ids, counts, tail = ragged_rows(stack("topk_ids", (0, n), np.int64),
                                                 stack("topk_logprobs", (0, n), np.float32), n)
        arrays |= dict(zip(SAMPLED_DATASETS, (offsets, ids.astype(id_dtype), counts, tail)))
    else:
        arrays["labels/topk_ids"] = stack("topk_ids", (0, k), id_dtype)
        encode = {"q8": encode_q8, "q8poly": encode_q8poly}.get(attrs.label_format)
        arrays[logprob_dataset({"label_format": attrs.label_format})] = (
            encode(stack("topk_logprobs", (0, k), np.float32)) if encode
            else stack("topk_logprobs", (0, k), np.float16))
    arrays["labels/sampled_logprobs"] = stack("sampled_logprobs", (0,), np.float32)
    carried = [s.student_logprobs is not None for s in samples]
    if any(carried):
        if not all(carried):
            raise ValueError(f"{carried.count(False)} of {len(samples)} samples lack the student "
                             "logprobs the others carry: a shard stores them for every row or none")
        arrays[STUDENT_LOGPROBS] = stack("student_logprobs", (0,), np.float32)
    for layer in attrs.hidden_layers:
        parts = [s.hidden[layer] for s in samples]
        states = (np.concatenate(parts).astype(np.float32) if parts
                  else np.zeros((0, attrs.hidden_size), np.float32))
        if attrs.hidden_format == "pca":
            mean, basis = attrs.hidden_basis[layer]
            states = project(states, mean, basis) if parts else np.zeros((0, len(basis)), np.float32)
        if attrs.hidden_format in ("int8", "pca"):
            arrays[hidden_dataset_name(layer)], arrays[scale_dataset_name(layer)] = \
                encode_int8(states)
        else:
            arrays[hidden_dataset_name(layer)] = states.astype(np.float16)
    return arrays


def write_shard(path: str | Path, index: int, samples: Sequence[Sample],
                attrs: ShardAttrs) -> ShardRecord:
    """Write `samples` to `path` atomically and return its manifest record."""
    path = Path(path)
    arrays = pack_samples(samples, attrs)
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
            # fp16 writes no label_format attribute: its files stay byte-identical to
            # those of earlier builds (absent means fp16 to every reader).
            format_attrs = {"q8": q8_attrs, "q8poly": q8poly_attrs}.get(attrs.label_format, dict)
            for key, value in format_attrs().items():
                f.attrs[key] = value
            if attrs.hidden_format != "fp16":
                f.attrs["hidden_format"] = attrs.hidden_format
            if attrs.hidden_format == "pca":
                f.attrs["hidden_rank"] = attrs.hidden_rank
                f.attrs["hidden_basis_sha256"] = attrs.hidden_basis_sha256
            if attrs.label_kind != "topk":
                f.attrs["label_kind"] = attrs.label_kind
                f.attrs["samples_per_position"] = attrs.samples_per_position
                f.attrs["label_source_k"] = attrs.label_source_k
            for name, data in arrays.items():
                f.create_dataset(name, data=data)
            f.create_dataset("samples/ids", data=[s.sample_id for s in samples], dtype=text)
            f.create_dataset("samples/finish_reasons",
                             data=[s.finish_reason for s in samples], dtype=text)
            write_regions(f, samples, text)
        commit_path(tmp, path)
    finally:
        if tmp.exists():
            os.unlink(tmp)
    return ShardRecord(
        name=path.name, sha256=sha256_file(path), samples=len(samples),
        tokens=int(arrays["samples/offsets"][-1]),
        completion_tokens=int(arrays["labels/offsets"][-1]), bytes=path.stat().st_size)
