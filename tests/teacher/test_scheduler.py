import random

import pytest

from pipeline.teacher.shard_scheduler import ShardPlan, run_shards


class ShuffledEngine:
    """Finishes queued requests in random order, a few per step, like continuous batching."""

    def __init__(self, seed=0, per_step=3):
        self.queue, self.rng, self.per_step = [], random.Random(seed), per_step
        self.max_queued = 0

    def add(self, key, ids, seed):
        self.queue.append((key, (ids, seed)))
        self.max_queued = max(self.max_queued, len(self.queue))

    def step(self):
        self.rng.shuffle(self.queue)
        done, self.queue = self.queue[:self.per_step], self.queue[self.per_step:]
        return done

    def has_unfinished(self):
        return bool(self.queue)


def plans(n_shards, per_shard):
    return [ShardPlan(i, [(f"s{i}-{j}", [i, j], i * 100 + j) for j in range(per_shard)])
            for i in range(n_shards)]


@pytest.mark.parametrize("in_flight", [1, 2, 5])
def test_shards_come_out_in_order_with_all_their_outputs(in_flight):
    engine = ShuffledEngine()
    got = list(run_shards(engine, plans(6, 4), in_flight))
    assert [p.index for p, _ in got] == list(range(6))
    for plan, outputs in got:
        assert outputs == {key: (ids, seed) for key, ids, seed in plan.requests}
    assert engine.max_queued <= in_flight * 4


def test_next_shard_is_queued_before_the_current_one_finishes():
    engine = ShuffledEngine(per_step=1)
    run = run_shards(engine, plans(3, 2), in_flight=2)
    next(run)
    assert engine.max_queued == 4  # shards 0 and 1 were in the engine together


def test_idle_engine_with_missing_requests_is_an_error():
    class Lossy(ShuffledEngine):
        def step(self):
            done = super().step()
            return [d for d in done if d[0] != "s0-1"]

    with pytest.raises(RuntimeError, match="shard 0"):
        list(run_shards(Lossy(), plans(1, 3), in_flight=1))


def test_no_plans_yields_nothing():
    assert list(run_shards(ShuffledEngine(), [], in_flight=2)) == []
