"""Read prompt sets (JSONL or Parquet), validate every record, and account for rejects.

Bad input never aborts a run and nothing is silently lost: every input record
ends up either accepted (a `Prompt`) or rejected (a `Reject` with its line
number and reason), and accepted + rejected == records read, exactly.

    >>> from pipeline.teacher.prompts import load_prompts
    >>> batch = load_prompts("data/prompts/demo.jsonl", tokenize=lambda msgs: [0] * 10,
    ...                      max_prompt_tokens=100)
    >>> len(batch.accepted) + len(batch.rejects) == batch.records_read
    True

`tokenize` turns a chat message list into token ids (the teacher stage passes
the tokenizer's chat template); it keeps this module free of any model.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

Messages = list[dict[str, str]]
Tokenize = Callable[[Messages], list[int]]


@dataclass(frozen=True)
class Prompt:
    """An accepted prompt: its id, input line, chat messages and rendered token ids."""

    id: str
    line: int
    messages: Messages
    token_ids: list[int]
    teacher_messages: Messages | None = None
    """The teacher's view of the prompt when it differs from the student's
    (`--teacher-system-prompt`, docs/teacher-context.md), else None."""
    teacher_token_ids: list[int] | None = None
    """`teacher_messages` rendered: what the engine generates behind."""

    @property
    def engine_token_ids(self) -> list[int]:
        """The ids the teacher generates behind: its own view's, else the stored prompt's."""
        return self.token_ids if self.teacher_token_ids is None else self.teacher_token_ids


@dataclass(frozen=True)
class Reject:
    """A rejected input record: 1-based line (or Parquet row), id if known, reason, detail."""

    line: int
    id: str | None
    reason: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "id": self.id, "reason": self.reason, "detail": self.detail}


@dataclass
class PromptBatch:
    """The outcome of reading one prompt file."""

    accepted: list[Prompt] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    records_read: int = 0

    def rejects_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self.rejects).items()))


class RecordError(ValueError):
    """A record is unusable; `reason` is the short machine-readable cause."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def iter_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line, record) pairs; a record that fails to parse is a RecordError instance."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for row, record in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield row, record
        return
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                yield line_no, json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                yield line_no, RecordError("malformed_json", f"line {line_no}: {exc}")


def record_id(record: Any) -> str:
    """The checked `id` of a parsed record (any mode), or raise RecordError."""
    if isinstance(record, RecordError):
        raise record
    if not isinstance(record, dict):
        raise RecordError("not_an_object", f"record is a {type(record).__name__}, not an object")
    rid = record.get("id")
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        raise RecordError("missing_id", "record has no `id`")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise RecordError("bad_id", f"`id` must be a string or integer, got {type(rid).__name__}")
    rid = str(rid)
    if "/" in rid:
        raise RecordError("bad_id", f"`id` {rid!r} contains '/', which separates sample indices")
    return rid


def with_system(messages: Messages, system_prompt: str | None) -> Messages:
    """`messages` behind the --system-prompt, unless they open with a system message."""
    if system_prompt and messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def with_teacher_system(messages: Messages, teacher_system_prompt: str) -> Messages:
    r"""The teacher's view of `messages` under --teacher-system-prompt: a system turn holding
    it, followed (after a blank line) by the chat's own system turn's content if it opens
    with one, so the teacher sees everything the student sees and the instructions too.

    >>> with_teacher_system([{"role": "user", "content": "hi"}], "Answer in French.")
    [{'role': 'system', 'content': 'Answer in French.'}, {'role': 'user', 'content': 'hi'}]
    >>> with_teacher_system([{"role": "system", "content": "Be brief."},
    ...                      {"role": "user", "content": "hi"}], "Answer in French.")[0]
    {'role': 'system', 'content': 'Answer in French.\n\nBe brief.'}
    """
    if messages and messages[0]["role"] == "system":
        own = messages[0]["content"]
        return [{"role": "system", "content": f"{teacher_system_prompt}\n\n{own}"}, *messages[1:]]
    return [{"role": "system", "content": teacher_system_prompt}, *messages]


def messages_of(record: Any, system_prompt: str | None) -> tuple[str, Messages]:
    """Return (id, chat messages) of a parsed record, or raise RecordError."""
    rid = record_id(record)
    if record.get("messages") is not None:
        messages = check_messages(record["messages"])
    elif record.get("prompt") is not None:
        messages = [{"role": "user", "content": nonempty_text(record, "prompt")}]
    else:
        raise RecordError("missing_prompt", "record has neither `prompt` nor `messages`")
    return rid, with_system(messages, system_prompt)


