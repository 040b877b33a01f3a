"""One generated sample and its teacher soft labels, in memory.

The teacher stage builds these from engine outputs; the shard writer packs a
list of them into one shard file.

    >>> import numpy as np
    >>> from pipeline.store.sample import Sample
    >>> s = Sample("p1", 0, [1, 2], [5, 6], np.zeros((2, 3), np.int64),
    ...            np.zeros((2, 3), np.float32), np.zeros(2, np.float32), "stop")
    >>> s.sample_id, s.completion_length
    ('p1/0', 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    """Prompt and completion tokens of one sample with the teacher's labels for the completion."""

    prompt_id: str
    index: int
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    topk_ids: np.ndarray
    """(completion tokens, k) integer token ids, best first."""
    topk_logprobs: np.ndarray
    """(completion tokens, k) float32 raw teacher logprobs, descending."""
    sampled_logprobs: np.ndarray
    """(completion tokens,) float32 raw teacher logprob of each sampled token."""
    finish_reason: str
    hidden: dict[int, np.ndarray] = field(default_factory=dict)
    """Absolute layer index -> (prompt + completion tokens, hidden size) states, if captured."""

    @property
    def sample_id(self) -> str:
        return f"{self.prompt_id}/{self.index}"

    @property
    def completion_length(self) -> int:
        return len(self.completion_token_ids)

    @property
    def token_ids(self) -> list[int]:
        return [*self.prompt_token_ids, *self.completion_token_ids]
