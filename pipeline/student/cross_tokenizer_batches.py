"""Batches for a student of another tokenizer: its own tokens, chunks, and the teacher's labels per chunk.

A sample's teacher text layout (`samples/token_byte_lengths`, `samples/text_regions`,
`pipeline.store.text_layout`) is aligned with the student's own tokens of the same
text (`pipeline.student.token_alignment`), once per sample and student tokenizer:
`AlignmentCache` keeps the alignments of a shard in one `.npz` beside the student's
run (never in the label set), so a resumed or second run reads them back. An output
without the layout is refused, naming `kd add-text-layout OUT`.

`collate_cross` gives, for B samples (flat indices b * S + s into the (B, S) grid):
- `input_ids`, `attention_mask` (B, S): the student's tokens, right-padded;
- `loss_rows` (N,): positions predicting a student token inside a chunk,
  `target_ids` (N,) those tokens, `row_chunk` (N,) their chunk (numbered over the batch);
- `chunk_teacher_logprobs` (C,): the sum of the teacher's stored sampled logprobs of
  each chunk's tokens; `chunk_bytes` (C,) its labelled bytes;
- `one_rows` (M,): indices into the N rows of 1:1 chunks, with the teacher's top-k
  there in student ids (`one_teacher_ids` (M, k), -1 where the teacher's token has
  no student counterpart) and `one_teacher_logprobs` (M, k);
- with `hidden_layers` (the labels store hidden states): `hidden_rows` (H,), the
  student's last token of each chunk, and `teacher_hidden` {absolute teacher layer:
  (H, hidden) float32}, the teacher's state at its last token of the same chunk
  (`Alignment.chunk_ends`), the keys the same-tokenizer hidden-state loss reads.

    >>> # side = StudentSide.build(student_tokenizer, teacher_tokenizer)
    >>> # batch = collate_cross(samples, [side.align(s, layout) for s, layout in ...], side.vocab_map)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pipeline.store.text_layout import TextRegion, decode_regions, token_bytes_table
from pipeline.student.cross_tokenizer_loss import byte_vocab_map
from pipeline.student.label_set import LabelSetError
from pipeline.student.token_alignment import Alignment, AlignmentError, align, render_student

TOKEN_BYTE_LENGTHS = "samples/token_byte_lengths"
TEXT_REGIONS = "samples/text_regions"
Layout = tuple[np.ndarray, list[TextRegion]]


class TextLayoutMissing(LabelSetError):
    """An output without the cross-tokenizer text layout; the message names the command adding it."""


def stored_layouts(reader: Any) -> list[Layout]:
    """Every sample's (token byte lengths, regions) of a shard, from its stored datasets."""
    if len(reader) == 0:  # every sample dropped: the writer stores no layout datasets
        return []
    if TOKEN_BYTE_LENGTHS not in reader.arrays:
        out = reader.path.parent
        raise TextLayoutMissing(f"{reader.path}: no {TOKEN_BYTE_LENGTHS} / {TEXT_REGIONS} (written "
                                f"before cross-tokenizer labels): run `kd add-text-layout {out}` "
                                "to add them from the ids and the teacher's tokenizer")
    offsets = np.asarray(reader.arrays["samples/offsets"], np.int64)
    lengths = reader.arrays[TOKEN_BYTE_LENGTHS]
    regions = reader.strings(TEXT_REGIONS)
    return [(np.asarray(lengths[offsets[i]:offsets[i + 1]], np.int64), decode_regions(regions[i]))
            for i in range(len(regions))]


