"""The three codec interfaces: a label format, a label kind, a hidden-state format.

Each stored format is one object (one module of `pipeline.store.codecs`) that
owns everything the store does with it: its dataset names and dtypes, the root
attributes it writes, encode and decode, the checks `kd verify` runs on it, and
what must agree when outputs are read together. The writer, the reader, `kd
verify`, `kd inspect` and `kd export` look the object up by name
(`pipeline.store.codecs`) and never test the name themselves.

- `LabelFormat`: how a top-k row's logprobs are stored (fp16, q8, q8poly).
- `LabelKind`: what a label row is (top-k rows, or counts of sampled ids);
  top-k rows store their logprobs in a `LabelFormat`.
- `HiddenFormat`: how one layer's hidden states are stored (fp16, int8, pca).
- `RowField`: an optional dataset of one value per token or per label row that a
  shard holds for every sample or for none (the sampling student's logprobs).
- `SampleText`: an optional UTF-8 string per sample, held for every sample or none.

Methods take plain values (root attributes as a dict, arrays by dataset name,
a manifest or a reader as any object with the named fields), so no codec
imports the reader, the writer or the manifest.

    >>> from pipeline.store.codecs import label_format_named
    >>> fmt = label_format_named("q8")
    >>> fmt.dataset, fmt.row_width({"top_k": 20})
    ('labels/topk_logprobs_q8', 20)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from schemas import hidden_dataset_name

Attrs = Mapping[str, Any]
"""A shard's root attributes (absent keys: the defaults of older outputs)."""
Arrays = Mapping[str, np.ndarray]
"""A shard's numeric datasets by path (memmaps in the reader)."""
Stack = Callable[[str, tuple[int, ...], Any], np.ndarray]
"""The writer's gatherer: (Sample field, empty shape, dtype) -> that field of every sample
concatenated in `dtype` (the empty shape when there are no samples)."""


class LabelFormat:
    """How the logprobs of top-k label rows are stored."""

    name: str = ""
    dataset: str = "labels/topk_logprobs"
    """The dataset holding the stored rows (one row per label row)."""
    stored_dtype: np.dtype | None = None
    """The dtype `kd verify` requires of `dataset`; None: the schema's dtype list decides."""
    input_dtype: Any = np.float32
    """The dtype the writer gathers the samples' logprob rows in before `encode`."""
    must_match: tuple[str, ...] = ()
    """Manifest fields outputs read together must share: none, every label format
    decodes to the same float32 logprob rows."""

    def root_attrs(self) -> dict[str, Any]:
        """Root attributes a shard of this format carries (the decoding constants)."""
        return {}

    def encode(self, logprobs: np.ndarray) -> np.ndarray:
        """(rows, k) logprob rows, sorted descending, in `input_dtype` -> stored rows."""
        raise NotImplementedError

    def decoder(self, attrs: Attrs) -> Callable[[np.ndarray], np.ndarray]:
        """Function (stored rows -> logprob rows) for a shard with these root attributes."""
        raise NotImplementedError

    def row_width(self, attrs: Attrs) -> int:
        """Stored columns per label row."""
        return int(attrs["top_k"])

    def check_attrs(self, attrs: Attrs) -> list[str]:
        """`kd verify`: what is wrong with this format's root attributes."""
        return []


class LabelKind:
    """What a label row holds, which datasets carry it and how they are checked."""

    name: str = ""
    holds_topk_rows: bool = True
    """Rows are the teacher's top-k ids with logprobs (what other trainers' formats hold)."""
    drawn: bool = False
    """Rows are counts of ids drawn from the teacher's top-K rows (drawn after filtering)."""
    must_match: tuple[str, ...] = ("label_kind", "samples_per_position")
    """Manifest fields outputs read together must share: top-k rows and draw counts are
    different targets, and so are counts of different N."""

    def root_attrs(self, attrs: Any) -> dict[str, Any]:
        """Root attributes of a shard of this kind (`attrs`: the writer's `ShardAttrs`)."""
        return {}

    def datasets(self, fmt: LabelFormat) -> list[str]:
        """The numeric datasets a shard of this kind must hold (labels in format `fmt`)."""
        raise NotImplementedError

    def entry_datasets(self, fmt: LabelFormat) -> tuple[str, ...]:
        """The datasets whose bytes are per label entry (`kd inspect`'s bytes per entry)."""
        raise NotImplementedError

    def entry_count(self, lengths: Mapping[str, int], rows: int, top_k: int) -> int:
        """Label entries of an output from its datasets' summed lengths and its label rows."""
        raise NotImplementedError

    def storage_words(self, manifest: Any) -> tuple[str, str]:
        """(what the labels are, what one entry is), as `kd inspect` prints them."""
        raise NotImplementedError

    def pack(self, stack: Stack, attrs: Any, fmt: LabelFormat, id_dtype: np.dtype
             ) -> dict[str, np.ndarray]:
        """The label datasets of a shard's samples (gathered by `stack`), by path."""
        raise NotImplementedError

    def rows(self, reader: Any, l0: int, l1: int) -> dict[str, np.ndarray]:
        """`topk_ids`, `topk_logprobs` of label rows l0..l1 of an open shard."""
        raise NotImplementedError

    def check_attrs(self, attrs: Attrs, manifest: Any) -> list[str]:
        """`kd verify`: this kind's root attributes against the manifest."""
        return []

    def check_structure(self, arrays: Arrays, attrs: Attrs, fmt: LabelFormat, rows: int,
                        id_dtype: np.dtype) -> list[str]:
        """`kd verify`: dtypes and shapes of this kind's datasets for `rows` label rows."""
        raise NotImplementedError

    def check_values(self, reader: Any) -> list[str]:
        """`kd verify`: every label row's values (ids below the vocabulary, valid logprobs)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Sidecar:
    """A file beside the shards that a format needs, checksummed in the manifest."""

    name: str
    sha256: str
    missing: str
    """`kd verify`'s detail when the file is absent."""
    corrupt: str
    """`kd verify`'s detail when its checksum differs from the manifest's."""


