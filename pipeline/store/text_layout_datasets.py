"""The text layout datasets of a shard (schema v3): names, dtypes, packing, reading, checks.

Two datasets per shard carry what a student of another tokenizer needs
(`pipeline.store.text_layout` is the contract):

- `samples/token_byte_lengths` (tokens,): the UTF-8 byte length of each token of
  `samples/token_ids`, 0 for a special token; uint8, or uint16 when a shard holds a
  token longer than 255 bytes.
- `samples/text_regions` (samples,): one UTF-8 JSON string per sample
  (`encode_regions`): the byte ranges of its messages, prompt/completion or text.

Kept apart from the other codecs so that it can move into a codec registry whole:
the writer, reader and `kd verify` call the four hooks below and nothing else.

    >>> import numpy as np
    >>> from pipeline.store.text_layout_datasets import byte_length_dtype, first_uncovered_token
    >>> byte_length_dtype([3, 0, 255]).name, byte_length_dtype([256]).name
    ('uint8', 'uint16')
    >>> from pipeline.store.text_layout import TextRegion
    >>> # tokens of 2, 0 (special), 3 bytes; the labelled region is bytes 2..5: token 2 needs a row
    >>> first_uncovered_token([2, 0, 3], [TextRegion("completion", 2, 5, True)], positions=[1])
    2
    >>> first_uncovered_token([2, 0, 3], [TextRegion("completion", 2, 5, True)], positions=[2]) is None
    True
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.store.text_layout import (TextRegion, byte_ends, decode_regions, encode_regions,
                                       token_bytes_table)

BYTE_LENGTHS = "samples/token_byte_lengths"
REGIONS = "samples/text_regions"
LAYOUT_DATASETS = (BYTE_LENGTHS, REGIONS)
BYTE_LENGTH_DTYPES = ("uint8", "uint16")
TOKENIZER_DIR = "tokenizer"
"""`<out>/tokenizer/`: the teacher's tokenizer files, when the output carries them."""
ADD_COMMAND = "kd add-text-layout"
"""The command that adds the datasets to an output written before schema v3."""


def byte_length_dtype(lengths: Sequence[int]) -> np.dtype:
    """uint8 when every token fits in 255 bytes, else uint16 (no token is 64 KiB long)."""
    longest = int(np.max(lengths, initial=0))
    if longest > np.iinfo(np.uint16).max:
        raise ValueError(f"a token of {longest} bytes does not fit {BYTE_LENGTHS} (uint16)")
    return np.dtype(np.uint8) if longest <= np.iinfo(np.uint8).max else np.dtype(np.uint16)


def carries_layout(samples: Sequence[Any]) -> bool:
    """Whether the samples carry a text layout: all of them or none (ValueError otherwise)."""
    carried = [s.token_byte_lengths is not None and s.text_regions is not None for s in samples]
    if any(carried) and not all(carried):
        missing = samples[carried.index(False)].sample_id
        raise ValueError(f"sample {missing} lacks the text layout the other samples of its shard "
                         "carry: a shard stores it for every sample or none")
    return bool(carried) and all(carried)


def pack_byte_lengths(samples: Sequence[Any]) -> dict[str, np.ndarray]:
    """{BYTE_LENGTHS: lengths} for `pack_samples`, or {} when the samples carry no layout."""
    if not carries_layout(samples):
        return {}
    for s in samples:
        if len(s.token_byte_lengths) != len(s.token_ids):
            raise ValueError(f"sample {s.sample_id}: {len(s.token_byte_lengths)} byte lengths for "
                             f"{len(s.token_ids)} tokens")
    lengths = np.concatenate([np.asarray(s.token_byte_lengths, np.int64) for s in samples])
    return {BYTE_LENGTHS: lengths.astype(byte_length_dtype(lengths))}


def write_regions(f: Any, samples: Sequence[Any], text_dtype: Any) -> None:
    """Write REGIONS into the open h5py file `f` (nothing when the samples carry no layout)."""
    if carries_layout(samples):
        f.create_dataset(REGIONS, data=[encode_regions(s.text_regions) for s in samples],
                         dtype=text_dtype)


