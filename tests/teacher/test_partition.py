"""Worker partitioning: every record has exactly one owner, stable across runs."""

from __future__ import annotations

import json

from pipeline.teacher.partition import owner_of
from pipeline.teacher.prompts import load_prompts


def test_every_record_is_owned_by_exactly_one_worker(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [json.dumps({"id": f"q{i}", "prompt": f"prompt {i}"}) for i in range(200)]
    lines += ["{not json", json.dumps({"id": "q3", "prompt": "duplicate"})]
    path.write_text("\n".join(lines) + "\n")
    batches = [load_prompts(path, lambda m: [1, 2], 100,
                            owns=lambda rid, line, w=w: owner_of(rid, line, 3) == w)
               for w in range(3)]
    ids = [p.id for b in batches for p in b.accepted]
    assert sorted(ids) == sorted(f"q{i}" for i in range(200))
    assert sum(b.records_read for b in batches) == 202
    # Duplicates share their id's worker, so that worker rejects the second one.
    assert sum(r.reason == "duplicate_id" for b in batches for r in b.rejects) == 1
    assert all(len(b.accepted) > 40 for b in batches)


def test_owner_is_deterministic_and_single_worker_owns_all():
    assert [owner_of(f"x{i}", i, 4) for i in range(50)] == [owner_of(f"x{i}", 0, 4) for i in range(50)]
    assert {owner_of(f"x{i}", i, 1) for i in range(50)} == {0}
