"""Rebuild an older sample's text layout from its token ids alone (`kd add-text-layout`).

An output written before schema v3 stores no messages, only token ids. Their
structure is read back from ChatML markers, the chat format of SmolLM2 and
Qwen: `<|im_start|>ROLE\\nCONTENT<|im_end|>`. A message's region is its
CONTENT (from the byte after the first newline that follows `<|im_start|>` up to
the start of `<|im_end|>`), its role the text before that newline.

- a generated sample: its prompt's closed messages (unlabelled; the template's
  own default system message included, since it is in the ids), the open
  `<|im_start|>assistant\\n` generation prompt dropped, then the completion
  (`completion`, labelled);
- a scored sample whose ids hold `<|im_start|>`: a chat, every message a region,
  assistant contents labelled (a trailing message cut without `<|im_end|>` runs
  to the end of the text); records once given as `prompt` + `completion` come
  back as `user` + `assistant` (the record's form is not stored);
- any other scored sample: a document window, context then labelled tokens
  (`text`), as `pipeline.teacher.text_layouts.window_layout`.

A prompt without ChatML markers, a header without its newline, or a chat whose
labelled content holds a token without a label row is refused with
`LayoutUnparsable`, naming the sample (and the token position).

    >>> from pipeline.teacher.text_layouts import TokenBytes
    >>> tb = TokenBytes([b"", b"", b"user\\n", b"Hi", b"assistant\\n", b"Yo", b"!"])  # 0, 1: markers
    >>> markers = ChatMarkers(start=0, end=1)
    >>> ids = [0, 2, 3, 1, 0, 4, 5, 6, 1]   # user: Hi; assistant: Yo! (generated, 6 prompt tokens)
    >>> _, regions = upgraded_layout(tb, markers, "t/0", ids, 6, list(range(6, 9)), "generate")
    >>> [(r.role, r.start, r.end, r.labelled) for r in regions]
    [('user', 5, 7, False), ('completion', 17, 20, True)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline.store.text_layout import TextRegion, byte_ends
from pipeline.store.text_layout_datasets import first_uncovered_token
from pipeline.teacher.text_layouts import TokenBytes, window_layout

CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"


class LayoutUnparsable(ValueError):
    """A sample's ids cannot be read back as a chat; the message names the sample and why."""


@dataclass(frozen=True)
class ChatMarkers:
    """The ids of ChatML's `<|im_start|>` and `<|im_end|>` in the teacher's vocabulary."""

    start: int
    end: int

    @classmethod
    def of(cls, tokenizer: Any) -> "ChatMarkers | None":
        """The tokenizer's ChatML markers, or None when it has none (another chat format)."""
        vocab = tokenizer.get_vocab()
        if CHATML_START in vocab and CHATML_END in vocab:
            return cls(vocab[CHATML_START], vocab[CHATML_END])
        return None


def chatml_messages(tb: TokenBytes, markers: ChatMarkers, ids: Sequence[int], sid: str
                    ) -> list[tuple[str, int, int, bool]]:
    """(role, content start, content end, closed) of every ChatML message in `ids`."""
    lengths = tb.byte_lengths(ids)
    ends = byte_ends(lengths)
    text = tb.text(ids)
    messages: list[tuple[str, int, int, bool]] = []
    opened: int | None = None  # the position of the open message's <|im_start|>
    for t, token in enumerate(ids):
        if token == markers.start:
            if opened is not None:
                raise LayoutUnparsable(f"sample {sid} token position {t}: {CHATML_START} inside "
                                       "an unclosed message")
            opened = t
        elif token == markers.end and opened is not None:
            messages.append(header_split(text, int(ends[opened]), int(ends[t] - lengths[t]),
                                         sid, opened) + (True,))
            opened = None
    if opened is not None:
        messages.append(header_split(text, int(ends[opened]), len(text), sid, opened) + (False,))
    return messages


def header_split(text: bytes, start: int, end: int, sid: str, t: int) -> tuple[str, int, int]:
    """(role, content start, content end) of a message whose bytes are text[start:end]."""
    newline = text.find(b"\n", start, end)
    if newline < 0:
        raise LayoutUnparsable(f"sample {sid} token position {t}: a ChatML message without the "
                               "newline that ends its role header")
    return text[start:newline].decode("utf-8", "replace").strip(), newline + 1, end


def upgraded_layout(tb: TokenBytes, markers: ChatMarkers | None, sid: str, ids: Sequence[int],
                    prompt_length: int, positions: Sequence[int], mode: str
                    ) -> tuple[np.ndarray, list[TextRegion]]:
    """(byte lengths, regions) of one stored sample (module docstring: the rules)."""
    lengths = tb.byte_lengths(ids)
    is_chat = markers is not None and markers.start in ids
    if mode != "generate" and not is_chat:
        return window_layout(tb, ids, prompt_length)
    if not is_chat:
        raise LayoutUnparsable(f"sample {sid}: its prompt holds no {CHATML_START}: only ChatML "
                               "chats (SmolLM2, Qwen) are parsed back from ids")
    if mode == "generate":
        found = chatml_messages(tb, markers, ids[:prompt_length], sid)
        prompt_bytes = int(lengths[:prompt_length].sum())
        regions = [TextRegion(role, a, b, False) for role, a, b, closed in found if closed]
        regions.append(TextRegion("completion", prompt_bytes, int(lengths.sum()), True))
        return lengths, regions
    regions = [TextRegion(role, a, b, role == "assistant")
               for role, a, b, _ in chatml_messages(tb, markers, ids, sid)]
    t = first_uncovered_token(lengths, regions, positions)
    if t is not None:
        raise LayoutUnparsable(f"sample {sid} token position {t}: bytes of an assistant content "
                               "without a label row")
    return lengths, regions
