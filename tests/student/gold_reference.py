"""TRL GOLD's byte-offset alignment, verbatim, as the oracle the alignment tests check against.

Copied from huggingface/trl at commit f2cd57710ae345ea6428ae95363267fcf38a3dc8
(Apache-2.0, Copyright 2020-2026 The HuggingFace Team): the static method
`_align_by_byte_offsets` of the GOLD trainer's ULD loss in
trl/experimental/gold/gold_trainer.py, lines 528-551, dedented to module level
(its `@staticmethod` line dropped).
Not imported by offline-kd itself.
"""
# ruff: noqa


def _align_by_byte_offsets(s_offsets, t_offsets):
    """
    Walk both byte-offset arrays, advancing the side whose current token ends earlier. A group closes when both
    sides reach the same byte boundary — the points where the two tokenizers agree on a split.
    """
    s_groups, t_groups = [], []
    s_start = t_start = s = t = 0
    n_s, n_t = len(s_offsets), len(t_offsets)
    while s < n_s and t < n_t:
        s_end, t_end = s_offsets[s][1], t_offsets[t][1]
        if s_end < t_end:
            s += 1
        elif s_end > t_end:
            t += 1
        else:
            s += 1
            t += 1
            s_groups.append(list(range(s_start, s)))
            t_groups.append(list(range(t_start, t)))
            s_start, t_start = s, t
    if s < n_s or t < n_t:
        s_groups.append(list(range(s_start, n_s)))
        t_groups.append(list(range(t_start, n_t)))
    return s_groups, t_groups
