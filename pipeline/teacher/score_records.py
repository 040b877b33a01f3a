"""Score-mode input: text, chats and prompt/completion pairs as token windows with labelled positions.

`kd teacher-labels --mode score` labels text a user already has. Each record
becomes one or more `ScoreItem`s (a sample to score: its tokens and which of
them carry labels):

- `{"id", "text"}`: every token after the first is labelled. A document longer
  than the window is cut into windows (`window_spans`); each later window
  repeats `overlap` tokens of the previous one as unlabelled context, so every
  token after the first is labelled exactly once. Items are `<id>/w0`, `<id>/w1`...
- `{"id", "messages"}`: a chat; only assistant turns are labelled (every turn,
  with its end-of-turn marker), the rest is context. Too long: rejected, never cut.
- `{"id", "prompt", "completion"}`: the chat [user prompt, assistant completion].
- Any of these with `prompt_token_ids` + `completion_token_ids` (and
  `tokenizer_fingerprint`, equal to the teacher's): `kd student-samples`
  records. The given ids are scored as they are, the completion's labelled,
  never the text re-tokenised (`pipeline.teacher.student_records` says why);
  their `student_logprobs`, if any, travel with the labels. Too long: rejected.

Which tokens belong to an assistant turn is found from the rendered text, not
guessed from token ids: the chat is rendered once, each assistant turn's
characters are located by rendering the chat up to it (the template must render
a chat's prefix as a prefix of the text), and a token is labelled when it
starts inside a turn. Tokenizing goes through `ScoreTokenizer`, so this module
needs no model (the teacher stage adapts a Hugging Face tokenizer).

    >>> from pipeline.teacher.score_records import window_spans
    >>> window_spans(10, width=4, overlap=1)    # (start, end, first labelled)
    [(0, 4, 1), (3, 7, 4), (6, 10, 7)]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from pipeline.teacher.prompts import (Messages, PromptBatch, RecordError, check_messages,
                                      nonempty_text, read_records, with_system)
from pipeline.teacher.student_records import check_token_fields
from pipeline.teacher.teacher_views import match_labelled, teacher_view
from pipeline.teacher.text_layouts import TokenBytes, chat_layout, generated_layout, window_layout

WINDOW_PREFIX = "w"
"""Sample ids of scored items: `<record id>/w<window>`."""


@dataclass(frozen=True)
class ScoreItem:
    """One sample to score: its tokens and the positions that get a label row."""

    record_id: str
    window: int
    token_ids: list[int]
    positions: list[int]
    """Labelled positions in `token_ids`, increasing, each >= 1 (position 0 has no context)."""
    student_logprobs: list[float] | None = None
    """One per labelled position: the sampling student's logprob of that token, if given."""
    byte_lengths: Any = None
    """(tokens,) UTF-8 bytes of each token (`pipeline.teacher.text_layouts`), or None when
    the tokenizer gives no byte table."""
    regions: Any = None
    """The item's `TextRegion`s (its text layout), or None likewise."""
    teacher_token_ids: list[int] | None = None
    """With a teacher context (`pipeline.teacher.teacher_views`): the teacher's rendering, which
    the engine scores; `token_ids` (the student's) are what is stored. None: the same."""
    teacher_positions: list[int] | None = None
    """The labelled positions in `teacher_token_ids`, one for each of `positions`."""
    teacher_context: str | None = None
    """JSON of the teacher's messages (`samples/teacher_contexts`), or None."""

    @property
    def sample_id(self) -> str:
        return f"{self.record_id}/{WINDOW_PREFIX}{self.window}"

    @property
    def engine_token_ids(self) -> list[int]:
        """What the engine scores: the teacher's rendering where it has its own."""
        return self.token_ids if self.teacher_token_ids is None else self.teacher_token_ids

    @property
    def engine_positions(self) -> list[int]:
        """The labelled positions in `engine_token_ids`."""
        return self.positions if self.teacher_positions is None else self.teacher_positions


