"""Align a teacher's stored tokens with a student's own tokens of the same text, by bytes.

Both sides are byte strings of the same text (`pipeline.store.text_layout`). Inside
each labelled region, a **chunk** is a shortest span that starts and ends on the
same byte on both sides: its boundaries are the byte offsets where both
tokenisations end a token (the two-pointer walk over end offsets of TRL GOLD's
`ULDLoss._align_by_byte_offsets`, here as an intersection of the two sets of ends).
The student renders the sample itself (`render_student`):

- each region's text is tokenised on its own (plain text, never the chat template's
  markup), so both sides have a token boundary at every region edge and no student
  token straddles one: every labelled byte lies in exactly one chunk;
- chat regions (a message role) are laid out by the student's own chat template;
  its markup between contents is context only and never labelled;
- a special token the teacher labels (it has no bytes) is an end-of-turn marker when
  it is the teacher's EOS/end-of-turn token right after a labelled region: it pairs
  with the first token of the student's markup after the same content when that is a
  special token (the student's own end-of-turn), a 0-byte chunk; any other special
  token has no counterpart and carries no loss;
- a chunk whose first student token is the sequence's first token has no student
  prediction and is dropped (never the case after the student's BOS or any context).

A student tokenizer must encode every region byte-for-byte (its tokens' bytes, by
`token_bytes_table`, concatenate to the text; text its normaliser would change is
tokenised in pieces cut before each combining mark); otherwise `render_student` raises
`AlignmentError` naming the sample, the byte offset and the characters it loses.

    >>> import numpy as np
    >>> chunk_ids(np.array([2, 5, 6]), np.array([1, 2, 4, 6]))   # "ab|cde|f" vs "a|b|cd|ef"
    (array([0, 1, 1]), array([0, 0, 1, 1]))
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline.store.text_layout import TextRegion, byte_ends
from pipeline.student.label_set import LabelSetError

PLAIN_ROLES = ("text", "prompt", "completion")
"""Region roles rendered as plain text; any other role is a chat message's."""


class AlignmentError(LabelSetError):
    """A sample cannot be aligned; the message names the sample and what fails (a refusal
    of the labels for this student, printed as one line)."""


def chunk_ids(teacher_ends: np.ndarray, student_ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chunk index of every token on both sides, from strictly increasing end offsets
    that share the last one (the same text): chunk c closes at the c-th common end."""
    common = np.intersect1d(teacher_ends, student_ends, assume_unique=True)
    return (np.searchsorted(common, teacher_ends, side="left"),
            np.searchsorted(common, student_ends, side="left"))


@dataclass
class StudentText:
    """The student's tokens of a sample, each tied to the region whose text it encodes."""

    ids: np.ndarray
    """(S,) int64 student token ids."""
    region: np.ndarray
    """(S,) int32 index of the region a token belongs to; -1 for the student's own markup."""
    byte_lengths: np.ndarray
    """(S,) int64 UTF-8 bytes of each token (0 for markup and special tokens)."""


@dataclass
class Alignment:
    """Which chunk every token of a sample belongs to (-1: no loss), on both sides."""

    student_ids: np.ndarray
    """(S,) int64: the student's input sequence."""
    student_chunk: np.ndarray
    """(S,) int32 chunk of each student token, -1 outside every labelled region."""
    teacher_chunk: np.ndarray
    """(T,) int32 chunk of each teacher token, -1 outside every labelled region."""
    chunk_bytes: np.ndarray
    """(C,) int32 labelled bytes of each chunk (0 for an end-of-turn chunk)."""

    @property
    def chunks(self) -> int:
        return len(self.chunk_bytes)

    def one_to_one(self) -> np.ndarray:
        """(C,) bool: chunks of exactly one token on both sides (the same byte string)."""
        s = np.bincount(self.student_chunk[self.student_chunk >= 0], minlength=self.chunks)
        t = np.bincount(self.teacher_chunk[self.teacher_chunk >= 0], minlength=self.chunks)
        return (s == 1) & (t == 1)

    def chunk_ends(self) -> tuple[np.ndarray, np.ndarray]:
        """(student index, teacher index) of the last token of every chunk with tokens on both
        sides, in chunk order: there both models have read exactly the same text, so their
        hidden states are comparable (hidden-state alignment at chunk ends, as ALM does).

        >>> a = Alignment(np.zeros(4, np.int64), np.array([-1, 0, 1, 1]), np.array([0, 0, 1, -1]),
        ...               np.array([2, 3]))
        >>> [x.tolist() for x in a.chunk_ends()]
        [[1, 3], [1, 2]]
        """
        s, t = last_token_of_chunk(self.student_chunk, self.chunks), \
            last_token_of_chunk(self.teacher_chunk, self.chunks)
        both = (s >= 0) & (t >= 0)
        return s[both], t[both]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"student_ids": self.student_ids, "student_chunk": self.student_chunk,
                "teacher_chunk": self.teacher_chunk, "chunk_bytes": self.chunk_bytes}


