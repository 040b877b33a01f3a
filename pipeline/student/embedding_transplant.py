"""Which teacher embedding row initialises each row of a student with a new tokenizer.

`--student from-teacher --student-tokenizer DIR` keeps the teacher's inner layers
and gives the student embeddings for its own vocabulary. A student token whose byte
string is also a teacher token starts as that token's teacher row: the inner layers
already read it, and the 1:1 chunks (where the top-k KL applies) are exactly these
tokens. Every other row starts as the mean of the teacher's rows, a neutral point
the inner layers have seen the average of (as the ALM paper's and ZeTT's baselines
start new tokens); its meaning comes from training.

    >>> import numpy as np
    >>> source_rows([b"a", b"bc", b""], [b"bc", b"x", b"a", b""]).tolist()
    [1, -1, 0, -1]
    >>> transplant(np.array([[1.0, 1.0], [3.0, 5.0], [5.0, 0.0]]), np.array([1, -1]), 3).tolist()
    [[3.0, 5.0], [3.0, 2.0], [3.0, 2.0]]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def source_rows(teacher_table: Sequence[bytes], student_table: Sequence[bytes]) -> np.ndarray:
    """(student vocabulary,) teacher id of the same byte string (lowest id), -1 where none."""
    by_bytes: dict[bytes, int] = {}
    for i, b in enumerate(teacher_table):
        if b:
            by_bytes.setdefault(b, i)
    return np.array([by_bytes.get(b, -1) if b else -1 for b in student_table], np.int64)


def transplant(teacher_rows: np.ndarray, sources: np.ndarray, rows: int) -> np.ndarray:
    """(rows, d): each student row the teacher row it maps to, else (padding too) the mean."""
    out = np.repeat(teacher_rows.mean(0, keepdims=True), rows, 0)
    mapped = np.flatnonzero(sources >= 0)
    out[mapped] = teacher_rows[sources[mapped]]
    return out
