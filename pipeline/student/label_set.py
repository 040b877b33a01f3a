"""Open one or many teacher outputs as one training set: verified, consistent, indexed.

`open_label_set` runs `kd verify`'s own checks (`pipeline.store.verify.verify_outputs`)
on the directories: every manifest readable, every shard sound (naming the
shard and the broken check), the directories agreeing on teacher, tokenizer,
vocabulary, k and hidden layers (naming the field, both values and both
directories), no sample id held twice (naming the id and both files). It then
refuses an incomplete run and builds a compact per-sample index from what
verification already read: shard number, row, total length, prompt length,
label rows and a 64-bit hash of the prompt id (28 bytes per sample; no token or
label data). Generate-mode and score-mode outputs (schema v1 or v2) mix freely.

`verify="full"` reads every shard now (sha256, every value, ids and offsets).
`verify="lazy"` (the student's default) reads no shard content now: sizes and
root attributes per shard, ids and lengths from each output's index.parquet;
`LabelSet.open_shard` then verifies each shard in full at its first read in a
process (`pipeline.student.shard_gate`), remembering it in the verified-shard
cache, so start-up does not grow with the bytes of the labels.

    >>> from pipeline.student.label_set import open_label_set
    >>> # labels = open_label_set(["data/labels/demo"])
    >>> # len(labels), labels.top_k, labels.length[:3], labels.shard_paths[0]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.store.fingerprint import prompt_hashes
from pipeline.store.tokenizer_files import stored_tokenizer_dir
from pipeline.store.tokenizer_identity import TokenizerIdentity
from pipeline.store.shard_reader import ShardContents, ShardReader
from pipeline.store.verified_shards import DEFAULT_CACHE, VerifiedShards
from pipeline.store.verify import Verification, verify_outputs
from pipeline.student.shard_gate import Expected, ShardSource, open_verified
from schemas.student_config import VERIFY_MODES


class LabelSetError(ValueError):
    """The label directories cannot be trained from; the message names the directory or shard."""


@dataclass
class LabelSet:
    """Where every sample of the union lives, and what the outputs share.

    Sample i is row `row[i]` of shard file `shard_paths[shard[i]]`; it has
    `length[i]` tokens of which the first `prompt_length[i]` come before its
    first label, and `label_count[i]` label rows (every later token of a
    generated sample; a scored chat's assistant tokens).
    """

    shard_paths: list[str]
    teacher: str
    tokenizer_fingerprint: str
    vocab_size: int
    top_k: int
    hidden_layers: list[int]
    hidden_size: int
    """Width of the stored hidden rows the adapter targets: the teacher's, or the pca rank."""
    teacher_num_layers: int
    shard: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    length: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    prompt_length: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    label_count: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    prompt_hash: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    """`pipeline.store.fingerprint.stable_hash` of each sample's prompt id (what the split keys on)."""
    sources: list[ShardSource] = field(default_factory=list)
    """Per shard: its number and its output's manifest (what `open_shard` verifies it against)."""
    first_sample: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    """Shard s holds samples first_sample[s]:first_sample[s + 1] of the set."""
    verify: str = "full"
    """`full`: every shard was verified before the set opened; `lazy`: `open_shard` verifies it."""
    verify_cache: str = DEFAULT_CACHE
    tokenizer_identity: TokenizerIdentity | None = None
    """Vocabulary and special-token fingerprints (None for outputs written before them)."""
    tokenizer_dir: str = ""
    """The first output's stored tokenizer (`<out>/tokenizer/`), "" when it has none."""
    _verified: set[int] = field(default_factory=set, repr=False)
    _pid: int = -1

    def __len__(self) -> int:
        return len(self.shard)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_verified": set(), "_pid": -1}  # verified per process

    def open_shard(self, s: int) -> ShardReader:
        """A reader of shard s; under `lazy` the shard is verified in full first (once per process)."""
        if self.verify == "full":
            return ShardReader(self.shard_paths[s])
        if self._pid != os.getpid():  # a forked DataLoader worker verifies on its own account
            self._verified, self._pid = set(), os.getpid()
        if s in self._verified:
            return ShardReader(self.shard_paths[s])
        span = slice(int(self.first_sample[s]), int(self.first_sample[s + 1]))
        expected = Expected(self.length[span], self.prompt_length[span], self.label_count[span],
                            self.prompt_hash[span])
        reader = open_verified(self.sources[s], expected, VerifiedShards(self.verify_cache))
        self._verified.add(s)
        return reader



def refuse_unusable(dirs: Sequence[str | Path], found: Verification) -> None:
    """Refuse labels that fail verification, or that no student can train from yet."""
    if found.problems:
        listed = "\n".join(f"  {p}" for p in found.problems)
        named = " ".join(str(d) for d in dirs)
        raise LabelSetError(f"refusing to train from labels that fail verification "
                            f"(run kd verify {named}):\n{listed}")
    for d, m in found.manifests.items():
        if not m.complete:
            raise LabelSetError(f"{d}: the teacher run is not complete (manifest complete=false); "
                                "finish it by rerunning the same kd teacher-labels command")
        if not m.shards:
            raise LabelSetError(f"{d}: the manifest lists no shards")


def index_shard(shard: ShardContents) -> dict[str, np.ndarray]:
    """The per-sample index of one verified shard, from what verification read of it."""
    return {"row": np.arange(len(shard.ids), dtype=np.int32), "length": shard.lengths,
            "prompt_length": shard.prompt_lengths, "label_count": shard.label_counts,
            "prompt_hash": prompt_hashes(shard.ids)}


def open_label_set(dirs: Sequence[str | Path], verify: str = "full",
                   verify_cache: str = DEFAULT_CACHE) -> LabelSet:
    """Check and index the union of teacher output directories; raise LabelSetError if unfit.

    `verify="full"` hashes and scans every shard now; `"lazy"` checks only what
    is cheap now (manifests, sizes, attributes, ids and lengths from the index,
    unique ids) and leaves each shard's content to `LabelSet.open_shard`.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    if not dirs:
        raise LabelSetError("no label directories given")
    repeated = [d for i, d in enumerate(dirs) if str(d) in map(str, dirs[:i])]
    if repeated:
        raise LabelSetError(f"{repeated[0]}: directory given twice")
    found = verify_outputs(dirs, "full" if verify == "full" else "cheap")
    refuse_unusable(dirs, found)
    ref = next(iter(found.manifests.values()))
    labels = LabelSet([], ref.teacher, ref.tokenizer_fingerprint, ref.vocab_size, ref.top_k,
                      list(ref.hidden_layers), ref.stored_hidden_size, ref.teacher_num_layers,
                      verify=verify, verify_cache=verify_cache,
                      tokenizer_identity=ref.tokenizer_identity,
                      tokenizer_dir=str(stored_tokenizer_dir(next(iter(found.manifests))) or ""))
    numbers = {(str(Path(d) / m.shards[i].name)): (m, i)
               for d, m in found.manifests.items() for i in m.shards}
    parts: dict[str, list[np.ndarray]] = {}
    for shard in found.shards:
        part = index_shard(shard)
        part["shard"] = np.full(len(part["row"]), len(labels.shard_paths), np.int32)
        for key, array in part.items():
            parts.setdefault(key, []).append(array)
        manifest, index = numbers[str(shard.path)]
        labels.sources.append(ShardSource(str(shard.path), index, manifest))
        labels.shard_paths.append(str(shard.path))
    for key in ("shard", "row", "length", "prompt_length", "label_count", "prompt_hash"):
        setattr(labels, key, np.concatenate(parts[key]))
    labels.first_sample = np.concatenate([[0], np.cumsum([len(p) for p in parts["row"]])])
    return labels