class HiddenFormat:
    """How one stored layer's hidden states are kept (`hidden/layer_NN` and what goes with it)."""

    name: str = ""
    stored_dtype: Any = np.float16
    width_field: str = "hidden_size"
    """The root attribute (and manifest field) giving a stored row's width."""
    needs_basis: bool = False
    """A projection basis is fitted on the first captured shard before any is written."""
    must_match: tuple[str, ...] = ("hidden_layers", "hidden_size", "hidden_space")
    """Manifest fields outputs read together must share (`hidden_space`: see `space`)."""

    def space(self, manifest: Any) -> str:
        """What the stored rows are vectors of; outputs read together must agree."""
        return "teacher"

    def root_attrs(self, attrs: Any) -> dict[str, Any]:
        """Root attributes of a shard of this format (`attrs`: the writer's `ShardAttrs`)."""
        return {"hidden_format": self.name}

    def encode(self, states: np.ndarray, layer: int, attrs: Any) -> dict[str, np.ndarray]:
        """(tokens, hidden size) float32 states of `layer` -> its datasets by path."""
        raise NotImplementedError

    def decode(self, arrays: Arrays, layer: int, rows: slice) -> np.ndarray:
        """The stored rows `rows` of `layer` (a view when stored as read)."""
        raise NotImplementedError

    def check_attrs(self, attrs: Attrs, manifest: Any) -> list[str]:
        """`kd verify`: this format's root attributes against the manifest."""
        return []

    def check_structure(self, arrays: Arrays, layer: int, tokens: int, attrs: Attrs
                        ) -> list[str]:
        """`kd verify`: the layer's datasets have `tokens` rows of the stored width and dtype."""
        name = hidden_dataset_name(layer)
        h, size, errors = arrays.get(name), int(attrs.get(self.width_field, 0)), []
        if h is None or h.shape != (tokens, size):
            errors.append(f"{name}: expected shape ({tokens}, {size})")
        if h is not None and h.dtype != self.stored_dtype:
            errors.append(f"{name} has dtype {h.dtype}, expected {np.dtype(self.stored_dtype)} "
                          f"(hidden_format {self.name})")
        return errors

    def check_values(self, arrays: Arrays, layer: int) -> list[str]:
        """`kd verify`: the layer's stored values decode to finite states."""
        raise NotImplementedError

    def sidecars(self, manifest: Any) -> list[Sidecar]:
        """Files beside the shards this format needs (none but pca's basis)."""
        return []


ROW_UNITS = {"tokens": "token", "label_rows": "label row"}
"""What a `RowField` has one value per (the schema's shape names), and its words in messages."""


class RowField:
    """An optional dataset of one value per token or per label row, carried by a `Sample`
    attribute of the same name; a shard stores it for every sample or for none."""

    name: str = ""
    """The `Sample` attribute the writer reads, and the key `ShardReader.sample()` fills."""
    dataset: str = ""
    rows: str = "label_rows"
    """A key of `ROW_UNITS`: what one stored value belongs to."""
    dtype: Any = np.float32
    what: str = ""
    """What the values are, in messages."""

    def check_structure(self, values: np.ndarray, rows: int) -> list[str]:
        """`kd verify`: one value of `dtype` per row."""
        if values.shape != (rows,) or values.dtype != self.dtype:
            return [f"{self.dataset} has shape {values.shape}, dtype {values.dtype}; expected "
                    f"({rows},) {np.dtype(self.dtype)}, one per {ROW_UNITS[self.rows]}"]
        return []

    def check_values(self, values: np.ndarray) -> list[str]:
        """`kd verify`: what is wrong with the stored values."""
        return []


class SampleText:
    """An optional UTF-8 string per sample (stored like `samples/ids`), carried by a `Sample`
    attribute of the same name; a shard stores it for every sample or for none."""

    name: str = ""
    """The `Sample` attribute the writer reads and `read_samples` fills."""
    dataset: str = ""
    what: str = ""
    """What the strings are, in messages."""

    def check_values(self, texts: list[str]) -> list[str]:
        """`kd verify`: what is wrong with the stored strings (one per sample)."""
        return []
