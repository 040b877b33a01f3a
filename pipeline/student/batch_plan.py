"""Evaluation split by prompt, token-budget batching, its per-rank share, and resumable order.

- `split_by_prompt`: a prompt goes to the held-out side when a hash of
  (seed, prompt id) falls below `eval_fraction`, so all samples of a prompt are
  on the same side and a prompt keeps its side when others are added. Rule for
  tiny sets: with `eval_fraction > 0` and at least two distinct prompts, if no
  prompt hashed below the fraction, the prompt with the lowest hash is held
  out; likewise if every prompt did, the one with the highest hash trains.
  Only then can adding prompts move a prompt (the one picked by that rule).
- `plan_batches`: length-bucketed padding, not packing: packing several
  samples into one row would need attention masks that stop at document
  boundaries, which not every model honours. Samples are shuffled by
  (seed, epoch), sorted by length inside windows of `window_batches` batches'
  worth, cut into batches whose padded size (longest length x count) stays
  within `batch_tokens`, and the batch order is shuffled again. A sample longer
  than `batch_tokens` gets a batch of its own and is never truncated (cutting
  it would silently drop the teacher's labels for its tail).
- `batches_for_rank`: rank r of w takes batches r, r + w, ... of the epoch's
  whole steps (w x grad_accum batches each); the remainder is dropped, so every
  rank takes the same number of optimizer steps (collectives never hang), no
  step straddles two epochs, and every layout of one global batch (2 ranks x 1
  or 1 rank x 2) takes the very same steps.

    >>> import numpy as np
    >>> from pipeline.student.batch_plan import plan_batches
    >>> [len(b) for b in plan_batches(np.array([10, 10, 10, 30]), np.arange(4), 40, 0, 0)]
    [1, 3]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.store.fingerprint import stable_hash

WINDOW_BATCHES = 64
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (x + seed * golden): a seeded, well-spread bijection of 64-bit keys."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(seed % 2**64) * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def prompt_keys(prompt_ids: np.ndarray | Sequence[str]) -> np.ndarray:
    """uint64 keys: `LabelSet.prompt_hash` as is, or prompt id strings hashed with stable_hash."""
    arr = np.asarray(prompt_ids)
    if arr.dtype.kind in "iu":
        return arr.astype(np.uint64)
    return np.fromiter((stable_hash(str(p)) for p in arr), np.uint64, len(arr))


def split_by_prompt(prompt_ids: np.ndarray | Sequence[str], eval_fraction: float, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, eval indices) of the samples, whole prompts on one side each."""
    if not 0 <= eval_fraction <= 1:
        raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    keys = prompt_keys(prompt_ids)
    unit = (mix64(keys, seed) >> np.uint64(11)).astype(np.float64) / 2.0**53
    held = unit < eval_fraction
    if 0 < eval_fraction and len(np.unique(keys)) > 1:
        if not held.any():
            held = keys == keys[np.argmin(unit)]
        elif held.all():
            held = keys != keys[np.argmax(unit)]
    return np.flatnonzero(~held), np.flatnonzero(held)


def bounded_eval(label_count: np.ndarray, eval_idx: np.ndarray,
                 prompt_ids: np.ndarray | Sequence[str], max_tokens: int, seed: int) -> np.ndarray:
    """The held-out samples one evaluation reads, sorted: the first, in a fixed order keyed by
    prompt hash and seed, whose labelled positions add up to at most `max_tokens` (0: all).

    The order is a seeded hash, so the chosen samples are an unbiased subset of
    the split, the same at every evaluation, across runs and resumes.
    """
    eval_idx = np.asarray(eval_idx, np.int64)
    if max_tokens == 0:
        return eval_idx
    keys = mix64(prompt_keys(prompt_ids)[eval_idx], seed + 1)
    order = eval_idx[np.lexsort((eval_idx, keys))]
    fits = np.cumsum(label_count[order].astype(np.int64)) <= max_tokens
    return np.sort(order[fits])


def plan_batches(lengths: np.ndarray, indices: np.ndarray, batch_tokens: int, seed: int,
                 epoch: int, window_batches: int = WINDOW_BATCHES) -> list[np.ndarray]:
    """Batches (int64 arrays of sample indices) covering `indices` exactly once, in train order."""
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be at least 1, got {batch_tokens}")
    indices = np.asarray(indices, np.int64)
    rng = np.random.default_rng([seed % 2**63, epoch])
    order = indices[rng.permutation(len(indices))]
    mean = max(float(lengths[indices].mean()) if len(indices) else 1.0, 1.0)
    window = max(int(window_batches * batch_tokens / mean), 1)
    batches: list[np.ndarray] = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        batches += cut_sorted(chunk[np.argsort(lengths[chunk], kind="stable")], lengths,
                              batch_tokens)
    return [batches[j] for j in rng.permutation(len(batches))]


def cut_sorted(sorted_idx: np.ndarray, lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Cut length-ascending samples into batches with longest x count <= batch_tokens."""
    batches, start = [], 0
    for end in range(1, len(sorted_idx) + 1):
        # Sorted ascending, so the newest sample is the longest of sorted_idx[start:end].
        if end - start > 1 and int(lengths[sorted_idx[end - 1]]) * (end - start) > batch_tokens:
            batches.append(sorted_idx[start:end - 1])
            start = end - 1
    if start < len(sorted_idx):
        batches.append(sorted_idx[start:])
    return batches


def batches_for_rank(batches: list[np.ndarray], rank: int, world_size: int,
                     grad_accum: int = 1) -> list[np.ndarray]:
    """This rank's disjoint, equal-count share of an epoch's whole steps (remainder dropped)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    usable = len(batches) - len(batches) % (world_size * grad_accum)
    return batches[rank:usable:world_size]
