import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.teacher.prompts import load_prompts, write_rejects


def tokenize(messages):
    return [len(m["content"]) for m in messages for _ in m["content"].split()]


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_bad_record_is_rejected_with_its_line_and_reason(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        json.dumps({"id": "a", "prompt": "hello there"}),
        "{not json",
        json.dumps({"prompt": "no id"}),
        json.dumps({"id": "b", "prompt": "   \t"}),
        json.dumps({"id": "a", "prompt": "duplicate id"}),
        json.dumps({"id": "c", "prompt": "word " * 50}),
        json.dumps({"id": "d"}),
        json.dumps({"id": "e", "messages": [{"role": "user", "content": "hi"}]}),
        json.dumps({"id": "f", "messages": [{"role": "user"}]}),
        json.dumps(["a", "list"]),
        json.dumps({"id": "g/1", "prompt": "slash"}),
        "",
        json.dumps({"id": 7, "prompt": "integer ids are accepted as text"}),
    ])
    batch = load_prompts(path, tokenize, max_prompt_tokens=20)
    assert [p.id for p in batch.accepted] == ["a", "e", "7"]
    got = [(r.line, r.reason) for r in batch.rejects]
    assert got == [(2, "malformed_json"), (3, "missing_id"), (4, "empty_prompt"),
                   (5, "duplicate_id"), (6, "too_long"), (7, "missing_prompt"),
                   (9, "bad_messages"), (10, "not_an_object"), (11, "bad_id")]
    assert len(batch.accepted) + len(batch.rejects) == batch.records_read == 12
    assert batch.rejects_by_reason()["too_long"] == 1
    assert "line 2" in batch.rejects[0].detail


def test_system_prompt_is_prepended_and_limit_counts_records(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps({"id": str(i), "prompt": f"q {i}"})
                                               for i in range(5)])
    batch = load_prompts(path, tokenize, 100, system_prompt="be brief", limit=3)
    assert batch.records_read == 3
    assert batch.accepted[0].messages == [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": "q 0"}]


def test_teacher_system_prompt_gives_the_teacher_its_own_view_and_keeps_the_students(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        json.dumps({"id": "a", "prompt": "q a"}),
        json.dumps({"id": "b", "messages": [{"role": "system", "content": "own"},
                                            {"role": "user", "content": "q b"}]}),
        json.dumps({"id": "c", "prompt": "fits alone, not behind"})])
    plain = load_prompts(path, tokenize, 6)
    batch = load_prompts(path, tokenize, 6, teacher_system_prompt="be a pirate")
    a, b = batch.accepted
    assert [(p.messages, p.token_ids) for p in batch.accepted] == \
        [(p.messages, p.token_ids) for p in plain.accepted[:2]]
    assert a.teacher_messages == [{"role": "system", "content": "be a pirate"}, *a.messages]
    assert b.teacher_messages == [{"role": "system", "content": "be a pirate\n\nown"},
                                  {"role": "user", "content": "q b"}]
    assert a.engine_token_ids == a.teacher_token_ids == tokenize(a.teacher_messages)
    assert plain.accepted[0].engine_token_ids == plain.accepted[0].token_ids
    # the teacher's longer view must fit too
    assert [(r.id, r.reason) for r in batch.rejects] == [("c", "too_long")]
    assert "the teacher's prompt" in batch.rejects[0].detail


def test_parquet_input_reads_like_jsonl(tmp_path):
    table = pa.table({"id": ["x", "y", "z"], "prompt": ["one two", "", "three"]})
    pq.write_table(table, tmp_path / "p.parquet")
    batch = load_prompts(tmp_path / "p.parquet", tokenize, 100)
    assert [p.id for p in batch.accepted] == ["x", "z"]
    assert [(r.line, r.reason) for r in batch.rejects] == [(2, "empty_prompt")]


def test_rejects_file_round_trips(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ["{bad", json.dumps({"id": "a", "prompt": "ok"})])
    batch = load_prompts(path, tokenize, 100)
    write_rejects(tmp_path / "rejects.jsonl", batch.rejects)
    rows = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert rows == [{"line": 1, "id": None, "reason": "malformed_json", "detail": rows[0]["detail"]}]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_prompts(tmp_path / "nope.jsonl", tokenize, 10)


def test_shipped_demo_prompts_are_all_valid():
    batch = load_prompts("data/prompts/demo.jsonl", tokenize, 10_000)
    assert batch.rejects == []
    assert len(batch.accepted) >= 300
