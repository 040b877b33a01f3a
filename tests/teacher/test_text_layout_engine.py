"""The real engine's outputs carry a text layout whose regions are the input records' own text.

Uses the session's real vLLM runs (`engine_labels`: generated, n = 2, hidden
states; `score_labels`: a long document in windows, short documents, a chat
with three assistant turns, a prompt/completion pair). Each region's bytes, cut
from the bytes of the stored ids (vLLM's own tokens, never re-tokenised), must
equal the record's message content; windows must tile their document.
"""

from __future__ import annotations

import json

import numpy as np

from conftest import MIXED_PROMPTS, SCORE_INPUT, TEACHER
from pipeline.store.manifest import read_manifest
from pipeline.store.shard_reader import ShardReader
from pipeline.store.text_layout_datasets import first_uncovered_token
from pipeline.store.verify import verify_outputs
from pipeline.teacher.text_layouts import TokenBytes


def records(path) -> dict[str, dict]:
    found = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        found.setdefault(str(record.get("id")), record)
    return found


def samples(out):
    for rec in read_manifest(out).shards.values():
        r = ShardReader(out / rec.name)
        for i, sid in enumerate(r.strings("samples/ids")):
            yield sid, r.sample(i)


def token_bytes() -> TokenBytes:
    from transformers import AutoTokenizer

    return TokenBytes.of(AutoTokenizer.from_pretrained(TEACHER))


def texts_of(tb, s):
    text = tb.text(s["token_ids"].tolist())
    assert len(text) == int(np.sum(s["token_byte_lengths"], dtype=np.int64))
    return [(g.role, text[g.start:g.end], g.labelled) for g in s["regions"]]  # bytes: a window
    # boundary may cut a character's bytes between two tokens


def test_generated_regions_are_the_prompt_messages_and_the_completion(engine_labels):
    tb, inputs = token_bytes(), records(MIXED_PROMPTS)
    found = verify_outputs([engine_labels])
    assert not found.problems and not found.notes and read_manifest(engine_labels).text_layout
    seen = 0
    for sid, s in samples(engine_labels):
        record = inputs[sid.rsplit("/", 1)[0]]
        messages = record.get("messages") or [{"role": "user", "content": record["prompt"]}]
        ids = s["token_ids"].tolist()
        assert s["token_byte_lengths"].tolist() == [len(tb.table[t]) for t in ids]
        *prompt, completion = texts_of(tb, s)
        assert prompt == [(m["role"], m["content"].encode(), False) for m in messages], sid
        assert completion == ("completion", tb.text(ids[s["prompt_length"]:]), True)
        assert first_uncovered_token(s["token_byte_lengths"], s["regions"], s["positions"]) is None
        seen += 1
    assert seen == read_manifest(engine_labels).totals()["samples"] > 0


def test_scored_regions_are_the_records_messages_and_documents(score_labels):
    tb, inputs = token_bytes(), records(SCORE_INPUT)
    assert not verify_outputs([score_labels]).problems
    documents: dict[str, list] = {}
    for sid, s in samples(score_labels):
        rid, window = sid.rsplit("/", 1)
        record, texts = inputs[rid], texts_of(tb, s)
        assert first_uncovered_token(s["token_byte_lengths"], s["regions"], s["positions"]) is None
        if "text" in record:
            documents.setdefault(rid, []).append((int(window[1:]), texts))
        elif "messages" in record:
            assert texts == [(m["role"], m["content"].encode(), m["role"] == "assistant")
                             for m in record["messages"]], sid
        else:
            assert texts == [("prompt", record["prompt"].encode(), False),
                             ("completion", record["completion"].encode(), True)], sid
    assert documents
    for rid, windows in documents.items():
        windows.sort()
        first_context = windows[0][1][0]
        assert first_context[0] == "text" and not first_context[2]
        joined = first_context[1] + b"".join(texts[1][1] for _, texts in windows)
        assert joined == inputs[rid]["text"].encode(), rid
