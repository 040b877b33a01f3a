"""Derive stable per-prompt seeds and worker partitions from prompt ids.

A prompt's seed depends only on the base seed and its id, never on its
position in the file or on which worker draws it, so reruns, resumes and
scale-out reproduce the same samples.

    >>> from pipeline.teacher.seeding import seed_for_prompt
    >>> seed_for_prompt(0, "math-0001") == seed_for_prompt(0, "math-0001")
    True
"""

from __future__ import annotations

from pipeline.store.fingerprint import stable_hash


def seed_for_prompt(base_seed: int, prompt_id: str) -> int:
    """Per-prompt sampling seed in [0, 2**31) (vLLM and torch accept it everywhere)."""
    return stable_hash(f"{base_seed}\x00{prompt_id}") % (2**31)
