"""Score-mode records with a teacher context: the teacher's view of a record, and matching it.

A record may carry a context only the teacher sees (docs/teacher-context.md):
`teacher_messages` (the chat the teacher reads in place of the record's own),
`teacher_prefix` (text placed verbatim before the content of the first user
turn, for the teacher only), or the job's `--teacher-system-prompt` (a system
turn ahead of the record's, `pipeline.teacher.prompts.with_teacher_system`).
The student's view, the record itself, is what is stored; the teacher's view
is what the engine scores. The labelled tokens must be the same token ids on
both sides: `match_labelled` compares the labelled tokens of the two
renderings, turn by turn, and names the first difference.

    >>> view = teacher_view({"id": "a", "teacher_prefix": "Hint: 4. "}, "completion", None)
    >>> view([{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}])[0]
    {'role': 'user', 'content': 'Hint: 4. 2 + 2?'}
    >>> teacher_view({"id": "b"}, "chat", None) is None
    True
    >>> match_labelled([1, 7, 8, 2, 9], [1, 2, 4], [5, 5, 7, 8, 3, 9], [2, 3, 5])
    >>> match_labelled([1, 7, 8], [1, 2], [5, 7, 6], [1, 2])
    Traceback (most recent call last):
    ...
    pipeline.teacher.prompts.RecordError: assistant turn 0, token 1: the student's rendering has id 8, the teacher's id 6 (the teacher's context changes how the completion tokenizes)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from pipeline.teacher.prompts import (Messages, RecordError, check_messages, nonempty_text,
                                      with_teacher_system)

TEACHER_FIELDS = ("teacher_messages", "teacher_prefix")
"""A record's own teacher context: at most one of them."""
CHANGES_COMPLETION = "teacher_context_changes_completion"
View = Callable[[Messages], Messages]
"""The student's messages -> the teacher's."""


def teacher_view(record: dict[str, Any], kind: str,
                 teacher_system_prompt: str | None) -> View | None:
    """How the teacher's messages derive from the student's for this record (None: the
    teacher sees the student's view), or RecordError naming why the record cannot have one."""
    own = [f for f in TEACHER_FIELDS if record.get(f) is not None]
    if len(own) > 1:
        raise RecordError("ambiguous_teacher_context", "record has `teacher_messages` and "
                          "`teacher_prefix`: give one teacher context")
    if own and teacher_system_prompt is not None:
        raise RecordError("ambiguous_teacher_context", f"record has `{own[0]}` and the job has "
                          "--teacher-system-prompt: give one teacher context")
    if not own and teacher_system_prompt is None:
        return None
    if kind == "text":
        raise RecordError("teacher_context_on_text", "a teacher context needs a `messages` or "
                          "`prompt` + `completion` record: a `text` record has no prompt for it")
    if teacher_system_prompt is not None:
        return lambda messages: with_teacher_system(messages, teacher_system_prompt)
    if own == ["teacher_prefix"]:
        prefix = nonempty_text(record, "teacher_prefix")
        return lambda messages: with_prefix(messages, prefix)
    try:
        given = check_messages(record["teacher_messages"])
    except RecordError as exc:
        raise RecordError("bad_teacher_messages", f"`teacher_messages`: {exc}") from None
    return lambda messages: given


def with_prefix(messages: Messages, prefix: str) -> Messages:
    """`messages` with `prefix` before the content of the first user turn."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise RecordError("teacher_prefix_without_user_turn",
                          "`teacher_prefix` goes before the first user turn; the record has none")
    i = users[0]
    return [*messages[:i], {"role": "user", "content": prefix + messages[i]["content"]},
            *messages[i + 1:]]


def runs(positions: Sequence[int]) -> list[list[int]]:
    """`positions` cut into runs of consecutive positions (a chat's labelled turns)."""
    out: list[list[int]] = []
    for p in positions:
        if out and p == out[-1][-1] + 1:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def match_labelled(student_ids: Sequence[int], student_positions: Sequence[int],
                   teacher_ids: Sequence[int], teacher_positions: Sequence[int]) -> None:
    """Refuse (RecordError `teacher_context_changes_completion`) two renderings whose labelled
    tokens differ: the same turns, the same ids in the same order, or the first difference."""
    student, teacher = runs(student_positions), runs(teacher_positions)
    if len(student) != len(teacher):
        raise RecordError(CHANGES_COMPLETION, f"the student's rendering has {len(student)} "
                          f"labelled turn(s), the teacher's {len(teacher)}")
    for turn, (s, t) in enumerate(zip(student, teacher)):
        a, b = [student_ids[p] for p in s], [teacher_ids[p] for p in t]
        if a == b:
            continue
        j = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        said = [f"id {x[j]}" if j < len(x) else "no token" for x in (a, b)]
        raise RecordError(CHANGES_COMPLETION, f"assistant turn {turn}, token {j}: the student's "
                          f"rendering has {said[0]}, the teacher's {said[1]} (the teacher's "
                          "context changes how the completion tokenizes)")