def read_region_strings(path: str | Path) -> list[str] | None:
    """Every sample's encoded regions (JSON, `decode_regions`) of one shard file, or None when
    it has no layout: one read, decoded per sample only when asked for."""
    import h5py

    with h5py.File(path, "r") as f:
        if REGIONS not in f:
            return None
        raw = f[REGIONS][()]
    return [s.decode("utf-8") if isinstance(s, bytes) else s for s in raw]


def token_spans(byte_lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) byte offsets of each token in the sample's teacher text."""
    ends = byte_ends(byte_lengths)
    return ends - np.asarray(byte_lengths, np.int64), ends


def lengths_of_ids(id_lengths: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """(tokens,) byte length of each id; an id past the tokenizer (a model vocabulary padded
    beyond it) has no text, like a special token."""
    ids = np.asarray(ids, np.int64)
    known = ids < len(id_lengths)
    return np.where(known, id_lengths[np.where(known, ids, 0)], 0)


def labelled_region_tokens(byte_lengths: Sequence[int], regions: Sequence[TextRegion]) -> np.ndarray:
    """Positions of the tokens with at least one byte inside a labelled region."""
    starts, ends = token_spans(byte_lengths)
    inside = np.zeros(len(starts), bool)
    for r in regions:
        if r.labelled:
            inside |= (starts < r.end) & (ends > r.start) & (ends > starts)
    return np.flatnonzero(inside)


def first_uncovered_token(byte_lengths: Sequence[int], regions: Sequence[TextRegion],
                          positions: Sequence[int]) -> int | None:
    """The first token with bytes in a labelled region but no label row; None if there is none.

    The invariant: every token whose byte span `[start, end)` has at least one byte
    inside a labelled region `[r.start, r.end)` (so a special token, 0 bytes, never)
    is at one of `positions`.
    """
    missing = np.setdiff1d(labelled_region_tokens(byte_lengths, regions), np.asarray(positions))
    return int(missing[0]) if len(missing) else None


def region_errors(regions: Sequence[TextRegion], text_bytes: int) -> str | None:
    """What is wrong with one sample's regions: unsorted, overlapping, outside the text."""
    end = 0
    for j, r in enumerate(regions):
        if not 0 <= r.start <= r.end <= text_bytes:
            return f"region {j} ({r.role}) spans bytes {r.start}..{r.end}, outside the text 0..{text_bytes}"
        if r.start < end:
            return f"region {j} ({r.role}) starts at byte {r.start}, before the previous one ends ({end})"
        end = r.end
    return None


@lru_cache(maxsize=4)
def _teacher_byte_lengths(source: str) -> np.ndarray:
    from transformers import AutoTokenizer

    table, _ = token_bytes_table(AutoTokenizer.from_pretrained(source, local_files_only=True))
    return np.asarray([len(b) for b in table], np.int64)


def teacher_tokenizer_source(out_dir: str | Path, teacher: str) -> str | None:
    """Where the teacher's tokenizer is read from: `<out>/tokenizer/`, else the teacher path."""
    for candidate in (Path(out_dir) / TOKENIZER_DIR, Path(teacher)):
        if (candidate / "tokenizer.json").is_file() or (candidate / "tokenizer_config.json").is_file():
            return str(candidate)
    return None


def teacher_byte_lengths(out_dir: str | Path, teacher: str) -> tuple[np.ndarray | None, str]:
    """(every id's byte length from the teacher's tokenizer, where it came from), or
    (None, why not) when no tokenizer is reachable."""
    source = teacher_tokenizer_source(out_dir, teacher)
    if source is None:
        return None, (f"no tokenizer at {Path(out_dir) / TOKENIZER_DIR} or {teacher}: the byte "
                      f"lengths were not checked against the token ids")
    try:
        return _teacher_byte_lengths(source), source
    except (OSError, ValueError) as exc:
        return None, f"the tokenizer at {source} did not load ({exc}): ids not checked"


def layout_errors(reader: Any, ids: Sequence[str], required: bool,
                  id_lengths: np.ndarray | None) -> list[str]:
    """Every check of a shard's text layout, as messages naming the sample id and position.

    `required`: the manifest promises the layout. `id_lengths`: every id's byte
    length in the teacher's tokenizer (None: that check is skipped).
    """
    a = reader.arrays
    present = [BYTE_LENGTHS in a, reader.region_strings() is not None]
    if not any(present):  # a shard whose samples were all dropped has nothing to lay out
        return [f"{BYTE_LENGTHS} and {REGIONS} are missing (add them with {ADD_COMMAND})"] \
            if required and len(ids) else []
    if not all(present):
        return [f"{LAYOUT_DATASETS[present.index(False)]} is missing; the layout needs both datasets"]
    lengths, tokens = a[BYTE_LENGTHS], len(a["samples/token_ids"])
    if lengths.shape != (tokens,) or lengths.dtype.name not in BYTE_LENGTH_DTYPES:
        return [f"{BYTE_LENGTHS} has shape {lengths.shape}, dtype {lengths.dtype}; expected "
                f"({tokens},) uint8 or uint16, one per token"]
    strings = reader.region_strings()
    if len(strings) != len(ids):
        return [f"{REGIONS} holds {len(strings)} entries for {len(ids)} samples"]
    regions = []
    for sid, text in zip(ids, strings):
        try:
            regions.append(decode_regions(text))
        except (ValueError, TypeError) as exc:
            return [f"sample {sid}: {REGIONS} entry is not a region list: {exc}"]
    if id_lengths is not None:
        token_ids = np.asarray(a["samples/token_ids"], np.int64)
        expected = lengths_of_ids(id_lengths, token_ids)
        wrong = expected != lengths
        if wrong.any():
            t = int(np.argmax(wrong))
            i = int(np.searchsorted(a["samples/offsets"], t, side="right") - 1)
            p = t - int(a["samples/offsets"][i])
            return [f"sample {ids[i]} token position {p}: id {int(token_ids[t])} is "
                    f"{int(expected[t])} bytes in the teacher's tokenizer, {BYTE_LENGTHS} "
                    f"says {int(lengths[t])}"]
    return sample_layout_errors(reader, ids, regions)


def sample_layout_errors(reader: Any, ids: Sequence[str], regions: list[list[TextRegion]]) -> list[str]:
    """Per sample: regions sorted, disjoint, inside the text; labelled regions covered by labels."""
    a = reader.arrays
    offsets, label_offsets = a["samples/offsets"], a["labels/offsets"]
    for i, sample_regions in enumerate(regions):
        lengths = np.asarray(a[BYTE_LENGTHS][offsets[i]:offsets[i + 1]], np.int64)
        error = region_errors(sample_regions, int(lengths.sum()))
        if error:
            return [f"sample {ids[i]}: {error}"]
        positions = a["labels/positions"][label_offsets[i]:label_offsets[i + 1]]
        t = first_uncovered_token(lengths, sample_regions, positions)
        if t is not None:
            return [f"sample {ids[i]} token position {t}: its bytes lie in a labelled region but "
                    "it has no label row"]
    return []


def rewrite_with_layout(path: str | Path, byte_lengths: np.ndarray,
                        regions: Sequence[Sequence[TextRegion]], schema_version: int) -> None:
    """Replace shard `path` by a copy holding the text layout, stamped `schema_version`.

    Every dataset and attribute is copied as stored (codes stay codes: nothing is
    decoded and encoded again); written under a temporary name, fsynced and
    renamed, as every file of an output (`pipeline.store.atomic_commit.commit_path`).
    """
    import os

    import h5py

    from pipeline.store.atomic_commit import commit_path, temp_path_for

    path = Path(path)
    tmp = temp_path_for(path)
    text = h5py.string_dtype("utf-8")
    try:
        with h5py.File(path, "r") as src, h5py.File(tmp, "w", libver="latest",
                                                    track_order=True) as dst:
            dst.attrs.update(dict(src.attrs))
            dst.attrs["schema_version"] = schema_version
            names: list[str] = []
            src.visititems(lambda name, obj: names.append(name)
                           if isinstance(obj, h5py.Dataset) else None)
            for name in names:
                data = src[name][()]
                dst.create_dataset(name, data=data, dtype=text if data.dtype.kind == "O" else None)
            dst.create_dataset(BYTE_LENGTHS, data=byte_lengths.astype(byte_length_dtype(byte_lengths)))
            dst.create_dataset(REGIONS, data=[encode_regions(r) for r in regions], dtype=text)
        commit_path(tmp, path)
    finally:
        if tmp.exists():
            os.unlink(tmp)
