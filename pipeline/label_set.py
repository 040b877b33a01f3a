"""Open one or many teacher outputs as one training set: verified, consistent, indexed.

`open_label_set` reads each directory's manifest (refusing an incomplete or
unverifiable one, naming the shard and the broken check), checks that all
agree on teacher, tokenizer, vocabulary, k and hidden layers and hold
disjoint samples, and builds a compact per-sample index (shard, row, lengths,
a 64-bit hash of the prompt id) from the shards' small offset arrays. No
token or label data is read here; memory is a few integers per sample.

    >>> from pipeline.label_set import open_label_set
    >>> # labels = open_label_set(["data/labels/demo"]); len(labels), labels.top_k
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.manifest import Manifest, ManifestError, read_manifest
from pipeline.seeding import stable_hash
from pipeline.shard_reader import ShardReader
from pipeline.verify import check_compatible, describe, verify_outputs


class LabelSetError(ValueError):
    """The label directories cannot be trained from; the message names the directory or shard."""


@dataclass
class LabelSet:
    """Where every sample of the union lives, and what the outputs share."""

    shard_paths: list[str]
    teacher: str
    tokenizer_fingerprint: str
    vocab_size: int
    top_k: int
    hidden_layers: list[int]
    hidden_size: int
    teacher_num_layers: int
    shard: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    length: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    prompt_length: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    prompt_hash: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def completion_tokens(self) -> np.ndarray:
        return self.length - self.prompt_length


def read_manifests(dirs: Sequence[str | Path], verify: bool) -> dict[str, Manifest]:
    if verify:
        manifests, problems = verify_outputs(dirs)
        if problems:
            raise LabelSetError(f"refusing to train from unverified labels:\n{describe(problems)}")
    else:
        try:
            manifests = {str(d): read_manifest(d) for d in dirs}
        except ManifestError as exc:
            raise LabelSetError(str(exc)) from exc
        problems = check_compatible(manifests) if len(manifests) > 1 else []
        if problems:
            raise LabelSetError(describe(problems))
    for d, m in manifests.items():
        if not m.complete:
            raise LabelSetError(f"{d}: the teacher run is not complete (manifest complete=false); "
                                "finish it by rerunning the same kd teacher-labels command")
        if not m.shards:
            raise LabelSetError(f"{d}: no shards")
    return manifests


def open_label_set(dirs: Sequence[str | Path], verify: bool = True) -> LabelSet:
    """Verify (unless told not to) and index the union of teacher output directories."""
    manifests = read_manifests(dirs, verify)
    ref = next(iter(manifests.values()))
    labels = LabelSet([], ref.teacher, ref.tokenizer_fingerprint, ref.vocab_size, ref.top_k,
                      list(ref.hidden_layers), ref.hidden_size, ref.teacher_num_layers)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("shard", "row", "length", "prompt_length",
                                                          "prompt_hash")}
    for d, m in manifests.items():
        for index in sorted(m.shards):
            path = Path(d) / m.shards[index].name
            reader = ShardReader(path)
            n = len(reader)
            parts["shard"].append(np.full(n, len(labels.shard_paths), np.int32))
            parts["row"].append(np.arange(n, dtype=np.int32))
            parts["length"].append(np.diff(reader.arrays["samples/offsets"]).astype(np.int32))
            parts["prompt_length"].append(np.asarray(reader.arrays["samples/prompt_lengths"], np.int32))
            parts["prompt_hash"].append(np.fromiter(
                (stable_hash(sid.rsplit("/", 1)[0]) for sid in reader.strings("samples/ids")),
                np.uint64, n))
            labels.shard_paths.append(str(path))
    for key, arrays in parts.items():
        setattr(labels, key, np.concatenate(arrays))
    return labels
