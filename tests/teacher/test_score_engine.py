"""Score mode on the real vLLM CPU engine: an oracle check, windows, chats, rejects.

The stored labels of given text must equal a float32 transformers forward pass
over the same tokens at exactly the labelled positions: the document's every
token after the first (across its windows), the chat's assistant turns, the
completion of a prompt/completion pair.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import SCORE_INPUT, TEACHER
from pipeline.store.manifest import read_manifest
from pipeline.store.shard_reader import ShardReader
from pipeline.store.verify import verify_outputs

pytestmark = pytest.mark.engine

TOLERANCE = 1e-2


def scored_samples(out):
    m = read_manifest(out)
    for i in sorted(m.shards):
        reader = ShardReader(out / m.shards[i].name)
        for row, sid in enumerate(reader.strings("samples/ids")):
            yield sid, reader.sample(row)


def records():
    return {r["id"]: r for r in map(json.loads, SCORE_INPUT.read_text().splitlines())}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TEACHER)


def test_stored_labels_equal_a_transformers_forward_pass(score_labels):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32).eval()
    checked = 0
    for sid, s in scored_samples(score_labels):
        ids = torch.from_numpy(np.asarray(s["token_ids"], np.int64))[None]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0].float(), -1).numpy()
        positions = np.asarray(s["positions"], np.int64)
        rows = logprobs[positions - 1]  # the row for token t comes from the logits at t - 1
        actual = rows[np.arange(len(positions)), np.asarray(s["token_ids"], np.int64)[positions]]
        top = np.take_along_axis(rows, np.asarray(s["topk_ids"], np.int64), axis=1)
        assert np.abs(actual - s["sampled_logprobs"]).max() < TOLERANCE, sid
        assert np.abs(top - s["topk_logprobs"].astype(np.float32)).max() < TOLERANCE, sid
        # the stored top-k is the model's top-k (up to ties at the k-th value)
        kth = np.sort(rows, axis=1)[:, -s["topk_ids"].shape[1]]
        assert np.all(top >= kth[:, None] - TOLERANCE), sid
        checked += len(positions)
    assert checked > 1000


def test_a_long_document_is_labelled_once_per_token_across_windows(score_labels, tokenizer):
    windows = sorted(((sid, s) for sid, s in scored_samples(score_labels)
                      if sid.startswith("long/")), key=lambda x: int(x[0].split("/w")[1]))
    expected = tokenizer(records()["long"]["text"])["input_ids"]
    assert len(windows) >= 3 and len(expected) > 2 * 255
    labelled = [int(s["token_ids"][p]) for _, s in windows for p in s["positions"]]
    assert labelled == expected[1:]
    for j, (_, s) in enumerate(windows):
        assert len(s["token_ids"]) <= 255
        assert s["prompt_length"] == (1 if j == 0 else 64)  # --window-overlap 64 of context


def test_only_assistant_turns_of_a_chat_are_labelled(score_labels, tokenizer):
    (s,) = [s for sid, s in scored_samples(score_labels) if sid == "chat/w0"]
    ids, positions = s["token_ids"], s["positions"].tolist()
    turns, start = [], positions[0]
    for a, b in zip(positions, positions[1:] + [None]):
        if b != a + 1:
            turns.append(tokenizer.decode(ids[start:a + 1]))
            start = b
    wanted = [m["content"] + "<|im_end|>" for m in records()["chat"]["messages"]
              if m["role"] == "assistant"]
    assert turns == wanted
    (pc,) = [s for sid, s in scored_samples(score_labels) if sid == "pc/w0"]
    labelled = tokenizer.decode(pc["token_ids"][pc["positions"]])
    assert labelled == records()["pc"]["completion"] + "<|im_end|>"


def test_bad_records_are_rejected_with_reasons_and_the_rest_labelled(score_labels):
    rejects = [json.loads(x) for x in (score_labels / "rejects.jsonl").read_text().splitlines()]
    assert {r["id"]: r["reason"] for r in rejects} == {
        "both": "ambiguous_record", "empty-turn": "empty_assistant_turn",
        "no-assistant": "no_assistant_turn", "orphan": "missing_prompt"}
    m = read_manifest(score_labels)
    assert (m.mode, m.schema_version, m.accepted_prompts, m.rejected_prompts) == ("score", 3, 5, 4)
    kept = {sid.split("/")[0] for sid, _ in scored_samples(score_labels)}
    assert kept == {"long", "short", "short2", "chat", "pc"}
    assert m.totals()["generated"] == m.planned_samples
    assert not verify_outputs([score_labels]).problems
