"""Text layouts from ids: the bytes of each region are the record's own text.

With the real teacher tokenizer (SmolLM2, byte-level BPE) and its chat
template: generated prompts, scored chats, prompt/completion records and
document windows, with emoji, CJK and whitespace runs; the region bytes cut
from the ids' bytes must equal the message contents, the windows' labelled
bytes must tile the document. Toy byte tables cover the refusals and the
token that straddles a content's start.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TEACHER, require_teacher
from pipeline.store.text_layout import TextRegion
from pipeline.store.text_layout_datasets import first_uncovered_token
from pipeline.teacher.chatml_layout import ChatMarkers, LayoutUnparsable, upgraded_layout
from pipeline.teacher.prompts import RecordError
from pipeline.teacher.score_records import score_items
from pipeline.teacher.text_layouts import TokenBytes, chat_layout, generated_layout, locate_messages

AWKWARD = [
    "Emoji 🎉🚀 and a family 👨‍👩‍👧 in one line.",
    "中文测试：你好，世界。日本語も少し。",
    "Runs   of    spaces,\t\ttabs\n\n\nand newlines   ",
    "  leading and trailing whitespace  ",
    "Numerals 1234567890 3.14159 -42 1e-9",
]


@pytest.fixture(scope="module")
def hf():
    require_teacher()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TEACHER)


@pytest.fixture(scope="module")
def scorer(hf):
    from stages.teacher.score_tokenizer import HfScoreTokenizer

    return HfScoreTokenizer(hf)


def region_texts(tb, ids, regions):
    text = tb.text(ids)
    return [(r.role, text[r.start:r.end].decode("utf-8"), r.labelled) for r in regions]


@pytest.mark.parametrize("content", AWKWARD)
def test_generated_regions_are_the_prompt_contents_and_the_completion(hf, scorer, content):
    tb = scorer.token_bytes
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]
    prompt = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = hf(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = hf(" Sure: " + content, add_special_tokens=False)["input_ids"] + [hf.eos_token_id]
    lengths, regions = generated_layout(tb, messages, prompt_ids, completion_ids)
    ids = prompt_ids + completion_ids
    assert lengths.tolist() == [len(tb.table[t]) for t in ids]
    assert tb.text(ids) == hf.decode(ids, skip_special_tokens=True).encode()
    *prompt_regions, completion = region_texts(tb, ids, regions)
    assert [(role, text) for role, text, _ in prompt_regions] == \
        [(m["role"], m["content"]) for m in messages]
    assert completion == ("completion", " Sure: " + content, True)
    assert first_uncovered_token(lengths, regions, range(len(prompt_ids), len(ids))) is None


@pytest.mark.parametrize("content", AWKWARD)
def test_scored_chat_regions_are_the_messages_and_cover_every_assistant_byte(scorer, content):
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": content},
                {"role": "user", "content": "again?"}, {"role": "assistant", "content": "Yes. " + content}]
    kind, (item,) = score_items("c", {"id": "c", "messages": messages}, scorer, 4096, 64)
    assert kind == "chat"
    texts = region_texts(scorer.token_bytes, item.token_ids, item.regions)
    # SmolLM2's template adds its default system message: it is in the ids, not a region
    assert [(role, text) for role, text, _ in texts] == [(m["role"], m["content"]) for m in messages]
    assert [labelled for *_, labelled in texts] == [False, True, False, True]
    assert first_uncovered_token(item.byte_lengths, item.regions, item.positions) is None


def test_a_prompt_completion_record_has_prompt_and_completion_regions(scorer):
    record = {"id": "pc", "prompt": "2 + 2 = ?  🤔", "completion": "4, 四, ④."}
    _, (item,) = score_items("pc", record, scorer, 4096, 64)
    assert region_texts(scorer.token_bytes, item.token_ids, item.regions) == [
        ("prompt", record["prompt"], False), ("completion", record["completion"], True)]


def test_windows_tile_the_document_with_their_labelled_bytes(scorer):
    document = " ".join(AWKWARD * 6)
    _, items = score_items("d", {"id": "d", "text": document}, scorer, 64, 8)
    assert len(items) > 3
    tb = scorer.token_bytes
    first_context = tb.text(items[0].token_ids)[:items[0].regions[0].end]
    labelled = b"".join(tb.text(it.token_ids)[it.regions[1].start:it.regions[1].end] for it in items)
    assert first_context + labelled == document.encode()
    for it in items:
        context, new = it.regions
        assert (context.role, context.labelled, new.role, new.labelled) == ("text", False, "text", True)
        assert first_uncovered_token(it.byte_lengths, it.regions, it.positions) is None


def test_a_record_of_token_ids_gets_its_prompt_messages_and_completion(hf, scorer):
    messages = [{"role": "user", "content": "Hi 👋"}]
    prompt = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = hf(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = hf("Hello! 你好", add_special_tokens=False)["input_ids"] + [hf.eos_token_id]
    record = {"id": "s", "prompt": "Hi 👋", "completion": "Hello! 你好",
              "prompt_token_ids": list(prompt_ids), "completion_token_ids": completion_ids,
              "tokenizer_fingerprint": scorer.fingerprint}
    _, (item,) = score_items("s", record, scorer, 4096, 64)
    assert region_texts(scorer.token_bytes, item.token_ids, item.regions) == [
        ("prompt", "Hi 👋", False), ("completion", "Hello! 你好", True)]


# A toy byte table: 0 and 1 are the ChatML markers (special: no bytes).
TOY = TokenBytes([b"", b"", b"user\n", b"Hi", b"assistant\n", b"Yo", b"!", b"assistant", b"\nYo"])
MARKERS = ChatMarkers(0, 1)


def test_a_content_that_is_not_in_the_text_is_refused_by_name():
    with pytest.raises(RecordError, match=r"messages\[1\] \(assistant\)") as caught:
        locate_messages(b"user\nHi", [{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "Hi"}])
    assert caught.value.reason == "content_not_located"


def test_a_content_the_template_trimmed_is_located_stripped():
    regions = locate_messages(b"user\nHi there\nassistant\nYo", [
        {"role": "user", "content": "  Hi there \n"}, {"role": "assistant", "content": "Yo"}])
    assert regions == [TextRegion("user", 5, 13, False), TextRegion("assistant", 24, 26, False)]


def test_messages_are_located_in_order_from_a_cursor():
    regions = locate_messages(b"ab ab", [{"role": "user", "content": "ab"},
                                         {"role": "assistant", "content": " ab "}], ("assistant",))
    assert regions == [TextRegion("user", 0, 2, False), TextRegion("assistant", 3, 5, True)]


def test_a_token_reaching_into_an_assistant_content_gets_a_label_row():
    ids = [0, 2, 3, 1, 0, 7, 8, 6, 1]  # "assistant" then "\nYo" straddles the content's start
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo!"}]
    lengths, regions, positions = chat_layout(TOY, ids, messages, [7, 8])
    assert positions == [6, 7, 8]
    assert first_uncovered_token(lengths, regions, positions) is None
    with pytest.raises(RecordError, match="first token") as caught:
        chat_layout(TOY, [8, 6], [{"role": "assistant", "content": "Yo!"}], [1])
    assert caught.value.reason == "unlabelled_region_token"


def test_chatml_is_parsed_back_from_ids():
    ids = [0, 2, 3, 1, 0, 4, 5, 6, 1, 0, 2, 3]  # a chat cut inside its last (user) turn
    lengths, regions = upgraded_layout(TOY, MARKERS, "c/w0", ids, 6, [6, 7, 8], "score")
    assert lengths.tolist() == [len(TOY.table[t]) for t in ids]
    assert region_texts(TOY, ids, regions) == [("user", "Hi", False), ("assistant", "Yo!", True),
                                               ("user", "Hi", False)]


@pytest.mark.parametrize("ids, mode, complaint", [
    ([2, 3, 5, 6], "generate", "holds no <|im_start|>"),
    ([0, 3, 1, 0, 4, 5], "generate", "token position 0: a ChatML message without the newline"),
    ([0, 0, 2, 1, 5], "score", "token position 1: <|im_start|> inside an unclosed message"),
    ([0, 2, 3, 1, 0, 7, 8, 6, 1], "score", "token position 6: bytes of an assistant content"),
])
def test_ids_that_do_not_parse_as_chatml_are_refused_naming_sample_and_position(ids, mode, complaint):
    with pytest.raises(LayoutUnparsable, match="sample x/0") as caught:
        upgraded_layout(TOY, MARKERS, "x/0", ids, 2, list(range(7, len(ids))), mode)
    assert complaint in str(caught.value)


def test_a_document_window_needs_no_markers():
    lengths, regions = upgraded_layout(TOY, None, "d/w1", [3, 5, 6], 1, [1, 2], "score")
    assert np.array_equal(lengths, [2, 2, 1])
    assert regions == [TextRegion("text", 0, 2, False), TextRegion("text", 2, 5, True)]


def test_generate_mode_rejects_a_prompt_whose_template_rewrites_its_content(hf, tmp_path):
    from copy import deepcopy

    from pipeline.teacher.prompts import load_prompts
    from stages.teacher.labels import located_prompt_tokens

    shouting = deepcopy(hf)
    shouting.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n"
                              "{{ m.content | upper }}<|im_end|>\n{% endfor %}"
                              "<|im_start|>assistant\n")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "quiet words"}\n{"id": "b", "prompt": "123 !?"}\n')
    batch = load_prompts(prompts, located_prompt_tokens(shouting, TokenBytes.of(shouting)), 100)
    assert [p.id for p in batch.accepted] == ["b"]  # upper() leaves digits and marks alone
    assert [(r.id, r.reason) for r in batch.rejects] == [("a", "content_not_located")]
