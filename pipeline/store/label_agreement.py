"""How far apart two stored labels of the same positions are: top-1 agreement and KL.

Each stored label is read as a full distribution the way `kd merge-labels` reads
it (`pipeline.store.label_mixture`): its top-k probabilities, and its tail mass
t = 1 - sum of them spread uniformly over the V - k ids it did not store. Per
position, with U the union of both labels' ids:

    KL(P || Q) = sum_{v in U} p(v) log(p(v) / q(v))
               + (V - |U|) p_o log(p_o / q_o),    p_o = t_P / (V - k_P), q_o likewise

exact for those two distributions (0 when P = Q; infinite when Q stores no tail
yet P puts mass outside Q's ids). Top-1 agreement: both labels' most likely
stored id is the same. `output_agreement` averages both over every labelled
position of two outputs holding the same samples (a merged output and one of
its sources, say; `bench/ensemble.py`).

    >>> import numpy as np
    >>> from pipeline.store.label_agreement import label_agreement
    >>> p = (np.array([[1, 2]]), np.log(np.array([[0.5, 0.3]])))
    >>> q = (np.array([[2, 1]]), np.log(np.array([[0.6, 0.2]])))
    >>> kl, agree = label_agreement(*p, *q, vocab_size=4)
    >>> round(float(kl[0]), 6), agree.tolist()
    (0.250201, [False])
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.store.label_mixture import ROWS_PER_BLOCK, first_occurrence, probs_at, tail_mass
from pipeline.store.manifest import read_manifest
from pipeline.store.output_alignment import (MisalignedOutputs, SampleLocator,
                                             first_id_difference, sample_difference)


def top1_ids(ids: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """(rows,) the stored id with the largest logprob (ties: the first stored)."""
    return np.take_along_axis(ids, np.argmax(logprobs, axis=1)[:, None], axis=1)[:, 0]


def label_kl(ids_p: np.ndarray, lps_p: np.ndarray, ids_q: np.ndarray, lps_q: np.ndarray,
             vocab_size: int) -> np.ndarray:
    """(rows,) KL(P || Q) in nats of two stored labels over the whole vocabulary."""
    ids_p, ids_q = np.asarray(ids_p, np.int64), np.asarray(ids_q, np.int64)
    cand = np.concatenate([ids_p, ids_q], axis=1)
    unique = first_occurrence(cand)
    p = probs_at(ids_p, lps_p, cand, vocab_size)
    q = probs_at(ids_q, lps_q, cand, vocab_size)
    p_o = tail_mass(lps_p) / (vocab_size - ids_p.shape[1])
    q_o = tail_mass(lps_q) / (vocab_size - ids_q.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(unique & (p > 0), p * (np.log(p) - np.log(q)), 0.0).sum(axis=1)
        others = (vocab_size - unique.sum(axis=1)) * p_o
        rest = np.where(others > 0, others * (np.log(p_o) - np.log(q_o)), 0.0)
    return terms + rest


def label_agreement(ids_p: np.ndarray, lps_p: np.ndarray, ids_q: np.ndarray, lps_q: np.ndarray,
                    vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows,) KL(P || Q) and (rows,) top-1 agreement of two labels of the same rows."""
    kl = np.concatenate([label_kl(ids_p[a:a + ROWS_PER_BLOCK], lps_p[a:a + ROWS_PER_BLOCK],
                                  ids_q[a:a + ROWS_PER_BLOCK], lps_q[a:a + ROWS_PER_BLOCK],
                                  vocab_size)
                         for a in range(0, max(len(ids_p), 1), ROWS_PER_BLOCK)])
    return kl[:len(ids_p)], top1_ids(ids_p, lps_p) == top1_ids(ids_q, lps_q)


def paired_samples(p: SampleLocator, q: SampleLocator) -> Iterator[tuple[dict, dict]]:
    """Each sample of `p` with the same sample of `q`, in `p`'s order, one shard mapped at a
    time; MisalignedOutputs naming the first sample that differs."""
    problem = first_id_difference(p, q)
    if problem:
        raise MisalignedOutputs(problem)
    for shard in range(len(p.paths)):
        for row, sid in enumerate(p.ids(shard)):
            a, b = p.reader(shard).sample(row), q.sample_like(sid, shard, row)
            problem = sample_difference(sid, a, b, p.out, q.out)
            if problem:
                raise MisalignedOutputs(problem)
            yield a, b


def output_agreement(p_dir: str | Path, q_dir: str | Path) -> dict[str, float]:
    """Mean KL(P || Q) (over the positions where it is finite) and top-1 agreement over every
    labelled position of two outputs holding the same samples."""
    mp, mq = read_manifest(p_dir), read_manifest(q_dir)
    if mp.vocab_size != mq.vocab_size:
        raise MisalignedOutputs(f"{q_dir}: vocab_size {mq.vocab_size}, {p_dir} has {mp.vocab_size}")
    kl_sum, agree, positions, infinite = 0.0, 0, 0, 0
    for a, b in paired_samples(SampleLocator(p_dir, mp), SampleLocator(q_dir, mq)):
        kl, same = label_agreement(np.asarray(a["topk_ids"]), np.asarray(a["topk_logprobs"]),
                                   np.asarray(b["topk_ids"]), np.asarray(b["topk_logprobs"]),
                                   mp.vocab_size)
        finite = np.isfinite(kl)
        infinite += int((~finite).sum())
        kl_sum += float(kl[finite].sum())
        agree += int(same.sum())
        positions += len(kl)
    return {"top1_agreement": agree / max(positions, 1),
            "kl": kl_sum / max(positions - infinite, 1), "positions": positions,
            "infinite_kl_positions": infinite}