def last_token_of_chunk(chunk: np.ndarray, chunks: int) -> np.ndarray:
    """(chunks,) index of the last token in each chunk, -1 for a chunk with none."""
    last = np.full(chunks, -1, np.int64)
    inside = np.flatnonzero(chunk >= 0)
    np.maximum.at(last, np.asarray(chunk)[inside].astype(np.int64), inside)
    return last


def encode_exactly(tokenizer: Any, table: Sequence[bytes], text: bytes, where: str) -> list[int]:
    """Plain-text ids of `text` whose bytes concatenate back to it; AlignmentError otherwise.

    A normaliser may change text (Qwen's NFC composes e + U+0301 into é): such text
    is tokenised in pieces cut before each combining mark, which no normaliser joins.
    """
    ids = plain_ids(tokenizer, text.decode("utf-8"))
    if b"".join(table[i] for i in ids) != text:
        ids = [i for piece in combining_pieces(text.decode("utf-8"))
               for i in plain_ids(tokenizer, piece)]
    got = b"".join(table[i] for i in ids)
    if got != text:
        at = next((i for i, (a, b) in enumerate(zip(got, text)) if a != b), min(len(got), len(text)))
        while at and (text[at] & 0xC0) == 0x80:  # back to the start of the character
            at -= 1
        lost = text[at:at + 4].decode("utf-8", errors="ignore")[:1] or "?"
        raise AlignmentError(f"{where}: the student tokenizer cannot encode the text byte-for-byte: "
                             f"at byte {at} ({lost!r}, U+{ord(lost):04X}) its tokens give other "
                             "bytes (an unknown token, or a normaliser that changes the text)")
    return ids


def plain_ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def combining_pieces(text: str) -> list[str]:
    """`text` cut before every combining mark."""
    cuts = [0] + [i for i, c in enumerate(text) if i and unicodedata.combining(c)] + [len(text)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:])]


def student_segments(regions: list[TextRegion], text: bytes, tokenizer: Any
                     ) -> list[tuple[int, bytes]]:
    """(region index or -1 for markup, bytes) in the student's order; markup is chat-template text."""
    if all(r.role in PLAIN_ROLES for r in regions):
        lead = [(-1, tokenizer.bos_token.encode())] if adds_bos(tokenizer) else []
        return lead + [(i, text[r.start:r.end]) for i, r in enumerate(regions)]
    messages = [{"role": r.role, "content": text[r.start:r.end].decode("utf-8")}
                for r in regions]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False).encode("utf-8")
    segments, cursor = [], 0
    for i, r in enumerate(regions):
        content = text[r.start:r.end]
        at = rendered.find(content, cursor)
        if at < 0:
            raise AlignmentError(f"message {i} ({r.role}): the student's chat template does not "
                                 "render its content verbatim")
        if at > cursor:
            segments.append((-1, rendered[cursor:at]))
        segments.append((i, content))
        cursor = at + len(content)
    if cursor < len(rendered):
        segments.append((-1, rendered[cursor:]))
    return segments


def adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def render_student(regions: list[TextRegion], text: bytes, tokenizer: Any,
                   table: Sequence[bytes], where: str = "sample") -> StudentText:
    """The student's tokens of the sample's text (see the module docstring for the layout)."""
    ids, owner = [], []
    for region, data in student_segments(regions, text, tokenizer):
        if region < 0:
            part = tokenizer(data.decode("utf-8"), add_special_tokens=False)["input_ids"]
        else:
            part = encode_exactly(tokenizer, table, data, f"{where} region {region} "
                                  f"({regions[region].role})")
        ids += part
        owner += [region] * len(part)
    lengths = np.array([len(table[i]) if r >= 0 else 0 for i, r in zip(ids, owner)], np.int64)
    return StudentText(np.array(ids, np.int64), np.array(owner, np.int32), lengths)


def align(teacher_byte_lengths: np.ndarray, regions: list[TextRegion], student: StudentText,
          teacher_end_of_turn: frozenset[int] = frozenset(),
          teacher_ids: np.ndarray | None = None, student_special: np.ndarray | None = None,
          where: str = "sample") -> Alignment:
    """Chunks of every labelled region (see the module docstring), numbered in text order."""
    t_lengths = np.asarray(teacher_byte_lengths, np.int64)
    t_ends = byte_ends(t_lengths)
    t_chunk = np.full(len(t_lengths), -1, np.int32)
    s_chunk = np.full(len(student.ids), -1, np.int32)
    chunk_bytes: list[np.ndarray] = []
    count = 0
    for i, r in enumerate(regions):
        if not r.labelled or r.end <= r.start:
            continue
        t_in = np.flatnonzero((t_ends - t_lengths >= r.start) & (t_ends <= r.end) & (t_lengths > 0))
        if t_lengths[t_in].sum() != r.end - r.start:
            raise AlignmentError(f"{where} region {i} ({r.role}): teacher tokens straddle its bytes "
                                 f"{r.start}..{r.end}")
        s_in = np.flatnonzero((student.region == i) & (student.byte_lengths > 0))
        s_ends = r.start + np.cumsum(student.byte_lengths[s_in])
        t_c, s_c = chunk_ids(t_ends[t_in], s_ends)
        t_chunk[t_in], s_chunk[s_in] = count + t_c, count + s_c
        n = int(t_c.max()) + 1
        closes = np.concatenate([[r.start], t_ends[t_in][np.r_[np.flatnonzero(np.diff(t_c)), -1]]])
        chunk_bytes.append(np.diff(closes))
        count += n
        eot = end_of_turn_pair(i, t_ends, t_lengths, r, student, teacher_end_of_turn,
                               teacher_ids, student_special)
        if eot is not None:
            t_chunk[eot[0]], s_chunk[eot[1]] = count, count
            chunk_bytes.append(np.zeros(1, np.int64))
            count += 1
    alignment = Alignment(student.ids, s_chunk, t_chunk,
                          np.concatenate(chunk_bytes or [np.zeros(0, np.int64)]).astype(np.int32))
    return drop_unpredictable(alignment)


def end_of_turn_pair(i: int, t_ends: np.ndarray, t_lengths: np.ndarray, r: TextRegion,
                     student: StudentText, teacher_end_of_turn: frozenset[int],
                     teacher_ids: np.ndarray | None, student_special: np.ndarray | None
                     ) -> tuple[int, int] | None:
    """(teacher token, student token) of the end-of-turn marker right after region i, if both."""
    if teacher_ids is None or student_special is None or not teacher_end_of_turn:
        return None
    after = np.flatnonzero((t_ends == r.end) & (t_lengths == 0))
    if not len(after) or int(teacher_ids[after[0]]) not in teacher_end_of_turn:
        return None
    mine = np.flatnonzero(student.region == i)
    nxt = int(mine[-1]) + 1 if len(mine) else -1
    if 0 <= nxt < len(student.ids) and student.region[nxt] < 0 and student_special[student.ids[nxt]]:
        return int(after[0]), nxt
    return None


def drop_unpredictable(a: Alignment) -> Alignment:
    """Drop a chunk that holds student token 0 (nothing precedes it to predict it from)."""
    if len(a.student_chunk) and a.student_chunk[0] >= 0:
        gone = a.student_chunk[0]
        a.student_chunk[a.student_chunk == gone] = -1
        a.teacher_chunk[a.teacher_chunk == gone] = -1
        a.chunk_bytes[gone] = 0
    return a
