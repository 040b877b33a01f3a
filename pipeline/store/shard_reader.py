"""Read shards: numpy memmaps over the contiguous HDF5 datasets.

Numeric datasets are contiguous and uncompressed (every schema version), so after h5py
has told us a dataset's byte offset, dtype and shape we map the bytes directly
with `numpy.memmap` and close the HDF5 file: no h5py handle is held, which is
what makes readers safe to fork into DataLoader workers. Strings (sample ids,
finish reasons, text regions) are read with h5py on demand. Schema v1 shards (no
`labels/positions`: labels on the completion suffix) read like v2 ones.

    python -c "from pipeline.store.shard_reader import ShardReader; \
r = ShardReader('data/labels/demo/shard-00000.h5'); print(len(r), r.sample(0)['sample_id'])"
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.store.codecs import (ROW_FIELDS, SAMPLE_TEXTS, UnknownFormat, hidden_format_of,
                                   label_format_of, label_kind_of)
from pipeline.store.codecs.base import SampleText
from pipeline.store.text_layout import TextRegion, decode_regions
from pipeline.store.text_layout_datasets import BYTE_LENGTHS, read_region_strings
from schemas import SHARD_SCHEMAS


@dataclass(frozen=True)
class DatasetLayout:
    """Where a contiguous dataset's bytes lie in the file."""

    offset: int | None
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass
class ShardContents:
    """Which samples a shard holds, and how long they are: what readers index it by."""

    path: Path
    ids: list[str]
    lengths: np.ndarray
    """Tokens (prompt + completion) per sample, int32."""
    prompt_lengths: np.ndarray
    """Tokens before the first labelled position per sample, int32."""
    label_counts: np.ndarray
    """Label rows per sample, int32 (= length - prompt length in a generated sample)."""


SCHEMA_LABEL_DATASETS = ("labels/topk_ids", "labels/topk_logprobs")
"""The label datasets the schema lists (fp16 top-k rows): required only of shards of that kind
and format."""


class ShardFormatError(ValueError):
    """A shard does not follow the schema; the message names the shard and the dataset."""


def open_h5(path: str | Path) -> h5py.File:
    """h5py.File(path, "r"), with the path on its OSError: h5py's own names no file and carries
    no errno, and the one-line fault (`stages.cli.faults`) must say which file it was."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        exc.filename = exc.filename or str(path)
        raise


def plain_attrs(f: h5py.File) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}


def read_root_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes of a shard file alone (a few KB read, no dataset touched)."""
    with open_h5(path) as f:
        return plain_attrs(f)


def dataset_layouts(path: str | Path) -> tuple[dict[str, Any], dict[str, DatasetLayout]]:
    """Return (root attributes, layout of every numeric dataset) of a shard file."""
    layouts: dict[str, DatasetLayout] = {}
    with open_h5(path) as f:
        attrs = plain_attrs(f)

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "iuf":
                if obj.chunks is not None or obj.compression is not None:
                    raise ShardFormatError(f"{path}: dataset {name} is chunked or compressed")
                layouts[name] = DatasetLayout(obj.id.get_offset(), obj.dtype, obj.shape)
        f.visititems(visit)
    return attrs, layouts


def memmap_dataset(path: str | Path, layout: DatasetLayout) -> np.ndarray:
    """Read-only array over a dataset's bytes; empty datasets have no offset in HDF5."""
    if layout.offset is None or int(np.prod(layout.shape)) == 0:
        return np.zeros(layout.shape, dtype=layout.dtype)
    return np.memmap(path, mode="r", dtype=layout.dtype, offset=layout.offset, shape=layout.shape)