@dataclass(frozen=True)
class ScoreRecord:
    """An accepted input record and the items it is scored as."""

    id: str
    line: int
    kind: str
    """`text`, `chat` or `completion`."""
    items: list[ScoreItem]


class ScoreTokenizer(Protocol):
    """What scoring needs of a tokenizer."""

    def render(self, messages: Messages, add_generation_prompt: bool) -> str:
        """The chat as text (the chat template, or a plain join for base models)."""

    def encode(self, text: str, add_special_tokens: bool) -> tuple[list[int], list[int]]:
        """Token ids and each token's start character in `text`."""

    fingerprint: str
    """`pipeline.store.fingerprint.tokenizer_fingerprint`: what records with token ids must name."""

    token_bytes: TokenBytes | None
    """Every id's bytes, for the text layout (`pipeline.teacher.text_layouts`); a tokenizer
    without it (None, or no such attribute) scores items without a layout."""


def window_spans(n_tokens: int, width: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, end, first labelled) per window over n_tokens: at most `width` tokens each,
    each later window starting `overlap` tokens before the previous end."""
    if not 1 <= overlap < width:
        raise ValueError(f"overlap must be in 1..{width - 1}, got {overlap}")
    spans = [(0, min(width, n_tokens), 1)]
    while spans[-1][1] < n_tokens:
        end = spans[-1][1]
        start = end - overlap
        spans.append((start, min(start + width, n_tokens), end))
    return spans


def text_items(rid: str, token_ids: Sequence[int], width: int, overlap: int,
               tb: TokenBytes | None = None) -> list[ScoreItem]:
    """A document's windows, each labelled from its first new token on (with `tb`: each
    window's context and new tokens as its text regions)."""
    items = []
    for j, (start, end, first) in enumerate(window_spans(len(token_ids), width, overlap)):
        ids = list(token_ids[start:end])
        lengths, regions = window_layout(tb, ids, first - start) if tb else (None, None)
        items.append(ScoreItem(rid, j, ids, list(range(first - start, end - start)),
                               byte_lengths=lengths, regions=regions))
    return items


