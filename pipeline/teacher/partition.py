"""Deterministic split of a prompt set over independent teacher workers.

Worker `i` of `n` owns the records whose id hashes to `i` (a stable sha256,
identical on every machine), so a Slurm array or an indexed Kubernetes job
can run `kd teacher-labels --num-workers n --worker-index i` with no
coordination and the outputs are disjoint. A record with no readable id
(malformed JSON, say) is owned by its line number instead, so every input
record is accounted for by exactly one worker.

    >>> from pipeline.teacher.partition import owner_of
    >>> sorted({owner_of(f"p{i}", i, 3) for i in range(30)})
    [0, 1, 2]
"""

from __future__ import annotations

from typing import Callable

from pipeline.store.fingerprint import stable_hash


def owned_by(worker_index: int, num_workers: int) -> Callable[[str | None, int], bool]:
    """The `owns(record id, line)` predicate of one worker, as the record readers take it."""
    return lambda record_id, line: owner_of(record_id, line, num_workers) == worker_index


def owner_of(record_id: str | None, line: int, num_workers: int) -> int:
    """The worker (0-based) that handles this record."""
    if num_workers == 1:
        return 0
    key = f"id\x00{record_id}" if record_id is not None else f"line\x00{line}"
    return stable_hash(key) % num_workers
