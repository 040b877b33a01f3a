"""One sample and its teacher soft labels, in memory.

The teacher stage builds these from engine outputs; the shard writer packs a
list of them into one shard file. A generated sample carries a label row for
every completion token; a scored one (`--mode score`) for the positions in
`label_positions` (assistant turns of a chat, a window's new tokens).

    >>> import numpy as np

from pipeline.store.text_layout import TextRegion
    >>> from pipeline.store.sample import Sample
    >>> s = Sample("p1", 0, [1, 2], [5, 6], np.zeros((2, 3), np.int64),
    ...            np.zeros((2, 3), np.float32), np.zeros(2, np.float32), "stop")
    >>> s.sample_id, s.completion_length, s.positions.tolist()
    ('p1/0', 2, [2, 3])
    >>> w = Sample("doc", 1, [1], [5, 6, 7], np.zeros((2, 3), np.int64),
    ...            np.zeros((2, 3), np.float32), np.zeros(2, np.float32), "scored",
    ...            label_positions=np.array([1, 3]), id_prefix="w")
    >>> w.sample_id, w.label_count, w.labelled_token_ids
    ('doc/w1', 2, [5, 7])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    """A sample's tokens with the teacher's labels for its labelled positions.

    `prompt_token_ids` are the tokens before the first labelled position
    (the prompt, or a scored sample's context), `completion_token_ids` the rest.
    """

    prompt_id: str
    index: int
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    topk_ids: np.ndarray
    """(label rows, k) integer token ids, best first."""
    topk_logprobs: np.ndarray
    """(label rows, k) float32 raw teacher logprobs, descending."""
    sampled_logprobs: np.ndarray
    """(label rows,) float32 raw teacher logprob of each labelled token (sampled or given)."""
    finish_reason: str
    hidden: dict[int, np.ndarray] = field(default_factory=dict)
    """Absolute layer index -> (prompt + completion tokens, hidden size) states, if captured."""
    label_positions: np.ndarray | None = None
    """Positions in `token_ids` that carry a label row, increasing; None: every completion token."""
    id_prefix: str = ""
    """Written before `index` in the sample id: "w" for a scored window (`doc/w0`)."""
    student_logprobs: np.ndarray | None = None
    """(label rows,) float32 logprob of each labelled token under the student that sampled
    it (score mode on `kd student-samples` records), or None."""
    token_byte_lengths: np.ndarray | None = None
    """(tokens,) UTF-8 bytes of each token of `token_ids` (0 for a special token), from the
    teacher's token byte table (`pipeline.store.text_layout`), or None (no text layout)."""
    text_regions: list[TextRegion] | None = None
    """The sample's messages / prompt, completion / text as byte ranges of its teacher text."""
    teacher_context: str | None = None
    """JSON of the messages the teacher saw where they differ from the stored (student's)
    view, "" for a sample without one in a shard with some (`samples/teacher_contexts`)."""

    @property
    def sample_id(self) -> str:
        return f"{self.prompt_id}/{self.id_prefix}{self.index}"

    @property
    def positions(self) -> np.ndarray:
        """(label rows,) int64 positions in `token_ids` of the labelled tokens."""
        if self.label_positions is not None:
            return np.asarray(self.label_positions, np.int64)
        start = len(self.prompt_token_ids)
        return np.arange(start, start + self.completion_length, dtype=np.int64)

    @property
    def label_count(self) -> int:
        return len(self.positions)

    @property
    def labelled_token_ids(self) -> list[int]:
        tokens = self.token_ids
        return [tokens[p] for p in self.positions]

    @property
    def completion_length(self) -> int:
        return len(self.completion_token_ids)

    @property
    def token_ids(self) -> list[int]:
        return [*self.prompt_token_ids, *self.completion_token_ids]
