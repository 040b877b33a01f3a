"""Each sample's text layout (schema v3): token byte lengths from ids, and its text regions.

A sample's *teacher text* is its tokens' UTF-8 bytes concatenated, special tokens
contributing none (`pipeline.store.text_layout`). The regions say where in it
the record's own text lies:

- generated sample: each prompt message's content (its role, unlabelled), then the
  completion (`completion`, labelled: every completion token has a label row);
- scored chat: each message's content, assistant contents labelled; a
  prompt/completion record: `prompt`, then `completion` (labelled);
- scored document window: the context it repeats (`text`, unlabelled), then its
  new tokens (`text`, labelled);
- a record given as token ids (`kd student-samples`): its prompt messages, then
  the completion ids' bytes (`completion`, labelled).

**Locating a message.** The chat template puts markup around each content, so
each content is searched for, byte for byte, in the teacher text from a cursor
that starts at 0 and moves to the end of each located content (messages are
located in order, never overlapping). A template that trims a content (e.g.
strips its surrounding whitespace) is met by a second search for the content
with its whitespace stripped. A content found neither way is refused:
`RecordError("content_not_located")` (the record is rejected, its line named).
The search takes the first match after the cursor, so a content that also
occurs in the markup before it (a user message that reads `user`) is located
in the markup: the region then has the right bytes, not the right place.

**Labelled regions are covered.** A scored chat labels the tokens that start
inside an assistant turn (`pipeline.teacher.score_records`); a token that starts
before a content and ends inside it (merged with the template's markup) is
added to the labelled positions, so every token with a byte in a labelled region
has a label row. Such a token at position 0 (no context to label it from)
refuses the record (`unlabelled_region_token`).

    >>> tb = TokenBytes([b"", b"Hi", b" there", b"!", b"user\\n"])  # id 0: a special token
    >>> lengths, regions = generated_layout(tb, [{"role": "user", "content": "Hi"}], [0, 4, 1, 0], [2, 3])
    >>> lengths.tolist(), [(r.role, r.start, r.end, r.labelled) for r in regions]
    ([0, 5, 2, 0, 6, 1], [('user', 5, 7, False), ('completion', 7, 14, True)])
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pipeline.store.text_layout import TextRegion, token_bytes_table
from pipeline.store.text_layout_datasets import labelled_region_tokens, lengths_of_ids
from pipeline.teacher.prompts import Messages, RecordError


class TokenBytes:
    """Every id's UTF-8 bytes in the teacher's tokenizer (special tokens: b"")."""

    def __init__(self, table: Sequence[bytes]):
        self.table = list(table)
        self.lengths = np.asarray([len(b) for b in self.table], np.int64)

    @classmethod
    def of(cls, tokenizer: Any) -> "TokenBytes":
        return cls(token_bytes_table(tokenizer)[0])

    def byte_lengths(self, ids: Sequence[int]) -> np.ndarray:
        """(tokens,) byte length of each id (`lengths_of_ids`: past the tokenizer, 0)."""
        return lengths_of_ids(self.lengths, ids)

    def text(self, ids: Sequence[int]) -> bytes:
        return b"".join(self.table[i] if i < len(self.table) else b"" for i in ids)


def locate_messages(text: bytes, messages: Messages, labelled_roles: Sequence[str] = (),
                    roles: dict[str, str] | None = None, cursor: int = 0) -> list[TextRegion]:
    """Each message's content as a region of `text`, in order (module docstring: the rule)."""
    regions = []
    for i, message in enumerate(messages):
        at, found = -1, b""
        for candidate in dict.fromkeys((message["content"], message["content"].strip())):
            found = candidate.encode("utf-8")
            at = text.find(found, cursor)
            if at >= 0:
                break
        if at < 0:
            raise RecordError("content_not_located", f"messages[{i}] ({message['role']}): its "
                              f"content is not in the rendered chat after byte {cursor}, even "
                              "stripped of surrounding whitespace (a template that rewrites it)")
        role = (roles or {}).get(message["role"], message["role"])
        regions.append(TextRegion(role, at, at + len(found), message["role"] in labelled_roles))
        cursor = at + len(found)
    return regions


def generated_layout(tb: TokenBytes, messages: Messages, prompt_ids: Sequence[int],
                     completion_ids: Sequence[int], roles: dict[str, str] | None = None
                     ) -> tuple[np.ndarray, list[TextRegion]]:
    """(byte lengths, regions) of a generated sample (or a record given as token ids)."""
    lengths = tb.byte_lengths([*prompt_ids, *completion_ids])
    prompt_bytes = int(lengths[:len(prompt_ids)].sum())
    regions = locate_messages(tb.text(prompt_ids), messages, roles=roles)
    return lengths, regions + [TextRegion("completion", prompt_bytes, int(lengths.sum()), True)]


def window_layout(tb: TokenBytes, ids: Sequence[int], first: int) -> tuple[np.ndarray, list[TextRegion]]:
    """(byte lengths, regions) of a scored window whose tokens from `first` on are labelled."""
    lengths = tb.byte_lengths(ids)
    context = int(lengths[:first].sum())
    return lengths, [TextRegion("text", 0, context, False),
                     TextRegion("text", context, int(lengths.sum()), True)]


def chat_layout(tb: TokenBytes, ids: Sequence[int], messages: Messages, positions: Sequence[int],
                roles: dict[str, str] | None = None
                ) -> tuple[np.ndarray, list[TextRegion], list[int]]:
    """(byte lengths, regions, labelled positions) of a scored chat: assistant contents
    labelled, `positions` grown by any token that reaches into one (module docstring)."""
    lengths = tb.byte_lengths(ids)
    regions = locate_messages(tb.text(ids), messages, ("assistant",), roles)
    covering = labelled_region_tokens(lengths, regions).tolist()
    if covering and covering[0] == 0:
        raise RecordError("unlabelled_region_token", "the chat's first token has bytes of an "
                          "assistant content, and the first token has no label row")
    return lengths, regions, sorted(set(positions) | set(covering))
