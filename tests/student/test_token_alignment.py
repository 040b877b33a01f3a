"""Byte-level alignment of the teacher's tokens with a student's own (pipeline.student.token_alignment).

Oracle: TRL GOLD's `_align_by_byte_offsets`, vendored verbatim in tests/student/gold_reference.py.
Real tokenizers: the embedded teacher's (SmolLM2, byte-level BPE) against Qwen3's (byte-level
BPE) and Gemma3's (SentencePiece-style with byte fallback), fetched by `make tokenizers`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from pipeline.store.text_layout import TextRegion, byte_ends, token_bytes_table
from pipeline.student.token_alignment import (Alignment, AlignmentError, align, chunk_ids,
                                              render_student)
from tests.student.window_layout import derived_window_layout
from tests.conftest import TEACHER, require_teacher, require_tokenizer
from tests.student.gold_reference import _align_by_byte_offsets

TRICKY = [
    "Numbers 1234567 and 3.14159, dates 2026-12-05.",
    "Emoji 🙂👍🏽 and a family 👨‍👩‍👧 in one line.",
    "CJK: 机器学习很有趣。日本語のテキスト、한국어 텍스트.",
    "Runs   of    spaces\n\n\n\ttabs\t\tand\r\nnewlines   ",
    "Rare: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ ᚠᛇᚻ ⸻ \u0301combining é (e\u0301).",
]


def offsets(lengths) -> list[tuple[int, int]]:
    ends = byte_ends(lengths)
    return list(zip((ends - np.asarray(lengths)).tolist(), ends.tolist()))


def random_lengths(rng, total: int) -> np.ndarray:
    cuts = np.sort(rng.choice(np.arange(1, total), size=rng.integers(0, total - 1), replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]]))


def test_chunks_equal_gold_on_random_segmentations(rng):
    for _ in range(300):
        total = int(rng.integers(2, 40))
        t_len, s_len = random_lengths(rng, total), random_lengths(rng, total)
        t_c, s_c = chunk_ids(byte_ends(t_len), byte_ends(s_len))
        s_groups, t_groups = _align_by_byte_offsets(offsets(s_len), offsets(t_len))
        assert [np.flatnonzero(t_c == c).tolist() for c in range(t_c.max() + 1)] == t_groups
        assert [np.flatnonzero(s_c == c).tolist() for c in range(s_c.max() + 1)] == s_groups


@lru_cache(maxsize=None)
def tokenizer_and_table(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    table, special = token_bytes_table(tok)
    return tok, table, special


def teacher_window(text: str, first: int = 3):
    require_teacher()
    tok, table, _ = tokenizer_and_table(str(TEACHER))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    lengths, regions = derived_window_layout(ids, range(first, len(ids)), table)
    return ids, lengths, regions, table


def student_alignment(name: str, text: str) -> tuple[Alignment, list, np.ndarray, list, list]:
    ids, t_lengths, regions, t_table = teacher_window(text)
    data = b"".join(t_table[i] for i in ids)
    tok, s_table, _ = tokenizer_and_table(str(require_tokenizer(name)) if name != "teacher"
                                          else str(TEACHER))
    student = render_student(regions, data, tok, s_table)
    return align(t_lengths, regions, student), ids, t_lengths, t_table, s_table


@pytest.mark.parametrize("name", ["qwen3", "gemma3", "teacher"])
@pytest.mark.parametrize("text", TRICKY)
def test_chunks_cover_every_labelled_byte_once_with_equal_spans(name, text):
    a, t_ids, t_lengths, t_table, s_table = student_alignment(name, text)
    labelled = b"".join(t_table[t_ids[i]] for i in np.flatnonzero(a.teacher_chunk >= 0))
    assert labelled.decode("utf-8") in text and a.chunk_bytes.sum() == len(labelled)
    for c in range(a.chunks):
        t_bytes = b"".join(t_table[t_ids[i]] for i in np.flatnonzero(a.teacher_chunk == c))
        s_bytes = b"".join(s_table[a.student_ids[i]] for i in np.flatnonzero(a.student_chunk == c))
        assert t_bytes == s_bytes and len(t_bytes) == a.chunk_bytes[c] > 0
    # Chunks are contiguous runs on both sides, numbered in text order.
    for chunk in (a.teacher_chunk, a.student_chunk):
        inside = chunk[chunk >= 0]
        assert (np.diff(inside) >= 0).all() and set(inside) == set(range(a.chunks))


@pytest.mark.parametrize("name", ["qwen3", "gemma3"])
def test_real_tokenizers_equal_gold(name):
    text = " ".join(TRICKY)
    a, _, t_lengths, _, s_table = student_alignment(name, text)
    t_in = np.flatnonzero(a.teacher_chunk >= 0)
    s_in = np.flatnonzero(a.student_chunk >= 0)
    s_lengths = [len(s_table[i]) for i in a.student_ids[s_in]]
    s_groups, t_groups = _align_by_byte_offsets(offsets(s_lengths), offsets(t_lengths[t_in]))
    assert [(a.teacher_chunk[t_in] == c).nonzero()[0].tolist() for c in range(a.chunks)] == t_groups
    assert [(a.student_chunk[s_in] == c).nonzero()[0].tolist() for c in range(a.chunks)] == s_groups
    assert 0 < a.one_to_one().sum() < a.chunks  # different tokenizers: some chunks, not all, 1:1


def test_gemma_byte_fallback_tokens_align():
    a, *_ , s_table = student_alignment("gemma3", TRICKY[4])
    fallback = [i for i in a.student_ids if len(s_table[i]) == 1 and s_table[i][0] >= 0x80]
    assert fallback, "the rare characters should need Gemma's <0xNN> byte-fallback tokens"
    assert (a.student_chunk[np.isin(a.student_ids, fallback)] >= 0).all()


def test_identical_tokenizers_give_one_to_one_chunks():
    a, t_ids, *_ = student_alignment("teacher", " ".join(TRICKY))
    assert a.one_to_one().all()
    np.testing.assert_array_equal(a.student_ids, t_ids)
    np.testing.assert_array_equal(a.student_chunk, a.teacher_chunk)


def test_a_student_that_cannot_encode_the_text_is_refused():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE({"a": 0, "b": 1, "[UNK]": 2}, [], unk_token="[UNK]"))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    table, _ = token_bytes_table(tok)
    assert render_student([TextRegion("text", 0, 3, True)], b"aba", tok, table).ids.tolist() == [0, 1, 0]
    with pytest.raises(AlignmentError, match=r"doc/w0 region 0 \(text\).*at byte 2 \('机', U\+673A"):
        render_student([TextRegion("text", 0, 5, True)], "ab机".encode(), tok, table, "doc/w0")


def test_teacher_tokens_straddling_a_region_are_refused():
    regions = [TextRegion("text", 0, 3, False), TextRegion("text", 3, 6, True)]

    class Student:
        ids = np.array([1, 2])
        region = np.array([0, 1], np.int32)
        byte_lengths = np.array([3, 3])

    with pytest.raises(AlignmentError, match="region 1 .*straddle"):
        align(np.array([2, 4]), regions, Student())


def chat_layout(messages):
    """A teacher chat's ids and layout, built by hand as the teacher stage stores it: every
    message's content a region (assistant contents labelled, with their end-of-turn token)."""
    require_teacher()
    tok, table, _ = tokenizer_and_table(str(TEACHER))
    ids = tok.apply_chat_template(messages, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    lengths = np.array([len(table[i]) for i in ids], np.int64)
    text, ends = b"".join(table[i] for i in ids), byte_ends(lengths)
    regions, cursor, labelled = [], 0, []
    for m in messages:
        start = text.index(m["content"].encode(), cursor)
        cursor = start + len(m["content"].encode())
        regions.append(TextRegion(m["role"], start, cursor, m["role"] == "assistant"))
        if m["role"] == "assistant":
            inside = np.flatnonzero((ends - lengths >= start) & (ends <= cursor) & (lengths > 0))
            labelled += inside.tolist() + [int(inside[-1]) + 1]  # and its <|im_end|>
    return tok, np.array(ids), lengths, regions, text, labelled


@pytest.mark.parametrize("name,eot", [("qwen3", "<|im_end|>"), ("gemma3", "<end_of_turn>")])
def test_chat_contents_align_and_end_of_turn_maps_to_the_students_own(name, eot):
    from pipeline.student.cross_tokenizer_batches import StudentSide

    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Name a prime 🙂"},
                {"role": "assistant", "content": "Seven: 7 is prime."},
                {"role": "user", "content": "和另一个?"},
                {"role": "assistant", "content": "Eleven (11)."}]
    t_tok, ids, lengths, regions, text, labelled = chat_layout(messages)
    s_tok, s_table, s_special = tokenizer_and_table(str(require_tokenizer(name)))
    side = StudentSide.build(s_tok, t_tok)
    student = render_student(regions, text, s_tok, s_table)
    a = align(lengths, regions, student, side.teacher_end_of_turn, ids, s_special)
    eot_id = s_tok.convert_tokens_to_ids(eot)
    assert sorted(np.flatnonzero(a.teacher_chunk >= 0).tolist()) == sorted(labelled)
    zero = np.flatnonzero(a.chunk_bytes == 0)
    assert len(zero) == 2  # one end-of-turn chunk per assistant turn
    for c in zero:
        assert a.student_ids[a.student_chunk == c].tolist() == [eot_id]
        assert t_tok.convert_ids_to_tokens(ids[a.teacher_chunk == c].tolist()) == ["<|im_end|>"]
    answer = b"".join(s_table[i] for i in a.student_ids[a.student_chunk >= 0])
    assert answer == "Seven: 7 is prime.Eleven (11).".encode()