class ShardReader:
    """Random access to the samples of one shard through memmaps."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.attrs, self.layouts = dataset_layouts(self.path)
        self.version = self.attrs.get("schema_version")
        if self.version not in SHARD_SCHEMAS:
            raise ShardFormatError(f"{self.path}: schema_version {self.version!r} is not one this "
                                   f"build reads ({', '.join(map(str, SHARD_SCHEMAS))})")
        try:
            self.kind_codec = label_kind_of(self.attrs)
            self.label_codec = label_format_of(self.attrs)
            self.hidden_codec = hidden_format_of(self.attrs)
        except UnknownFormat as exc:
            raise ShardFormatError(f"{self.path}: {exc}") from None
        # the schema lists the fp16 top-k datasets; the kind and format say which this shard needs
        required = [n for n, spec in SHARD_SCHEMAS[self.version]["datasets"].items()
                    if "utf8" not in spec["dtype"] and n not in SCHEMA_LABEL_DATASETS]
        required += self.kind_codec.datasets(self.label_codec)
        missing = [n for n in required if n not in self.layouts]
        if missing:
            raise ShardFormatError(f"{self.path}: missing dataset(s) {', '.join(missing)}")
        self.arrays = {n: memmap_dataset(self.path, lay) for n, lay in self.layouts.items()}
        if "labels/positions" not in self.arrays:
            self.arrays["labels/positions"] = suffix_positions(self.arrays)
        self.top_k = int(self.attrs["top_k"])
        self.label_kind = self.kind_codec.name
        self.label_format = self.label_codec.name
        self.hidden_format = self.hidden_codec.name
        self.samples_per_position = int(self.attrs.get("samples_per_position", 0))
        self.stored_logprobs = self.arrays.get(self.label_codec.dataset)
        """The top-k logprobs as stored (float16, or q8 codes); `logprobs()` decodes."""
        self.decode_logprobs = self.label_codec.decoder(self.attrs)
        self.hidden_layers: list[int] = json.loads(self.attrs.get("hidden_layers", "[]"))
        self.row_fields = [f for f in ROW_FIELDS.values() if f.dataset in self.arrays]
        """The optional per-row datasets this shard holds (`pipeline.store.codecs.ROW_FIELDS`)."""
        self._region_strings: Any = ...  # read on first use (`text_regions`, `sample`)

    def region_strings(self) -> list[str] | None:
        """Every sample's encoded regions (schema v3 text layout), or None when the shard has none."""
        if self._region_strings is ...:
            self._region_strings = read_region_strings(self.path)
        return self._region_strings

    def text_regions(self) -> list[list[TextRegion]] | None:
        """Every sample's `TextRegion`s, or None when the shard has no text layout."""
        strings = self.region_strings()
        return None if strings is None else [decode_regions(s) for s in strings]

    def __len__(self) -> int:
        return len(self.arrays["samples/prompt_lengths"])

    def strings(self, name: str) -> list[str]:
        """A UTF-8 string dataset (`samples/ids`, `samples/finish_reasons`) as Python strings."""
        with open_h5(self.path) as f:
            return [s.decode("utf-8") if isinstance(s, bytes) else s for s in f[name][()]]

    def sample_texts(self) -> list[SampleText]:
        """The optional per-sample strings this shard holds (`pipeline.store.codecs.SAMPLE_TEXTS`)."""
        if not SAMPLE_TEXTS:
            return []
        with h5py.File(self.path, "r") as f:
            return [t for t in SAMPLE_TEXTS.values() if t.dataset in f]

    def contents(self) -> ShardContents:
        """Sample ids and lengths, from the ids and the small offset arrays only."""
        lengths = np.diff(np.asarray(self.arrays["samples/offsets"], np.int64)).astype(np.int32)
        counts = np.diff(np.asarray(self.arrays["labels/offsets"], np.int64)).astype(np.int32)
        return ShardContents(self.path, self.strings("samples/ids"), lengths,
                             np.asarray(self.arrays["samples/prompt_lengths"], np.int32), counts)

    def logprobs(self, rows: slice) -> np.ndarray:
        """Top-k logprobs of label rows `rows`: the memmap view (fp16), or decoded float32."""
        return self.decode_logprobs(self.stored_logprobs[rows])

    def label_rows(self, l0: int, l1: int) -> dict[str, np.ndarray]:
        """`topk_ids`, `topk_logprobs` of label rows l0..l1, as the label kind reads them
        (sampled rows padded to N columns: `pipeline.store.codecs.kind_sampled`)."""
        return self.kind_codec.rows(self, l0, l1)

    def sample(self, i: int) -> dict[str, Any]:
        """Sample i as arrays (views into the memmaps, no copy; q8 logprobs decoded to float32)."""
        a = self.arrays
        t0, t1 = a["samples/offsets"][i], a["samples/offsets"][i + 1]
        l0, l1 = a["labels/offsets"][i], a["labels/offsets"][i + 1]
        out = {
            "token_ids": a["samples/token_ids"][t0:t1],
            "prompt_length": int(a["samples/prompt_lengths"][i]),
            "positions": a["labels/positions"][l0:l1],
            **self.label_rows(l0, l1),
            "sampled_logprobs": a["labels/sampled_logprobs"][l0:l1],
        }
        spans = {"label_rows": slice(l0, l1), "tokens": slice(t0, t1)}
        for row_field in self.row_fields:
            out[row_field.name] = a[row_field.dataset][spans[row_field.rows]]
        if BYTE_LENGTHS in a:  # the text layout: `token_byte_lengths` (tokens,), `regions`
            out["token_byte_lengths"] = a[BYTE_LENGTHS][t0:t1]
            strings = self.region_strings()
            out["regions"] = None if strings is None else decode_regions(strings[i])
        for layer in self.hidden_layers:
            out[f"hidden_{layer}"] = self.hidden(layer, slice(t0, t1))
        return out

    def hidden(self, layer: int, rows: slice) -> np.ndarray:
        """Hidden states of token rows `rows`: the memmap view (fp16), or decoded float32
        (int8; pca: the coefficients, never expanded)."""
        return self.hidden_codec.decode(self.arrays, layer, rows)


