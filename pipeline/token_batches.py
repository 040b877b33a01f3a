"""Evaluation split by prompt, token-budget batching and its per-rank share.

- `split_by_prompt`: a sample goes to the held-out side when a hash of
  (seed, prompt id) falls below `eval_fraction`, so all samples of a prompt are
  on the same side and a prompt keeps its side when others are added.
- `plan_batches`: length-bucketed padding, not packing (packing would need
  attention masks across documents that not every model honours). Samples are
  shuffled by (seed, epoch), sorted by length inside windows of 64 batches'
  worth, cut into batches whose padded size stays within `batch_tokens` (a
  longer sample gets a batch of its own, never truncated), and the batch order
  is shuffled again.
- `batches_for_rank`: rank r of w takes batches r, r + w, ...; the remainder is
  dropped so every rank takes the same number of steps.

    >>> import numpy as np
    >>> from pipeline.token_batches import plan_batches
    >>> [len(b) for b in plan_batches(np.array([10, 10, 10, 30]), np.arange(4), 40, 0, 0)]
    [1, 3]
"""

from __future__ import annotations

import numpy as np

WINDOW_BATCHES = 64


def split_by_prompt(prompt_hash: np.ndarray, eval_fraction: float, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, eval indices); at least one prompt held out when there are two or more."""
    mixed = (prompt_hash ^ np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)) * np.uint64(0xBF58476D1CE4E5B9)
    unit = (mixed >> np.uint64(11)).astype(np.float64) / 2.0**53
    held = unit < eval_fraction
    if not held.any() and len(np.unique(prompt_hash)) > 1:
        held = prompt_hash == prompt_hash[np.argmin(unit)]
    return np.flatnonzero(~held), np.flatnonzero(held)


def plan_batches(lengths: np.ndarray, indices: np.ndarray, batch_tokens: int, seed: int,
                 epoch: int) -> list[np.ndarray]:
    """Batches (arrays of sample indices) covering `indices` exactly once."""
    rng = np.random.default_rng([seed, epoch])
    order = indices[rng.permutation(len(indices))]
    mean = max(float(lengths[indices].mean()) if len(indices) else 1.0, 1.0)
    window = max(int(WINDOW_BATCHES * batch_tokens / mean), 1)
    batches: list[np.ndarray] = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        current: list[int] = []
        longest = 0
        for i in chunk:
            longest_if = max(longest, int(lengths[i]))
            if current and longest_if * (len(current) + 1) > batch_tokens:
                batches.append(np.asarray(current))
                current, longest_if = [], int(lengths[i])
            current.append(int(i))
            longest = longest_if
        if current:
            batches.append(np.asarray(current))
    return [batches[j] for j in rng.permutation(len(batches))]


def batches_for_rank(batches: list[np.ndarray], rank: int, world_size: int) -> list[np.ndarray]:
    """This rank's disjoint, equal-count share of the batches."""
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]
