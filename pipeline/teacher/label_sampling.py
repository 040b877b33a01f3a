"""`--label-kind sampled`: draw N tokens per labelled position from the teacher's raw
(T = 1) distribution and keep the distinct ids with their counts.

The engine gives the top-K logprobs of each position (K = max(256, --top-k), see
`TeacherConfig.engine_k`), not the full vocabulary, so a draw lands on one of the K ids
with its probability or, with the remaining mass `1 - sum(p)`, in one tail bucket whose
count is stored without an id. counts / N is then an unbiased estimate of the teacher's
probabilities of the K ids and of the tail mass. Draws are seeded by (--seed, sample id),
so a rerun or a resumed run stores the same counts whatever the shard order.

    >>> import numpy as np
    >>> ids = np.array([[4, 8, 1]]); lps = np.log(np.array([[0.5, 0.3, 0.1]]))
    >>> out_ids, out_lps = draw_rows(ids, lps, 50, np.random.default_rng(0))
    >>> out_ids.shape, int(np.rint(np.exp(out_lps[np.isfinite(out_lps)]) * 50).sum()) <= 50
    ((1, 50), True)
"""

from __future__ import annotations

import zlib

import numpy as np

from pipeline.store.sample import Sample
from pipeline.store.codecs.kind_sampled import padded_rows

SOURCE_K = 256
"""The top-K the engine is asked for when labels are sampled (at least this many)."""


def draw_counts(probs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, K + 1) multinomial counts of n draws per row over K ids and the tail (last)."""
    p = np.asarray(probs, np.float64)
    tail = np.clip(1.0 - p.sum(1, keepdims=True), 0.0, None)
    full = np.concatenate([p, tail], axis=1)
    full /= full.sum(1, keepdims=True)  # float rounding only
    return rng.multinomial(n, full)


def draw_rows(topk_ids: np.ndarray, topk_logprobs: np.ndarray, n: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Top-K rows -> the sampled rows in memory form ((rows, n) ids, log(count / n), -inf pads),
    distinct ids most drawn first."""
    counts = draw_counts(np.exp(np.asarray(topk_logprobs, np.float64)), n, rng)[:, :-1]
    order = np.argsort(-counts, axis=1, kind="stable")
    counts = np.take_along_axis(counts, order, axis=1)
    ids = np.take_along_axis(np.asarray(topk_ids), order, axis=1)
    keep = counts > 0
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(keep.sum(1), out=offsets[1:])
    return padded_rows(offsets, ids[keep], counts[keep], n)


def sample_seed(seed: int, sample_id: str) -> list[int]:
    """The draw seed of one sample: the run's seed and a stable hash of its id."""
    return [seed, zlib.crc32(sample_id.encode())]


def sampled_sample(s: Sample, n: int, seed: int) -> Sample:
    """A copy of `s` whose top-K rows are replaced by n draws per position."""
    ids, lps = draw_rows(s.topk_ids, s.topk_logprobs, n,
                         np.random.default_rng(sample_seed(seed, s.sample_id)))
    return Sample(s.prompt_id, s.index, s.prompt_token_ids, s.completion_token_ids, ids, lps,
                  s.sampled_logprobs, s.finish_reason, dict(s.hidden), s.label_positions,
                  s.id_prefix, s.student_logprobs, s.token_byte_lengths, s.text_regions)