def nonempty_text(record: dict[str, Any], name: str) -> str:
    """The text field `name` of a record, or RecordError `bad_<name>` / `empty_<name>`."""
    value = record[name]
    if not isinstance(value, str):
        raise RecordError(f"bad_{name}", f"`{name}` must be text, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(f"empty_{name}", f"`{name}` is empty or whitespace")
    return value


def check_messages(messages: Any) -> Messages:
    """Validate a chat list of {role, content} objects with at least one non-empty content."""
    if not isinstance(messages, list) or not messages:
        raise RecordError("bad_messages", "`messages` must be a non-empty list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) \
                or not isinstance(msg.get("content"), str):
            raise RecordError("bad_messages", f"messages[{i}] needs string `role` and `content`")
    if not any(m["content"].strip() for m in messages):
        raise RecordError("empty_prompt", "every message in `messages` is empty or whitespace")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def load_prompts(path: str | Path, tokenize: Tokenize, max_prompt_tokens: int,
                 system_prompt: str | None = None, limit: int | None = None,
                 owns: Callable[[str | None, int], bool] | None = None,
                 teacher_system_prompt: str | None = None) -> PromptBatch:
    """Read, validate and tokenize the prompts of `path` (generate mode); see `read_records`.
    With `teacher_system_prompt` each prompt also carries the teacher's view
    (`with_teacher_system`), which must fit as well."""
    def parse(line: int, rid: str, record: dict[str, Any]) -> Prompt:
        _, messages = messages_of(record, system_prompt)
        token_ids = fitting(tokenize(messages), "prompt")
        if teacher_system_prompt is None:
            return Prompt(rid, line, messages, list(token_ids))
        teacher = with_teacher_system(messages, teacher_system_prompt)
        return Prompt(rid, line, messages, list(token_ids), teacher,
                      list(fitting(tokenize(teacher), "the teacher's prompt")))

    def fitting(token_ids: list[int], what: str) -> list[int]:
        if len(token_ids) > max_prompt_tokens:
            raise RecordError(
                "too_long", f"{what} has {len(token_ids)} tokens; at most {max_prompt_tokens} "
                "fit (max_model_len - max_tokens)")
        return token_ids

    return read_records(path, parse, limit, owns)


def read_records(path: str | Path, parse: Callable[[int, str, dict[str, Any]], Any],
                 limit: int | None = None,
                 owns: Callable[[str | None, int], bool] | None = None) -> PromptBatch:
    """Read the records of `path` (the first `limit` if given), accepting what
    `parse(line, id, record)` returns and rejecting what it raises RecordError for.

    The first of duplicate ids wins; later ones are rejected. `owns(id, line)`
    selects this worker's records (see `pipeline.teacher.partition`); the others are
    skipped before parsing and not counted.
    """
    batch = PromptBatch()
    seen: dict[str, int] = {}
    for position, (line, record) in enumerate(iter_records(path)):
        if limit is not None and position >= limit:
            break
        rid = record.get("id") if isinstance(record, dict) else None
        rid = None if rid is None else str(rid)
        if owns is not None and not owns(rid, line):
            continue
        batch.records_read += 1
        try:
            rid = record_id(record)
            if rid in seen:
                raise RecordError("duplicate_id", f"id {rid!r} already used on line {seen[rid]}")
            item = parse(line, rid, record)
        except RecordError as exc:
            batch.rejects.append(Reject(line, rid, exc.reason, str(exc)))
            continue
        seen[rid] = line
        batch.accepted.append(item)
    return batch


class NoUsableInput(ValueError):
    """No record of the input file could be used; the message says why, by reason."""


def require_accepted(batch: PromptBatch, path: str | Path, rejects_path: str | Path) -> None:
    """Refuse an input none of whose records is usable (random bytes, the wrong format)."""
    if batch.accepted:
        return
    if not batch.records_read:
        raise NoUsableInput(f"{path}: no records (an empty file, or --limit/--worker-index "
                            "left this worker none)")
    reasons = ", ".join(f"{r} {n}" for r, n in batch.rejects_by_reason().items())
    raise NoUsableInput(f"{path}: none of its {batch.records_read} records is usable "
                        f"(rejected: {reasons}); each reason is in {rejects_path}")


def write_rejects(path: str | Path, rejects: list[Reject]) -> None:
    """Write rejects as JSONL (one object per reject, in input order)."""
    with Path(path).open("w") as fh:
        for r in rejects:
            fh.write(json.dumps(r.to_json()) + "\n")