def suffix_positions(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """A v1 shard's implicit `labels/positions`: every token after each sample's prompt."""
    offsets = np.asarray(arrays["samples/offsets"], np.int64)
    prompt = np.asarray(arrays["samples/prompt_lengths"], np.int64)
    counts = np.maximum(np.diff(offsets) - prompt, 0)
    row_start = np.repeat(np.cumsum(counts) - counts, counts)
    return (np.arange(int(counts.sum())) - row_start + np.repeat(prompt, counts)).astype(np.int32)


def read_samples(reader: ShardReader) -> list["Sample"]:
    """Every sample of a shard back as in-memory `Sample`s (copies; used to rewrite a shard)."""
    from pipeline.store.sample import Sample

    ids, reasons = reader.strings("samples/ids"), reader.strings("samples/finish_reasons")
    texts = {t.name: reader.strings(t.dataset) for t in reader.sample_texts()}
    samples = []
    for i, (sid, reason) in enumerate(zip(ids, reasons)):
        s = reader.sample(i)
        prompt_id, index = sid.rsplit("/", 1)
        prefix = index.rstrip("0123456789")
        tokens, p = s["token_ids"].tolist(), s["prompt_length"]
        sample = Sample(prompt_id, int(index[len(prefix):]), tokens[:p], tokens[p:],
                        np.array(s["topk_ids"]), np.array(s["topk_logprobs"], np.float32),
                        np.array(s["sampled_logprobs"], np.float32), reason,
                        label_positions=np.array(s["positions"], np.int64), id_prefix=prefix)
        for row_field in reader.row_fields:
            setattr(sample, row_field.name, np.array(s[row_field.name], row_field.dtype))
        for name, values in texts.items():
            setattr(sample, name, values[i])
        if "token_byte_lengths" in s:
            sample.token_byte_lengths = np.array(s["token_byte_lengths"])
            sample.text_regions = s["regions"]
        sample.hidden = {layer: np.array(s[f"hidden_{layer}"]) for layer in reader.hidden_layers}
        samples.append(sample)
    return samples
