"""A torch Dataset of planned batches over memory-mapped shards, and its collate.

Item i is the whole planned batch i, collated into tensors:
- `input_ids`, `attention_mask`: (B, T), right-padded with 0;
- `loss_rows` (N,): flat indices b * T + t of the positions whose logits
  predict a completion token. Prompt tokens have no soft labels, so they are
  never loss positions; completion token j of a sample (at position p + j) is
  predicted at position p + j - 1;
- `target_ids` (N,): the teacher's sampled tokens; `teacher_ids` (N, k) int64,
  `teacher_logprobs` (N, k) float32; `teacher_sampled_logprobs` (N,);
- with hidden states: `hidden_rows` (M,) flat indices of every real token and
  `teacher_hidden` {absolute teacher layer: (M, hidden) float32}.

Shard readers are opened lazily in the process that first reads (a DataLoader
worker after fork), never inherited: only paths and the small index pickle.

    >>> # ds = PlannedBatches(labels, plan); batch = ds[0]; batch["input_ids"].shape
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.label_set import LabelSet
from pipeline.shard_reader import ShardReader


class PlannedBatches(Dataset):
    """Batches of a plan, read from memmaps on demand."""

    def __init__(self, labels: LabelSet, plan: Sequence[np.ndarray], with_hidden: bool = False):
        self.paths = list(labels.shard_paths)
        self.shard, self.row = labels.shard, labels.row
        self.plan = list(plan)
        self.hidden_layers = list(labels.hidden_layers) if with_hidden else []
        self._readers: dict[int, ShardReader] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self.plan)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_readers": {}, "_pid": -1}

    def reader(self, shard: int) -> ShardReader:
        if self._pid != os.getpid():
            self._readers, self._pid = {}, os.getpid()
        if shard not in self._readers:
            self._readers[shard] = ShardReader(self.paths[shard])
        return self._readers[shard]

    def samples(self, i: int) -> list[dict[str, np.ndarray]]:
        return [self.reader(int(self.shard[j])).sample(int(self.row[j])) for j in self.plan[i]]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return collate(self.samples(i), self.hidden_layers)


def collate(samples: list[dict[str, Any]], hidden_layers: Sequence[int] = ()) -> dict[str, Any]:
    """Tensors of one batch; see the module docstring for every key."""
    width = max(len(s["token_ids"]) for s in samples)
    ids = np.zeros((len(samples), width), np.int64)
    mask = np.zeros((len(samples), width), np.int64)
    loss_rows, hidden_rows = [], []
    for b, s in enumerate(samples):
        n, p = len(s["token_ids"]), s["prompt_length"]
        ids[b, :n], mask[b, :n] = s["token_ids"], 1
        loss_rows.append(b * width + np.arange(p - 1, n - 1))
        hidden_rows.append(b * width + np.arange(n))
    cat = np.concatenate
    batch: dict[str, Any] = {
        "input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
        "loss_rows": torch.from_numpy(cat(loss_rows)),
        "target_ids": torch.from_numpy(cat([s["token_ids"][s["prompt_length"]:] for s in samples])
                                       .astype(np.int64)),
        "teacher_ids": torch.from_numpy(cat([s["topk_ids"] for s in samples]).astype(np.int64)),
        "teacher_logprobs": torch.from_numpy(cat([s["topk_logprobs"] for s in samples])
                                             .astype(np.float32)),
        "teacher_sampled_logprobs": torch.from_numpy(
            cat([s["sampled_logprobs"] for s in samples]).astype(np.float32)),
    }
    if hidden_layers:
        batch["hidden_rows"] = torch.from_numpy(cat(hidden_rows))
        batch["teacher_hidden"] = {
            layer: torch.from_numpy(cat([s[f"hidden_{layer}"] for s in samples]).astype(np.float32))
            for layer in hidden_layers}
    return batch


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = {k: v.to(device, non_blocking=True) for k, v in value.items()}
        else:
            out[key] = value.to(device, non_blocking=True)
    return out
