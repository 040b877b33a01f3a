"""Per-token weights of the soft loss for long-tail vocabularies (`--rare-token-weight CAP`).

Computed once from the shards: count how often each token is the target (the
teacher's sampled token) over the training split's completion positions.
With N positions, D distinct targets and c_v the count of token v, a token of
average frequency has N / (D * c_v) = 1, so

    w_v = min(CAP, max(1, N / (D * c_v)))

leaves every token at least as frequent as the average at weight 1 and lifts
rarer ones in inverse proportion to their frequency, up to CAP. A position's
soft loss is multiplied by the weight of its target token; tokens never seen
as a target keep weight 1 (they never are a position's target in training).

    >>> import numpy as np
    >>> from pipeline.student.token_weights import weights_from_counts
    >>> [round(float(w), 4) for w in weights_from_counts(np.array([6, 3, 1, 0]), cap=2.0)]   # N 10, D 3
    [1.0, 1.1111, 2.0, 1.0]
"""

from __future__ import annotations

import numpy as np

from pipeline.student.label_set import LabelSet


def target_counts(labels: LabelSet, samples: np.ndarray) -> np.ndarray:
    """(vocab,) int64: how often each token is a completion target in `samples`."""
    counts = np.zeros(labels.vocab_size, np.int64)
    for shard in np.unique(labels.shard[samples]):
        reader = labels.open_shard(int(shard))
        for i in samples[labels.shard[samples] == shard]:
            sample = reader.sample(int(labels.row[i]))
            targets = np.asarray(sample["token_ids"][sample["prompt_length"]:], np.int64)
            counts += np.bincount(targets, minlength=labels.vocab_size)
    return counts


def weights_from_counts(counts: np.ndarray, cap: float) -> np.ndarray:
    """(vocab,) float32 weights min(cap, max(1, N / (D * c_v))); unseen tokens 1."""
    counts = np.asarray(counts, np.float64)
    seen = counts > 0
    weights = np.ones(counts.shape, np.float64)
    if seen.any():
        ratio = counts.sum() / (seen.sum() * counts[seen])
        weights[seen] = np.clip(ratio, 1.0, cap)
    return weights.astype(np.float32)


def rare_token_weights(labels: LabelSet, samples: np.ndarray, cap: float) -> np.ndarray:
    """The soft-loss weight of every token id, from the targets of the training samples."""
    return weights_from_counts(target_counts(labels, samples), cap)
