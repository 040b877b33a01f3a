"""`labels/student_logprobs`: the sampling student's logprob of each labelled token.

Score mode on `kd student-samples` records (on-policy rounds) carries, per label
row, the raw T = 1 logprob of the labelled token under the student that wrote
it; every other output lacks the dataset. Finite and <= 0, float32.

    >>> import numpy as np
    >>> STUDENT_LOGPROBS_FIELD.check_values(np.array([-0.5, 0.2], np.float32))
    ['labels/student_logprobs not finite and <= 0']
    >>> STUDENT_LOGPROBS_FIELD.check_structure(np.zeros(3, np.float32), rows=2)
    ['labels/student_logprobs has shape (3,), dtype float32; expected (2,) float32, one per label row']
"""

from __future__ import annotations

import numpy as np

from pipeline.store.codecs.array_checks import nonpositive_logprobs
from pipeline.store.codecs.base import RowField
from schemas import STUDENT_LOGPROBS


class StudentLogprobs(RowField):
    name = "student_logprobs"
    dataset = STUDENT_LOGPROBS
    rows = "label_rows"
    dtype = np.float32
    what = "student logprobs"

    def check_values(self, values: np.ndarray) -> list[str]:
        return [] if nonpositive_logprobs(values) else [f"{self.dataset} not finite and <= 0"]


STUDENT_LOGPROBS_FIELD = StudentLogprobs()
