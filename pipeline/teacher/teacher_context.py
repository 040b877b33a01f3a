"""What a labelling job's teacher saw beyond the student's view, summarised for the manifest.

A record labelled behind a teacher context (`--teacher-system-prompt`, or a
score-mode record's own `teacher_messages` / `teacher_prefix`;
docs/teacher-context.md) stores the student's view and, per sample, the
teacher's messages as JSON (`samples/teacher_contexts`). The manifest says
that the teacher saw something else, and pins what by a hash: the system
prompt's text, or the accepted records' (id, teacher messages) pairs.

    >>> summary = context_summary("Answer in French.", {"a": "[...]"})
    >>> summary["kind"], summary["records"], len(summary["sha256"])
    ('system_prompt', 1, 64)
    >>> context_summary(None, {})
    {}
    >>> context_summary(None, {"a": "[...]", "b": "[...]"})["kind"]
    'per_record'
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

SYSTEM_PROMPT = "system_prompt"
PER_RECORD = "per_record"


def context_summary(teacher_system_prompt: str | None,
                    contexts: dict[str, str]) -> dict[str, Any]:
    """The manifest's `teacher_context` from the job's system prompt (if any) and the accepted
    records' teacher contexts by record id (JSON strings; records without one left out)."""
    if teacher_system_prompt is None and not contexts:
        return {}
    if teacher_system_prompt is not None:
        kind, pinned = SYSTEM_PROMPT, teacher_system_prompt
    else:
        kind, pinned = PER_RECORD, json.dumps(sorted(contexts.items()), ensure_ascii=False)
    return {"kind": kind, "sha256": hashlib.sha256(pinned.encode("utf-8")).hexdigest(),
            "records": len(contexts)}
