"""Score-mode input: windows, record forms and their rejects, assistant-turn positions."""

from __future__ import annotations

import json

import pytest

from conftest import TEACHER
from pipeline.teacher.prompts import RecordError
from pipeline.teacher.score_records import (assistant_positions, load_score_records, score_items,
                                            text_items, window_spans)


class CharTokenizer:
    """One token per character (id = code point); chats rendered `<role>content</>`."""

    def render(self, messages, add_generation_prompt):
        text = "".join(f"<{m['role']}>{m['content']}</>" for m in messages)
        return text + "<assistant>" if add_generation_prompt else text

    def encode(self, text, add_special_tokens):
        return [ord(c) for c in text], list(range(len(text)))


def test_window_spans_closed_form():
    assert window_spans(4, width=4, overlap=2) == [(0, 4, 1)]
    assert window_spans(10, width=4, overlap=1) == [(0, 4, 1), (3, 7, 4), (6, 10, 7)]
    assert window_spans(11, width=5, overlap=3) == [(0, 5, 1), (2, 7, 5), (4, 9, 7), (6, 11, 9)]


@pytest.mark.parametrize("overlap", [1, 2, 5, 8])
@pytest.mark.parametrize("n", [2, 9, 10, 37, 100])
def test_every_token_after_the_first_is_labelled_once_with_the_stated_context(n, overlap):
    tokens = list(range(1000, 1000 + n))
    items = text_items("doc", tokens, width=10, overlap=overlap)
    labelled = [item.token_ids[p] for item in items for p in item.positions]
    assert labelled == tokens[1:]
    for j, item in enumerate(items):
        assert len(item.token_ids) <= 10 and item.sample_id == f"doc/w{j}"
        # a later window sees `overlap` tokens of the previous one before its first label
        assert item.positions[0] == (1 if j == 0 else overlap)
        assert item.positions == list(range(item.positions[0], len(item.token_ids)))


def test_chat_labels_every_assistant_turn_and_nothing_else():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"}, {"role": "user", "content": "q"},
                {"role": "assistant", "content": "ok!"}]
    ids, positions = assistant_positions(CharTokenizer(), messages)
    text = "".join(chr(i) for i in ids)
    assert "".join(text[p] for p in positions) == "yo</>ok!</>"


def test_real_template_labels_assistant_content_and_end_of_turn():
    from transformers import AutoTokenizer

    from stages.teacher.score_tokenizer import HfScoreTokenizer

    if not (TEACHER / "config.json").is_file():
        pytest.skip("embedded teacher not converted")
    hf = AutoTokenizer.from_pretrained(TEACHER)
    messages = [{"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another?"},
                {"role": "assistant", "content": "Green, like grass."}]
    ids, positions = assistant_positions(HfScoreTokenizer(hf), messages)
    turns, current = [], []
    for a, b in zip(positions, positions[1:] + [None]):
        current.append(ids[a])
        if b != a + 1:
            turns.append(hf.decode(current))
            current = []
    assert turns == ["Blue.<|im_end|>", "Green, like grass.<|im_end|>"]


@pytest.mark.parametrize("record, reason", [
    ({"text": "a b", "messages": [{"role": "user", "content": "x"}]}, "ambiguous_record"),
    ({"messages": [{"role": "user", "content": "x"}], "prompt": "p", "completion": "c"},
     "ambiguous_record"),
    ({"completion": "c"}, "missing_prompt"),
    ({"prompt": "p"}, "missing_completion"),
    ({"title": "t"}, "missing_text"),
    ({"text": "   "}, "empty_text"),
    ({"text": "a"}, "too_short"),
    ({"text": 5}, "bad_text"),
    ({"prompt": "p", "completion": " "}, "empty_completion"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no_assistant_turn"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]},
     "empty_assistant_turn"),
    ({"messages": [{"role": "user", "content": "x" * 50}, {"role": "assistant", "content": "y"}]},
     "too_long"),
])
def test_bad_records_are_rejected_with_their_reason(record, reason):
    with pytest.raises(RecordError) as err:
        score_items("r", record, CharTokenizer(), width=40, overlap=4)
    assert err.value.reason == reason


def test_prompt_completion_is_the_two_turn_chat():
    kind, (item,) = score_items("r", {"prompt": "hi", "completion": "yo"}, CharTokenizer(), 40, 4)
    assert kind == "completion" and item.sample_id == "r/w0"
    assert "".join(chr(item.token_ids[p]) for p in item.positions) == "yo</>"


def test_load_accounts_for_every_record(tmp_path):
    lines = [{"id": "a", "text": "x" * 70},
             {"id": "b", "text": "x", "messages": [{"role": "user", "content": "q"}]},
             {"id": "c", "messages": [{"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "r"}]},
             {"id": "a", "text": "again"}]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    batch = load_score_records(path, CharTokenizer(), width=30, overlap=2)
    assert [r.id for r in batch.accepted] == ["a", "c"]
    assert [len(r.items) for r in batch.accepted] == [3, 1]  # 0-30, 28-58, 56-70
    assert [(r.line, r.reason) for r in batch.rejects] == [
        (2, "ambiguous_record"), (4, "duplicate_id"), (5, "malformed_json")]
    assert len(batch.accepted) + len(batch.rejects) == batch.records_read == 5


@pytest.mark.parametrize("context, reason", [
    ({"teacher_messages": "not a list"}, "bad_teacher_messages"),
    ({"teacher_messages": [{"role": "user", "content": " "}]}, "bad_teacher_messages"),
    ({"teacher_prefix": "  "}, "empty_teacher_prefix"),
    ({"teacher_messages": [{"role": "user", "content": "hi"}]}, "no_teacher_assistant_turn"),
    ({"teacher_messages": [{"role": "user", "content": "hi"},
                           {"role": "assistant", "content": "yo!"}]},
     "teacher_context_changes_completion"),
    ({"teacher_prefix": "x", "teacher_messages": []}, "ambiguous_teacher_context"),
])
def test_bad_teacher_contexts_are_rejected_with_their_reason(context, reason):
    record = {"id": "r", "prompt": "hi", "completion": "yo"} | context
    with pytest.raises(RecordError) as err:
        score_items("r", record, CharTokenizer(), 100, 4)
    assert err.value.reason == reason


def test_a_teacher_context_maps_the_teachers_labelled_tokens_onto_the_students():
    record = {"id": "r", "messages": [{"role": "user", "content": "hi"},
                                      {"role": "assistant", "content": "yo"}],
              "teacher_prefix": "HINT "}
    (item,) = score_items("r", record, CharTokenizer(), 100, 4)[1]
    plain = score_items("r", {k: v for k, v in record.items() if k != "teacher_prefix"},
                        CharTokenizer(), 100, 4)[1][0]
    assert (item.token_ids, item.positions) == (plain.token_ids, plain.positions)
    teacher = "".join(chr(i) for i in item.teacher_token_ids)
    assert teacher == "<user>HINT hi</><assistant>yo</>"
    assert [item.teacher_token_ids[p] for p in item.teacher_positions] == \
        [item.token_ids[p] for p in item.positions]
    assert item.engine_token_ids == item.teacher_token_ids
    assert plain.engine_token_ids == plain.token_ids and plain.teacher_context is None
    with pytest.raises(RecordError, match="teacher_context_on_text|no prompt"):
        score_items("d", {"id": "d", "text": "abc"}, CharTokenizer(), 100, 2,
                    teacher_system_prompt="be brief")
