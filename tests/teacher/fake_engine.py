"""A tiny stand-in for vLLM where the engine is not the point: deterministic flat logprobs.

`install()` swaps it into the teacher stage (`stages.teacher.labels`), which then
runs end to end (tokenizer, filter, shards, index, manifest, hidden states from
the real transformers teacher) without importing vLLM. Each request gets a
completion of 4-9 tokens drawn from its seed, with k + 1 entries per token in
vLLM's layout: the sampled token first, then the top-k.

    python -c "import sys; sys.path.insert(0, 'tests/teacher'); import fake_engine; \
fake_engine.install(); from stages.cli.main import main; main()" teacher-labels ...
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

IDS = 1000  # token ids drawn below this (every teacher vocabulary is larger)


def completion(seed: int, k: int, index: int) -> SimpleNamespace:
    rng = np.random.default_rng([seed, index])
    length = int(rng.integers(4, 10))
    flat_ids, flat_lps, starts, ends = [], [], [], []
    tokens = []
    for _ in range(length):
        top = rng.choice(IDS, size=k, replace=False)
        lps = np.sort(np.log(rng.dirichlet(np.ones(k + 1))[:k]))[::-1].astype(np.float32)
        starts.append(len(flat_ids))
        flat_ids += [int(top[0]), *map(int, top)]
        flat_lps += [float(lps[0]), *map(float, lps)]
        ends.append(len(flat_ids))
        tokens.append(int(top[0]))
    logprobs = SimpleNamespace(token_ids=flat_ids, logprobs=flat_lps, start_indices=starts,
                               end_indices=ends)
    return SimpleNamespace(index=index, token_ids=tokens, logprobs=logprobs, finish_reason="stop")


class FakeEngine:
    """The scheduler's add/step/has_unfinished interface; finishes up to 3 requests a step."""

    def __init__(self, llm: Any, cfg: Any):
        self.cfg, self.pending = cfg, []

    def add(self, key: str, prompt_token_ids: list[int], seed: int) -> None:
        self.pending.append((key, seed))

    def step(self) -> list[tuple[str, Any]]:
        done, self.pending = self.pending[:3], self.pending[3:]
        return [(key, SimpleNamespace(outputs=[completion(seed, self.cfg.top_k, i)
                                               for i in range(self.cfg.n)]))
                for key, seed in done]

    def has_unfinished(self) -> bool:
        return bool(self.pending)


class FakeSource:
    def __init__(self, cfg: Any):
        pass

    def get(self) -> None:
        return None

    def release(self) -> None:
        pass


def install() -> None:
    import stages.teacher.labels as labels

    labels.VllmEngine, labels.EngineSource = FakeEngine, FakeSource
