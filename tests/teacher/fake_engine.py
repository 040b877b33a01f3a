"""A tiny stand-in for vLLM where the engine is not the point: deterministic flat logprobs.

`install()` swaps it into the teacher stage (`stages.teacher.labels`), which then
runs end to end (tokenizer, filter, shards, index, manifest, hidden states from
the real transformers teacher) without importing vLLM. Each request gets a
completion of 4-9 tokens drawn from its seed, with k + 1 entries per token in
vLLM's layout: the sampled token first, then the top-k; in score mode, prompt
logprobs in the same layout (the prompt's own next token first, position 0 empty).

    python -c "import sys; sys.path.insert(0, 'tests/teacher'); import fake_engine; \
fake_engine.install(); from stages.cli.main import main; main()" teacher-labels ...
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

IDS = 1000  # token ids drawn below this (every teacher vocabulary is larger)


def flat_logprobs(rng: np.random.Generator, k: int, firsts: list[int | None]) -> SimpleNamespace:
    """vLLM's flat layout: per position the given first token (None: the top-1), then top-k."""
    flat_ids, flat_lps, starts, ends = [], [], [], []
    for first in firsts:
        top = rng.choice(IDS, size=k, replace=False)
        lps = np.sort(np.log(rng.dirichlet(np.ones(k + 1))[:k]))[::-1].astype(np.float32)
        starts.append(len(flat_ids))
        chosen = int(top[0]) if first is None else first
        flat_ids += [chosen, *map(int, top)]
        flat_lps += [float(lps[0]) if first is None else float(lps[-1]) - 1.0, *map(float, lps)]
        ends.append(len(flat_ids))
    return SimpleNamespace(token_ids=flat_ids, logprobs=flat_lps, start_indices=starts,
                           end_indices=ends)


def completion(seed: int, k: int, index: int) -> SimpleNamespace:
    rng = np.random.default_rng([seed, index])
    logprobs = flat_logprobs(rng, k, [None] * int(rng.integers(4, 10)))
    tokens = [logprobs.token_ids[s] for s in logprobs.start_indices]
    return SimpleNamespace(index=index, token_ids=tokens, logprobs=logprobs, finish_reason="stop")


def scored(prompt_token_ids: list[int], k: int) -> SimpleNamespace:
    rng = np.random.default_rng(prompt_token_ids)
    flat = flat_logprobs(rng, k, list(prompt_token_ids[1:]))
    flat.start_indices, flat.end_indices = [0, *flat.start_indices], [0, *flat.end_indices]
    return SimpleNamespace(prompt_logprobs=flat, outputs=[])


class FakeEngine:
    """The scheduler's add/step/has_unfinished interface; finishes up to 3 requests a step."""

    def __init__(self, llm: Any, sampling_params: Any):
        self.cfg, self.pending = llm.cfg, []

    def add(self, key: str, prompt_token_ids: list[int], seed: int) -> None:
        self.pending.append((key, prompt_token_ids, seed))

    def output(self, ids: list[int], seed: int) -> SimpleNamespace:
        if self.cfg.mode == "score":
            return scored(ids, self.cfg.engine_k)
        return SimpleNamespace(outputs=[completion(seed, self.cfg.engine_k, i)
                                        for i in range(self.cfg.n)])

    def step(self) -> list[tuple[str, Any]]:
        done, self.pending = self.pending[:3], self.pending[3:]
        return [(key, self.output(ids, seed)) for key, ids, seed in done]

    def has_unfinished(self) -> bool:
        return bool(self.pending)


class FakeSource:
    """Hands the fake engine the config in place of an `LLM`."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def get(self) -> SimpleNamespace:
        return SimpleNamespace(cfg=self.cfg)

    def release(self) -> None:
        pass


def install() -> None:
    import stages.teacher.labels as labels

    labels.VllmEngine, labels.EngineSource = FakeEngine, FakeSource


RUN_FAKE = ("import sys; sys.path.insert(0, 'tests/teacher'); import fake_engine; "
            "fake_engine.install(); from stages.cli.main import main; main()")
ROOT = Path(__file__).resolve().parents[2]


def run_fake(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """`kd ARGS` in a subprocess with this fake in place of vLLM."""
    # argv[0] is what the CLI prints as the program in its resume command ("kd ...").
    return subprocess.run([sys.executable, "-c", RUN_FAKE, *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=300, env=os.environ | env)


def fake_output(tmp_path_factory: Any, name: str, args: Any) -> Path:
    """`kd args(out)` on this fake into a fresh session directory `name`; its output."""
    from conftest import require_teacher

    require_teacher()
    out = tmp_path_factory.mktemp(name) / "out"
    proc = run_fake(args(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out