def assistant_positions(tok: ScoreTokenizer, messages: Messages) -> tuple[list[int], list[int]]:
    """Token ids of the rendered chat and the positions of its assistant turns' tokens."""
    text = tok.render(messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tok.render(messages[:i], add_generation_prompt=True) if i else ""
        through = tok.render(messages[:i + 1], add_generation_prompt=False).rstrip()
        if not (text.startswith(before) and text.startswith(through)):
            raise RecordError("template_not_prefix", f"messages[{i}]: the chat template does not "
                              "render the chat up to this turn as a prefix of the whole chat, so "
                              "its tokens cannot be located")
        spans.append((len(before), len(through)))
    ids, starts = tok.encode(text, add_special_tokens=False)
    positions = [t for t, c in enumerate(starts) if t and any(a <= c < b for a, b in spans)]
    return ids, positions


def token_item(rid: str, prompt: list[int], completion: list[int],
               student_logprobs: list[float] | None, width: int) -> ScoreItem:
    """A record given as token ids: every completion token labelled, nothing re-tokenised."""
    ids = prompt + completion
    if len(ids) > width:
        raise RecordError("too_long", f"the record has {len(ids)} tokens; at most {width} fit "
                          "(--max-model-len - 1); token-id records are never cut")
    return ScoreItem(rid, 0, ids, list(range(len(prompt), len(ids))), student_logprobs)


def check_all_or_none(records: list[ScoreRecord]) -> None:
    """Refuse records of which some carry student logprobs and some do not (ValueError naming
    one of each): a shard stores them for every label row or for none."""
    carried = {r.items[0].student_logprobs is not None: r for r in records}
    if len(carried) == 2:
        a, b = carried[True], carried[False]
        raise ValueError(f"record {a.id!r} (line {a.line}) carries `student_logprobs` and record "
                         f"{b.id!r} (line {b.line}) does not: an output holds the student's "
                         "logprobs for every row or none; score them as two outputs")


def chat_item(rid: str, tok: ScoreTokenizer, messages: Messages, width: int,
              region_roles: dict[str, str] | None = None) -> ScoreItem:
    """A chat's item: assistant turns labelled; with a byte table, its text layout (regions
    named by `region_roles` where it renames a role)."""
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise RecordError("no_assistant_turn", "the chat has no assistant turn to label")
    empty = [i for i, m in enumerate(messages) if m["role"] == "assistant" and not m["content"].strip()]
    if empty:
        raise RecordError("empty_assistant_turn", f"messages[{empty[0]}] is an empty assistant turn")
    ids, positions = assistant_positions(tok, messages)
    if len(ids) > width:
        raise RecordError("too_long", f"the chat has {len(ids)} tokens; at most {width} fit "
                          "(--max-model-len - 1); chats are never cut")
    if not positions:
        raise RecordError("no_assistant_turn", "no token of the assistant turns survived tokenization")
    tb = getattr(tok, "token_bytes", None)
    if tb is None:
        return ScoreItem(rid, 0, ids, positions)
    lengths, regions, positions = chat_layout(tb, ids, messages, positions, region_roles)
    return ScoreItem(rid, 0, ids, positions, byte_lengths=lengths, regions=regions)


PROMPT_COMPLETION_ROLES = {"user": "prompt", "assistant": "completion"}
"""The regions of a `prompt` + `completion` record are named after its fields."""


def with_token_layout(item: ScoreItem, tb: TokenBytes | None, messages: Messages,
                      region_roles: dict[str, str] | None = None) -> ScoreItem:
    """A token-id record's item with its layout: `messages` (the prompt's) located in the
    prompt ids' bytes, then the completion ids' bytes (labelled, every token has a row)."""
    if tb is None:
        return item
    first = item.positions[0]
    lengths, regions = generated_layout(tb, messages, item.token_ids[:first],
                                        item.token_ids[first:], region_roles)
    return replace(item, byte_lengths=lengths, regions=regions)


SCORE_FIELDS = ("text", "messages", "prompt", "completion")


def record_kind(record: dict[str, Any]) -> str:
    """Which of the three score-mode forms a record has, or RecordError naming the conflict."""
    given = [f for f in SCORE_FIELDS if record.get(f) is not None]
    if "text" in given and len(given) > 1:
        raise RecordError("ambiguous_record", f"record has `text` and `{given[1]}`: give one form")
    if "messages" in given and len(given) > 1:
        other = next(f for f in given if f != "messages")
        raise RecordError("ambiguous_record", f"record has `messages` and `{other}`: give one form")
    if given == ["completion"]:
        raise RecordError("missing_prompt", "record has `completion` without `prompt`")
    if given == ["prompt"]:
        raise RecordError("missing_completion", "record has `prompt` without `completion` "
                          "(generate completions with --mode generate)")
    if not given:
        raise RecordError("missing_text", "record has none of `text`, `messages`, "
                          "`prompt` + `completion`")
    return {"text": "text", "messages": "chat"}.get(given[0], "completion")


def score_items(rid: str, record: dict[str, Any], tok: ScoreTokenizer, width: int, overlap: int,
                system_prompt: str | None = None,
                teacher_system_prompt: str | None = None) -> tuple[str, list[ScoreItem]]:
    """(kind, items) of one parsed record, or RecordError with the reason."""
    kind = record_kind(record)
    tb = getattr(tok, "token_bytes", None)
    roles = PROMPT_COMPLETION_ROLES if kind == "completion" else None
    given = check_token_fields(record, getattr(tok, "fingerprint", None))
    view = teacher_view(record, kind, teacher_system_prompt)
    if given is not None:
        prompt = prompt_messages(record, kind)
        item = with_token_layout(token_item(rid, *given, width), tb, prompt, roles)
        return kind, [item if view is None else teacher_token_item(item, tok, view(prompt), width)]
    if kind == "text":
        ids, _ = tok.encode(nonempty_text(record, "text"), add_special_tokens=True)
        if len(ids) < 2:
            raise RecordError("too_short", f"the text has {len(ids)} token(s); scoring needs 2")
        return kind, text_items(rid, ids, width, overlap, tb)
    if kind == "chat":
        messages = check_messages(record["messages"])
    else:
        messages = [{"role": "user", "content": nonempty_text(record, "prompt")},
                    {"role": "assistant", "content": nonempty_text(record, "completion")}]
    student = with_system(messages, system_prompt)
    item = chat_item(rid, tok, student, width, roles)
    return kind, [item if view is None else teacher_chat_item(item, tok, view(student), width, roles)]


def teacher_chat_item(item: ScoreItem, tok: ScoreTokenizer, teacher: Messages, width: int,
                      roles: dict[str, str] | None) -> ScoreItem:
    """A chat's student item with the teacher's rendering of `teacher` (its whole chat) added,
    the labelled tokens matched (`pipeline.teacher.teacher_views.match_labelled`)."""
    if not any(m["role"] == "assistant" for m in teacher):
        raise RecordError("no_teacher_assistant_turn",
                          "the teacher's messages have no assistant turn to label")
    try:
        theirs = chat_item(item.record_id, tok, teacher, width, roles)
    except RecordError as exc:
        raise RecordError(exc.reason, f"the teacher's view: {exc}") from None
    match_labelled(item.token_ids, item.positions, theirs.token_ids, theirs.positions)
    return replace(item, teacher_token_ids=theirs.token_ids, teacher_positions=theirs.positions,
                   teacher_context=json.dumps(teacher, ensure_ascii=False))


def teacher_token_item(item: ScoreItem, tok: ScoreTokenizer, teacher_prompt: Messages,
                       width: int) -> ScoreItem:
    """A token-id record's item with the teacher's rendering: its prompt turns rendered, then
    the given completion ids (the same ids on both sides, nothing re-tokenised)."""
    teacher_prompt = without_closing_assistant(teacher_prompt)
    text = tok.render(teacher_prompt, add_generation_prompt=True)
    prompt, _ = tok.encode(text, add_special_tokens=False)
    completion = item.token_ids[item.positions[0]:]
    if len(prompt) + len(completion) > width:
        raise RecordError("too_long", f"the teacher's view has {len(prompt) + len(completion)} "
                          f"tokens; at most {width} fit (--max-model-len - 1)")
    return replace(item, teacher_token_ids=prompt + completion,
                   teacher_positions=list(range(len(prompt), len(prompt) + len(completion))),
                   teacher_context=json.dumps(teacher_prompt, ensure_ascii=False))


def without_closing_assistant(messages: Messages) -> Messages:
    """A chat's turns before its closing assistant turn (the completion), if it has one."""
    return messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages


def prompt_messages(record: dict[str, Any], kind: str) -> Messages:
    """The messages before the completion of a token-id record: a chat's all but its closing
    assistant turn (the completion), or the `prompt` as a user message."""
    if kind == "chat":
        return without_closing_assistant(check_messages(record["messages"]))
    if kind == "completion":
        return [{"role": "user", "content": nonempty_text(record, "prompt")}]
    return []


def load_score_records(path: str | Path, tok: ScoreTokenizer, width: int, overlap: int,
                       system_prompt: str | None = None, limit: int | None = None,
                       owns: Callable[[str | None, int], bool] | None = None,
                       teacher_system_prompt: str | None = None) -> PromptBatch:
    """Read and tokenize the records of `path` for scoring; accepted + rejected = records read."""
    def parse(line: int, rid: str, record: dict[str, Any]) -> ScoreRecord:
        kind, items = score_items(rid, record, tok, width, overlap, system_prompt,
                                  teacher_system_prompt)
        return ScoreRecord(rid, line, kind, items)

    return read_records(path, parse, limit, owns)
