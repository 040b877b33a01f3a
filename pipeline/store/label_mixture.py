"""Mix several teachers' stored top-k labels for the same positions into one top-k label.

Each teacher i stores, per position, its top-k_i ids with raw logprobs; its tail
mass t_i = 1 - sum of its top-k probabilities is spread uniformly over the
V - k_i ids it did not store (the only assumption the stored label allows):

    p_i(v) = exp(logprob_i(v))        v in teacher i's top-k
           = t_i / (V - k_i)          otherwise

The candidates are the union U of the teachers' top-k ids. Two rules, weights w_i
summing to 1:

- `mean` (default; arithmetic mixture): m(v) = sum_i w_i p_i(v).
- `geometric` (weighted mean of logprobs, renormalised):
  m(v) = exp(sum_i w_i log p_i(v)) / Z, with Z summed over the whole vocabulary:
  the |U| candidates plus the V - |U| others, which all share the same value
  prod_i (t_i / (V - k_i))^w_i.

The k ids of U with the largest m(v) are kept (descending); the rest of the mass,
1 - sum of the kept m(v), is the mixture's tail, as for any stored label. The
logprob of the labelled token itself (`sampled_logprobs`) is exact per teacher,
so the mixture's is log sum_i w_i exp(s_i) (`mean`) or sum_i w_i s_i - log Z
(`geometric`).

    >>> import numpy as np
    >>> from pipeline.store.label_mixture import mix_labels
    >>> ids = [np.array([[1, 2]]), np.array([[2, 3]])]
    >>> lps = [np.log(np.array([[0.5, 0.3]])), np.log(np.array([[0.6, 0.2]]))]
    >>> out_ids, out_lps = mix_labels(ids, lps, [0.5, 0.5], vocab_size=10, k=2, rule="mean")
    >>> out_ids.tolist(), np.exp(out_lps).round(4).tolist()
    ([[2, 1]], [[0.45, 0.2625]])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from schemas.merge_config import MIX_RULES

# Stored float16 top-k probabilities can sum to a hair above 1; such a tail is zero.
MIN_TAIL = 0.0
ROWS_PER_BLOCK = 4096
"""Rows mixed at once: bounds the (rows, |U|, k) comparison arrays to a few MB."""


def tail_mass(logprobs: np.ndarray) -> np.ndarray:
    """(rows,) 1 - sum of the stored top-k probabilities, at least 0."""
    return np.maximum(1.0 - np.exp(logprobs.astype(np.float64)).sum(axis=1), MIN_TAIL)


def probs_at(ids: np.ndarray, logprobs: np.ndarray, cand: np.ndarray, vocab_size: int
             ) -> np.ndarray:
    """(rows, C) one teacher's probability of each candidate id: stored, or its spread tail."""
    match = cand[:, :, None] == ids[:, None, :]
    stored = (match * np.exp(logprobs.astype(np.float64))[:, None, :]).sum(axis=2)
    spread = tail_mass(logprobs) / (vocab_size - ids.shape[1])
    return np.where(match.any(axis=2), stored, spread[:, None])


def first_occurrence(cand: np.ndarray) -> np.ndarray:
    """(rows, C) True where the id has not appeared earlier in its row (the union U)."""
    c = cand.shape[1]
    earlier = np.tril(np.ones((c, c), bool), k=-1)
    return ~((cand[:, :, None] == cand[:, None, :]) & earlier).any(axis=2)


def mix_block(ids: Sequence[np.ndarray], logprobs: Sequence[np.ndarray], weights: np.ndarray,
              vocab_size: int, k: int, rule: str, sampled: Sequence[np.ndarray] | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    cand = np.concatenate([np.asarray(i, np.int64) for i in ids], axis=1)
    unique = first_occurrence(cand)
    probs = np.stack([probs_at(np.asarray(i, np.int64), lp, cand, vocab_size)
                      for i, lp in zip(ids, logprobs)])             # (teachers, rows, C)
    s = None if sampled is None else np.stack([np.asarray(x, np.float64) for x in sampled])
    with np.errstate(divide="ignore"):
        if rule == "mean":
            log_m = np.log(np.tensordot(weights, probs, axes=1))
            if s is not None:
                s = np.log(np.tensordot(weights, np.exp(s), axes=1))
        else:
            log_g = np.tensordot(weights, np.log(probs), axes=1)     # unnormalised, (rows, C)
            others = vocab_size - unique.sum(axis=1)
            spreads = np.stack([tail_mass(lp) / (vocab_size - np.shape(i)[1])
                                for i, lp in zip(ids, logprobs)])
            log_g_other = np.tensordot(weights, np.log(spreads), axes=1)
            terms = np.concatenate([np.where(unique, log_g, -np.inf),
                                    (np.log(others) + log_g_other)[:, None]], axis=1)
            log_z = np.logaddexp.reduce(terms, axis=1)
            log_m = log_g - log_z[:, None]
            if s is not None:
                s = np.tensordot(weights, s, axes=1) - log_z
    log_m = np.where(unique, log_m, -np.inf)
    # stable sort: ties keep the order of the union (first teacher's ids first)
    order = np.argsort(-log_m, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(cand, order, axis=1), np.take_along_axis(log_m, order, axis=1),
            s)


def mix_labels(ids: Sequence[np.ndarray], logprobs: Sequence[np.ndarray],
               weights: Sequence[float], vocab_size: int, k: int, rule: str = "mean",
               sampled: Sequence[np.ndarray] | None = None):
    """Mix the teachers' (rows, k_i) top-k ids and logprobs for the same rows.

    Returns (ids (rows, k) int64, logprobs (rows, k) float64, descending), and the
    mixed (rows,) logprob of each row's labelled token when `sampled` (each
    teacher's `sampled_logprobs`) is given. `k` must be at most |U| in every row
    (it is when k <= max k_i).
    """
    if rule not in MIX_RULES:
        raise ValueError(f"mix rule must be one of {', '.join(MIX_RULES)}, got {rule!r}")
    w = np.asarray(weights, np.float64)
    rows = len(ids[0])
    parts = [mix_block([i[sl] for i in ids], [lp[sl] for lp in logprobs], w, vocab_size, k, rule,
                       None if sampled is None else [x[sl] for x in sampled])
             for sl in (slice(a, a + ROWS_PER_BLOCK) for a in range(0, max(rows, 1), ROWS_PER_BLOCK))]
    out_ids = np.concatenate([p[0] for p in parts]) if rows else np.zeros((0, k), np.int64)
    out_lps = np.concatenate([p[1] for p in parts]) if rows else np.zeros((0, k))
    if sampled is None:
        return out_ids, out_lps
    return out_ids, out_lps, (np.concatenate([p[2] for p in parts]) if rows else np.zeros(0))
