"""Open one or many teacher outputs as one training set: verified, consistent, indexed.

`open_label_set` reads each directory's manifest (refusing a missing or
incomplete one, naming the directory), verifies every shard unless told not
to (refusing on any problem, naming the shard and the broken check), checks
that all directories agree on teacher, tokenizer, vocabulary, k and hidden
layers (naming the field, both values and both directories) and that no
sample id appears twice (naming the id and both directories), then builds a
compact per-sample index from the shards' small offset arrays: shard number,
row, total length, prompt length and a 64-bit hash of the prompt id. No token
or label data is read; the index costs 24 bytes per sample.

    >>> from pipeline.label_set import open_label_set
    >>> # labels = open_label_set(["data/labels/demo"])
    >>> # len(labels), labels.top_k, labels.length[:3], labels.shard_paths[0]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.manifest import Manifest, ManifestError, read_manifest
from pipeline.seeding import stable_hash
from pipeline.shard_reader import ShardReader
from pipeline.verify import check_compatible, verify_output


class LabelSetError(ValueError):
    """The label directories cannot be trained from; the message names the directory or shard."""


@dataclass
class LabelSet:
    """Where every sample of the union lives, and what the outputs share.

    Sample i is row `row[i]` of shard file `shard_paths[shard[i]]`; it has
    `length[i]` tokens of which the first `prompt_length[i]` are the prompt,
    so it has `length[i] - prompt_length[i]` label rows.
    """

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
    """`pipeline.seeding.stable_hash` of each sample's prompt id (what the split keys on)."""

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def completion_tokens(self) -> np.ndarray:
        return self.length - self.prompt_length


def read_manifests(dirs: Sequence[str | Path]) -> dict[str, Manifest]:
    """Every directory's manifest, refusing missing, incomplete, empty or disagreeing ones."""
    if not dirs:
        raise LabelSetError("no label directories given")
    manifests: dict[str, Manifest] = {}
    for d in dirs:
        try:
            m = read_manifest(d)
        except ManifestError as exc:
            raise LabelSetError(f"{d}: cannot read labels: {exc}") from exc
        if not m.complete:
            raise LabelSetError(f"{d}: the teacher run is not complete (manifest complete=false); "
                                "finish it by rerunning the same kd teacher-labels command")
        if not m.shards:
            raise LabelSetError(f"{d}: the manifest lists no shards")
        if str(d) in manifests:
            raise LabelSetError(f"{d}: directory given twice")
        manifests[str(d)] = m
    if len(manifests) > 1:
        problems = check_compatible(manifests)
        if problems:
            # check_compatible's detail reads "<field> is <value> but <other dir> has <value>".
            p = problems[0]
            raise LabelSetError(f"{p.where}: outputs cannot be trained together: {p.detail}")
    return manifests


def verify_dirs(dirs: Sequence[str | Path]) -> None:
    """Run `kd verify`'s checks on each directory; refuse naming the shard and the check."""
    for d in dirs:
        _, problems = verify_output(d)
        if problems:
            listed = "\n".join(f"  {Path(d) / p.where}: {p.check}: {p.detail}" for p in problems)
            raise LabelSetError(f"{d}: refusing to train from labels that fail verification "
                                f"(run kd verify {d}):\n{listed}")


def index_shard(reader: ShardReader) -> dict[str, np.ndarray]:
    """The per-sample index of one shard, from its offsets and ids only."""
    n = len(reader)
    prompt_ids, sample_index = [], np.empty(n, np.int64)
    for i, sid in enumerate(reader.strings("samples/ids")):
        prompt, index = sid.rsplit("/", 1)
        prompt_ids.append(prompt)
        sample_index[i] = int(index)
    return {"row": np.arange(n, dtype=np.int32),
            "length": np.diff(reader.arrays["samples/offsets"]).astype(np.int32),
            "prompt_length": np.asarray(reader.arrays["samples/prompt_lengths"], np.int32),
            "prompt_hash": np.fromiter((stable_hash(p) for p in prompt_ids), np.uint64, n),
            "sample_index": sample_index}


def refuse_duplicates(labels: LabelSet, sample_index: np.ndarray) -> None:
    """Refuse a sample id held twice; ids are compared as (prompt hash, sample index)."""
    order = np.lexsort((sample_index, labels.prompt_hash))
    h, s = labels.prompt_hash[order], sample_index[order]
    same = np.flatnonzero((h[1:] == h[:-1]) & (s[1:] == s[:-1]))
    pairs = [sorted((int(order[p]), int(order[p + 1]))) for p in same]
    for a, b in sorted(pairs, key=lambda ab: ab[1]):  # report the first repeat in reading order
        id_a, id_b = (sample_id(labels, i) for i in (a, b))
        if id_a != id_b:
            continue  # a 64-bit hash collision of two distinct prompt ids, not a duplicate
        path_a, path_b = (Path(labels.shard_paths[labels.shard[i]]) for i in (a, b))
        raise LabelSetError(f"sample id {id_a!r} is in both {path_a.parent} ({path_a.name}) and "
                            f"{path_b.parent} ({path_b.name}); teacher outputs trained together "
                            "must hold disjoint prompts")


def sample_id(labels: LabelSet, i: int) -> str:
    """The id string of sample i (reads the shard's id list: for messages, not hot paths)."""
    return ShardReader(labels.shard_paths[labels.shard[i]]).strings("samples/ids")[labels.row[i]]


def open_label_set(dirs: Sequence[str | Path], verify: bool = True) -> LabelSet:
    """Check and index the union of teacher output directories; raise LabelSetError if unfit."""
    manifests = read_manifests(dirs)
    if verify:
        verify_dirs(dirs)
    ref = next(iter(manifests.values()))
    labels = LabelSet([], ref.teacher, ref.tokenizer_fingerprint, ref.vocab_size, ref.top_k,
                      list(ref.hidden_layers), ref.hidden_size, ref.teacher_num_layers)
    parts: dict[str, list[np.ndarray]] = {}
    for d, m in manifests.items():
        for index in sorted(m.shards):
            path = Path(d) / m.shards[index].name
            part = index_shard(ShardReader(path))
            part["shard"] = np.full(len(part["row"]), len(labels.shard_paths), np.int32)
            for key, array in part.items():
                parts.setdefault(key, []).append(array)
            labels.shard_paths.append(str(path))
    for key in ("shard", "row", "length", "prompt_length", "prompt_hash"):
        setattr(labels, key, np.concatenate(parts[key]))
    refuse_duplicates(labels, np.concatenate(parts["sample_index"]))
    return labels