def end_of_turn_id(tokenizer: Any, special: np.ndarray) -> int | None:
    """The special token a tokenizer's chat template closes an assistant turn with (else EOS)."""
    if getattr(tokenizer, "chat_template", None):
        chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "zz"}]
        ids = tokenizer.apply_chat_template(chat, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        text = [tokenizer.decode([i]) for i in ids]
        after = max((j for j, t in enumerate(text) if "zz" in t), default=None)
        if after is not None:
            nxt = [i for i in ids[after + 1:] if special[i]]
            if nxt:
                return int(nxt[0])
    return tokenizer.eos_token_id


@dataclass
class StudentSide:
    """What aligning needs of the student's tokenizer, and of the teacher's."""

    tokenizer: Any
    table: list[bytes]
    special: np.ndarray
    fingerprint: str
    teacher_table: list[bytes]
    teacher_end_of_turn: frozenset[int]
    vocab_map: np.ndarray
    """(teacher vocabulary,) student id of each teacher token's byte string, -1 where none."""

    @classmethod
    def build(cls, student_tokenizer: Any, teacher_tokenizer: Any) -> "StudentSide":
        from pipeline.store.fingerprint import tokenizer_fingerprint

        table, special = token_bytes_table(student_tokenizer)
        t_table, t_special = token_bytes_table(teacher_tokenizer)
        t_eot = {i for i in (end_of_turn_id(teacher_tokenizer, t_special),
                             teacher_tokenizer.eos_token_id) if i is not None}
        vocab = student_tokenizer.get_vocab()
        fallback = np.zeros(len(table), bool)
        fallback[[i for t, i in vocab.items() if i < len(table) and len(t) == 6
                  and t.startswith("<0x") and t.endswith(">")]] = True
        vocab_map = byte_vocab_map(t_table, table, sorted(t_eot),
                                   end_of_turn_id(student_tokenizer, special), fallback)
        return cls(student_tokenizer, table, special, tokenizer_fingerprint(student_tokenizer),
                   t_table, frozenset(t_eot), vocab_map)

    def align(self, sample: dict[str, Any], layout: Layout, where: str = "sample") -> Alignment:
        """The sample's chunks; its teacher text is its tokens' bytes, checked against the layout."""
        lengths, regions = layout
        ids = np.asarray(sample["token_ids"], np.int64)
        pieces = [self.teacher_table[i] for i in ids]
        mine = np.fromiter(map(len, pieces), np.int64, len(pieces))
        if len(lengths) != len(ids) or (mine != lengths).any():
            at = int(np.flatnonzero(mine != lengths)[0]) if len(lengths) == len(ids) else len(ids)
            raise AlignmentError(f"{where}: {TOKEN_BYTE_LENGTHS} disagrees with the token ids at "
                                 f"position {at} (kd verify the output)")
        student = render_student(regions, b"".join(pieces), self.tokenizer, self.table, where)
        return align(lengths, regions, student, self.teacher_end_of_turn, ids, self.special, where)


class AlignmentCache:
    """Alignments of whole shards for one student tokenizer, in `<dir>/<fingerprint>/<shard>.npz`."""

    def __init__(self, root: str | Path | None, fingerprint: str):
        self.dir = None if root is None else Path(root) / fingerprint[:16]
        self.memory: dict[str, list[Alignment]] = {}

    def path(self, shard_path: str) -> Path | None:
        if self.dir is None:
            return None
        stat = os.stat(shard_path)  # a shard rewritten in place gets a new entry
        name = f"{Path(shard_path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        key = hashlib.sha256(name.encode()).hexdigest()[:16]
        return self.dir / f"{Path(shard_path).stem}-{key}.npz"

    def shard(self, shard_path: str, compute: Callable[[], list[Alignment]]) -> list[Alignment]:
        """The shard's alignments: from memory, from the file, or computed and written once."""
        if shard_path in self.memory:
            return self.memory[shard_path]
        path = self.path(shard_path)
        if path is not None and path.is_file():
            found = unpack(np.load(path))
        else:
            found = compute()
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
                np.savez(tmp, **pack(found))
                os.replace(tmp, path)  # workers racing on one shard write the same bytes
        self.memory[shard_path] = found
        return found


FIELDS = ("student_ids", "student_chunk", "teacher_chunk", "chunk_bytes")


def pack(alignments: Sequence[Alignment]) -> dict[str, np.ndarray]:
    out = {}
    for name in FIELDS:
        parts = [getattr(a, name) for a in alignments]
        out[name] = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        out[name + "_offsets"] = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
    return out


def unpack(data: Any) -> list[Alignment]:
    n = len(data["student_ids_offsets"]) - 1
    cut = {name: (data[name], data[name + "_offsets"]) for name in FIELDS}
    return [Alignment(*(cut[f][0][cut[f][1][i]:cut[f][1][i + 1]] for f in FIELDS))
            for i in range(n)]


def collate_cross(samples: list[dict[str, Any]], alignments: list[Alignment],
                  vocab_map: np.ndarray, where: Sequence[str] | None = None,
                  hidden_layers: Sequence[int] = ()) -> dict[str, Any]:
    """Tensors of one batch for the cross-tokenizer losses (keys in the module docstring)."""
    width = max(len(a.student_ids) for a in alignments)
    ids = np.zeros((len(samples), width), np.int64)
    mask = np.zeros_like(ids)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (
        "loss_rows", "target_ids", "row_chunk", "chunk_teacher_logprobs", "chunk_bytes",
        "one_rows", "one_teacher_ids", "one_teacher_logprobs")}
    hidden_rows: list[np.ndarray] = []
    hidden: dict[int, list[np.ndarray]] = {layer: [] for layer in hidden_layers}
    chunks = rows = 0
    for b, (s, a) in enumerate(zip(samples, alignments)):
        name = where[b] if where else f"sample {b}"
        n = len(a.student_ids)
        ids[b, :n], mask[b, :n] = a.student_ids, 1
        s_tok = np.flatnonzero(a.student_chunk >= 0)
        parts["loss_rows"].append(b * width + s_tok - 1)
        parts["target_ids"].append(a.student_ids[s_tok])
        parts["row_chunk"].append(chunks + a.student_chunk[s_tok].astype(np.int64))
        label_row = np.full(len(a.teacher_chunk), -1, np.int64)
        label_row[np.asarray(s["positions"], np.int64)] = np.arange(len(s["positions"]))
        t_tok = np.flatnonzero(a.teacher_chunk >= 0)
        if (label_row[t_tok] < 0).any():
            bad = int(t_tok[label_row[t_tok] < 0][0])
            raise AlignmentError(f"{name}: teacher token {bad} lies in a labelled region but has "
                                 "no label row")
        sampled = np.asarray(s["sampled_logprobs"], np.float64)[label_row[t_tok]]
        parts["chunk_teacher_logprobs"].append(
            np.bincount(a.teacher_chunk[t_tok], sampled, minlength=a.chunks))
        parts["chunk_bytes"].append(a.chunk_bytes.astype(np.int64))
        one = np.flatnonzero(a.one_to_one())
        s_of = np.full(a.chunks, -1, np.int64)
        s_of[a.student_chunk[s_tok]] = np.arange(len(s_tok))
        t_of = np.full(a.chunks, -1, np.int64)
        t_of[a.teacher_chunk[t_tok]] = label_row[t_tok]
        parts["one_rows"].append(rows + s_of[one])
        parts["one_teacher_ids"].append(vocab_map[np.asarray(s["topk_ids"], np.int64)[t_of[one]]])
        parts["one_teacher_logprobs"].append(np.asarray(s["topk_logprobs"], np.float32)[t_of[one]])
        if hidden_layers:
            s_end, t_end = a.chunk_ends()
            hidden_rows.append(b * width + s_end)
            for layer in hidden_layers:
                hidden[layer].append(np.asarray(s[f"hidden_{layer}"][t_end], np.float32))
        chunks += a.chunks
        rows += len(s_tok)
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    for key, dtype in (("loss_rows", torch.int64), ("target_ids", torch.int64),
                       ("row_chunk", torch.int64), ("chunk_teacher_logprobs", torch.float32),
                       ("chunk_bytes", torch.int64), ("one_rows", torch.int64),
                       ("one_teacher_ids", torch.int64), ("one_teacher_logprobs", torch.float32)):
        batch[key] = torch.from_numpy(cat[key]).to(dtype)
    if hidden_layers:
        batch["hidden_rows"] = torch.from_numpy(np.concatenate(hidden_rows)).to(torch.int64)
        batch["teacher_hidden"] = {layer: torch.from_numpy(np.concatenate(v))
                                   for layer, v in hidden.items()}
    return batch
