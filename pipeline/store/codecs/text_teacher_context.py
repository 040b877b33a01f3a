"""`samples/teacher_contexts`: what the teacher saw where it differs from the stored sample.

A sample labelled behind a teacher context (`--teacher-system-prompt`, or a
score-mode record's `teacher_messages` / `teacher_prefix`: docs/teacher-context.md)
stores the student's view (its prompt, its completion) and, here, the teacher's
view as JSON: the list of chat messages the teacher's rendering was made from
(for a generated or token-id sample, the prompt turns it generated or scored
behind; for a chat, the whole chat). A sample of the same shard without a
teacher context holds the empty string; a shard none of whose samples has one
lacks the dataset (as every output written before it existed does).

    >>> TEACHER_CONTEXT.check_values(['', '[{"role": "system", "content": "Be terse."}]'])
    []
    >>> TEACHER_CONTEXT.check_values(['[]', 'system: hi'])
    ['samples/teacher_contexts: sample 0 is not a JSON list of {role, content} messages']
"""

from __future__ import annotations

import json

from pipeline.store.codecs.base import SampleText


def is_messages(text: str) -> bool:
    """Whether `text` is a non-empty JSON list of {role, content} string pairs."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value)


class TeacherContext(SampleText):
    name = "teacher_context"
    dataset = "samples/teacher_contexts"
    what = "teacher contexts"

    def check_values(self, texts: list[str]) -> list[str]:
        bad = [i for i, t in enumerate(texts) if t and not is_messages(t)]
        return [f"{self.dataset}: sample {bad[0]} is not a JSON list of {{role, content}} "
                "messages"] if bad else []


TEACHER_CONTEXT = TeacherContext()
