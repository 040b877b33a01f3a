"""Keep the engine's batch full across shard boundaries and emit shards in order.

A shard is a fixed, deterministic group of prompts (so reruns and resumes know
exactly which prompts a shard holds). Generating shard by shard would drain the
engine's continuous batch at every shard end, waiting on the longest
completion; instead the requests of the next `in_flight` shards are queued at
once and each shard is emitted as soon as all of its prompts have finished.

The engine is anything with `add(key, prompt_token_ids, seed)`,
`step() -> [(key, output)]` (finished requests only) and `has_unfinished()`;
tests drive this with a fake engine, the teacher stage with vLLM.

    >>> from pipeline.teacher.shard_scheduler import ShardPlan, run_shards
    >>> class Echo:
    ...     def __init__(self): self.q = []
    ...     def add(self, key, ids, seed): self.q.append((key, ids))
    ...     def step(self): out, self.q = self.q, []; return out
    ...     def has_unfinished(self): return bool(self.q)
    >>> plans = [ShardPlan(0, [("a", [1], 0)]), ShardPlan(1, [("b", [2], 0)])]
    >>> [(p.index, outs) for p, outs in run_shards(Echo(), plans, in_flight=1)]
    [(0, {'a': [1]}), (1, {'b': [2]})]
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Protocol


class Engine(Protocol):
    def add(self, key: str, prompt_token_ids: list[int], seed: int) -> None: ...
    def step(self) -> list[tuple[str, Any]]: ...
    def has_unfinished(self) -> bool: ...


@dataclass
class ShardPlan:
    """Shard `index` and its requests: (prompt id, prompt token ids, seed)."""

    index: int
    requests: list[tuple[str, list[int], int]]


def run_shards(engine: Engine, plans: Iterable[ShardPlan], in_flight: int
               ) -> Iterator[tuple[ShardPlan, dict[str, Any]]]:
    """Yield (plan, {prompt id: engine output}) for each plan, in plan order."""
    todo = iter(plans)
    window: deque[tuple[ShardPlan, dict[str, Any]]] = deque()
    owner: dict[str, dict[str, Any]] = {}

    def admit() -> bool:
        plan = next(todo, None)
        if plan is None:
            return False
        done: dict[str, Any] = {}
        window.append((plan, done))
        for key, ids, seed in plan.requests:
            owner[key] = done
            engine.add(key, ids, seed)
        return True

    while len(window) < in_flight and admit():
        pass
    while window:
        head, head_done = window[0]
        if len(head_done) == len(head.requests):
            window.popleft()
            yield head, head_done
            admit()
            continue
        if not engine.has_unfinished():
            missing = len(head.requests) - len(head_done)
            raise RuntimeError(f"engine went idle with {missing} request(s) of shard "
                               f"{head.index} unfinished")
        for key, output in engine.step():
            owner.pop(key)[key] = output
