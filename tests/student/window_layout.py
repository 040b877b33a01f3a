"""The text layout of a scored document window, derived from its ids: a test helper.

Pure-logic tests of the alignment and losses build their samples' layouts here:
each token's bytes from its id (`token_bytes_table`), a `text` region of the
context (unlabelled) and one of the new tokens (labelled), as the teacher stage
stores them for a score-mode window (`pipeline.teacher.text_layouts.window_layout`).

    >>> table = [b"", b"ab", b"c", b"de"]
    >>> lengths, regions = derived_window_layout([1, 2, 3], [1, 2], table)
    >>> lengths.tolist(), [(r.start, r.end, r.labelled) for r in regions]
    ([2, 1, 2], [(0, 2, False), (2, 5, True)])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.store.text_layout import TextRegion


def derived_window_layout(token_ids: Sequence[int], positions: Sequence[int],
                          table: Sequence[bytes]) -> tuple[np.ndarray, list[TextRegion]]:
    """(byte length per token, [context, labelled new tokens]) of one document window."""
    lengths = np.array([len(table[int(i)]) for i in token_ids], np.int64)
    first = int(positions[0])
    if list(positions) != list(range(first, len(token_ids))):
        raise ValueError("derived_window_layout: the labelled positions are not a window's "
                         "new tokens (a contiguous run to the end)")
    split, total = int(lengths[:first].sum()), int(lengths.sum())
    return lengths, [TextRegion("text", 0, split, False), TextRegion("text", split, total, True)]
