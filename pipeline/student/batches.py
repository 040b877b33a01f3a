"""A torch Dataset of planned batches over memory-mapped shards, and its collate.

Item i is the whole planned batch i (use `DataLoader(ds, batch_size=None)`),
collated into tensors; flat indices are b * T + t into the (B, T) grid:
- `input_ids`, `attention_mask`: (B, T) int64, right-padded with 0;
- `loss_rows` (N,): the positions whose logits predict a labelled token. Label
  row j of sample i is for the token at position `labels/positions[j]` (every
  completion token of a generated sample; a scored chat's assistant tokens),
  predicted at the position before it, so
  `input_ids.view(-1)[loss_rows + 1] == target_ids`; unlabelled tokens get no loss;
- `target_ids` (N,): the labelled tokens (sampled by the teacher, or the data's
  own in score mode); `teacher_ids` (N, k) int64,
  `teacher_logprobs` (N, k) float32, `teacher_sampled_logprobs` (N,) float32;
- `student_sampled_logprobs` (N,) float32, only when a sample of the batch comes
  from an output with `labels/student_logprobs` (score mode on `kd student-samples`
  records): the sampling student's logprob of each target, NaN on rows of
  samples without it (the on-policy loss takes rho = 1 there);
- with `mask_prompt=False`: `prompt_rows` (P,) and `prompt_targets` (P,) for
  prompt tokens 1..p-1 (the tokens before the first label), hard labels only:
  the teacher scored no prompt token,
  so prompt tokens never get soft labels (`mask_prompt=True`, the default,
  leaves them out entirely);
- with `with_hidden=True` and stored hidden states: `hidden_rows` (M,) and
  `teacher_hidden` {absolute teacher layer: (M, hidden) float32}. The teacher
  state of token t aligns with the student state at position t; rows cover
  every real token (`hidden_on="all"`) or completion tokens only
  (`hidden_on="completion"`).

Shard readers are opened lazily in the process that reads (a DataLoader worker
after fork), never inherited, through `LabelSet.open_shard` (which verifies a
shard in full at its first read under `--verify lazy`): the dataset holds the
label set's small index and pickles without readers. Each reader holds a few memmaps (one file descriptor
each), so at most `max_open_shards` readers stay open per process.

    >>> # labels = open_label_set(["data/labels/demo"])
    >>> # plan = plan_batches(labels.length, np.arange(len(labels)), 4096, seed=0, epoch=0)
    >>> # ds = PlannedBatches(labels, plan)
    >>> # batch = ds[0]; batch["input_ids"].shape, batch["loss_rows"].shape
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.store.shard_reader import ShardReader
from pipeline.student.label_set import LabelSet

HiddenOn = Literal["all", "completion"]


class PlannedBatches(Dataset):
    """Batches of a plan, read from memmaps on demand."""

    def __init__(self, labels: LabelSet, plan: Sequence[np.ndarray], with_hidden: bool = False,
                 hidden_on: HiddenOn = "all", mask_prompt: bool = True, max_open_shards: int = 64):
        if hidden_on not in ("all", "completion"):
            raise ValueError(f"hidden_on must be 'all' or 'completion', got {hidden_on!r}")
        self.labels = labels
        self.shard, self.row = labels.shard, labels.row
        self.plan = list(plan)
        self.hidden_layers = list(labels.hidden_layers) if with_hidden else []
        self.hidden_on, self.mask_prompt = hidden_on, mask_prompt
        self.max_open_shards = max(1, max_open_shards)
        self._readers: OrderedDict[int, ShardReader] = OrderedDict()
        self._pid = -1

    def __len__(self) -> int:
        return len(self.plan)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_readers": OrderedDict(), "_pid": -1}

    def reader(self, shard: int) -> ShardReader:
        """This process's reader of a shard; readers opened before a fork are dropped."""
        if self._pid != os.getpid():
            self._readers, self._pid = OrderedDict(), os.getpid()
        if shard in self._readers:
            self._readers.move_to_end(shard)
        else:
            if len(self._readers) >= self.max_open_shards:
                self._readers.popitem(last=False)
            self._readers[shard] = self.labels.open_shard(shard)
        return self._readers[shard]

    def samples(self, i: int) -> list[dict[str, Any]]:
        return [self.reader(int(self.shard[j])).sample(int(self.row[j])) for j in self.plan[i]]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self.plan):
            raise IndexError(f"batch {i} is not in this plan of {len(self.plan)} batches")
        return collate(self.samples(i), self.hidden_layers, self.hidden_on, self.mask_prompt)


def collate(samples: list[dict[str, Any]], hidden_layers: Sequence[int] = (),
            hidden_on: HiddenOn = "all", mask_prompt: bool = True) -> dict[str, Any]:
    """Tensors of one batch (copies, never memmap views); see the module docstring for every key."""
    width = max(len(s["token_ids"]) for s in samples)
    ids = np.zeros((len(samples), width), np.int64)
    mask = np.zeros((len(samples), width), np.int64)
    loss_rows, prompt_rows, hidden_rows, hidden_spans = [], [], [], []
    for b, s in enumerate(samples):
        n, p = len(s["token_ids"]), s["prompt_length"]
        ids[b, :n], mask[b, :n] = s["token_ids"], 1
        loss_rows.append(b * width + np.asarray(s["positions"], np.int64) - 1)
        prompt_rows.append(b * width + np.arange(0, p - 1))
        first = 0 if hidden_on == "all" else p
        hidden_rows.append(b * width + np.arange(first, n))
        hidden_spans.append(slice(first, n))
    cat = np.concatenate
    batch: dict[str, Any] = {
        "input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
        "loss_rows": torch.from_numpy(cat(loss_rows)),
        "target_ids": torch.from_numpy(cat([s["token_ids"][np.asarray(s["positions"], np.int64)]
                                            for s in samples]).astype(np.int64)),
        "teacher_ids": torch.from_numpy(cat([s["topk_ids"] for s in samples]).astype(np.int64)),
        "teacher_logprobs": torch.from_numpy(cat([s["topk_logprobs"] for s in samples])
                                             .astype(np.float32)),
        "teacher_sampled_logprobs": torch.from_numpy(
            cat([s["sampled_logprobs"] for s in samples]).astype(np.float32)),
    }
    if any("student_logprobs" in s for s in samples):
        batch["student_sampled_logprobs"] = torch.from_numpy(cat([
            np.asarray(s["student_logprobs"], np.float32) if "student_logprobs" in s
            else np.full(len(s["positions"]), np.nan, np.float32) for s in samples]))
    if not mask_prompt:
        batch["prompt_rows"] = torch.from_numpy(cat(prompt_rows))
        batch["prompt_targets"] = torch.from_numpy(
            cat([s["token_ids"][1:s["prompt_length"]] for s in samples]).astype(np.int64))
    if hidden_layers:
        batch["hidden_rows"] = torch.from_numpy(cat(hidden_rows))
        batch["teacher_hidden"] = {
            layer: torch.from_numpy(cat([s[f"hidden_{layer}"][span]
                                         for s, span in zip(samples, hidden_spans)])
                                    .astype(np.float32))
            for layer in hidden_layers}
    return batch


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors (and the tensors of its dicts) on `device`."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = {k: v.to(device, non_blocking=True) for k, v in value.items()}
        else:
            out[key] = value.to(device, non_blocking=True)
    return out
