"""Student samples as score-mode records: writing, crash-safe appending, resuming, drift.

`kd student-samples` writes one JSONL record per prompt, ready for
`kd teacher-labels --mode score`:

    {"id": "math-0001", "prompt": "...", "completion": "...",      # or "messages": [..., assistant]
     "prompt_token_ids": [...], "completion_token_ids": [...],
     "student_logprobs": [...], "tokenizer_fingerprint": "...",
     "finish_reason": "stop", "retokenization_drift": false}

The id is the prompt's, so the train/eval split (by prompt id) keeps a
held-out prompt held out. Score mode labels `completion_token_ids` as given
(the text is for people and for tools that need it): decoding sampled ids and
encoding the text again need not give the same ids back, and a teacher scoring
other tokens than the student sampled would pair its logprobs with the wrong
student logprobs. `retokenization_drift` says whether that would have
happened for this record (`retokenizes`), as a measurement.

Records are appended a batch at a time (flushed and fsynced); a crash can
tear only the last line, which `read_finished` cuts off, so a rerun keeps every
whole record and samples only the prompts without one.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "samples.jsonl"
    >>> append_records(path, [{"id": "a", "completion_token_ids": [5]}])
    >>> _ = path.open("a").write('{"id": "b", "compl')        # a torn write
    >>> sorted(read_finished(path)), path.read_text().count("\\n")
    (['a'], 1)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.store.fault_points import reach
from pipeline.teacher.prompts import Messages, RecordError, iter_records, record_id
from pipeline.teacher.teacher_views import TEACHER_FIELDS

SAMPLES_NAME = "samples.jsonl"
"""The records of a `kd student-samples` output (what `--mode score` reads)."""
TOKEN_FIELDS = ("prompt_token_ids", "completion_token_ids")


def student_record(prompt_id: str, messages: Messages, completion: str,
                   prompt_token_ids: Sequence[int], completion_token_ids: Sequence[int],
                   student_logprobs: Sequence[float], finish_reason: str, fingerprint: str,
                   drift: bool) -> dict[str, Any]:
    """One score-mode record of a student completion (see the module docstring).

    A one-message user prompt stays a `prompt` + `completion` pair; any other
    chat gets the completion as its closing assistant turn.
    """
    if len(student_logprobs) != len(completion_token_ids):
        raise ValueError(f"{prompt_id}: {len(student_logprobs)} logprobs for "
                         f"{len(completion_token_ids)} completion tokens")
    if len(messages) == 1 and messages[0]["role"] == "user":
        text: dict[str, Any] = {"prompt": messages[0]["content"], "completion": completion}
    else:
        text = {"messages": [*messages, {"role": "assistant", "content": completion}]}
    return {"id": prompt_id, **text, "prompt_token_ids": [int(t) for t in prompt_token_ids],
            "completion_token_ids": [int(t) for t in completion_token_ids],
            "student_logprobs": [float(x) for x in student_logprobs],
            "tokenizer_fingerprint": fingerprint, "finish_reason": finish_reason,
            "retokenization_drift": drift}


def carried_contexts(path: str | Path) -> dict[str, dict[str, Any]]:
    """The teacher-context fields (`teacher_messages`, `teacher_prefix`) of a prompt file's
    records, by id: the student writes without them, and its records carry them on for the
    teacher to score behind (docs/teacher-context.md). Unusable records are left out (the
    prompt reader rejects them, naming why).

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "p.jsonl"
    >>> _ = path.write_text('{"id": "a", "prompt": "2+2?", "teacher_prefix": "It is 4. "}\\n'
    ...                     '{"id": "b", "prompt": "hi"}\\n')
    >>> carried_contexts(path)
    {'a': {'teacher_prefix': 'It is 4. '}}
    """
    carried = {}
    for _, record in iter_records(path):
        try:
            rid = record_id(record)
        except RecordError:
            continue
        fields = {f: record[f] for f in TEACHER_FIELDS if record.get(f) is not None}
        if fields:
            carried.setdefault(rid, fields)
    return carried


def retokenizes(ids: Sequence[int], decode: Callable[[list[int]], str],
                encode: Callable[[str], list[int]]) -> bool:
    """Whether encode(decode(ids)) gives `ids` back (False: text-based scoring would drift).

    >>> retokenizes([1, 2], decode=lambda ids: "ab", encode=lambda text: [1, 2])
    True
    >>> retokenizes([1, 2], decode=lambda ids: "ab", encode=lambda text: [3])
    False
    """
    return list(encode(decode(list(ids)))) == list(ids)


def append_records(path: str | Path, records: Sequence[dict[str, Any]]) -> None:
    """Append whole JSONL lines and make them durable before returning."""
    if not records:
        return
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        fh.flush()
        os.fsync(fh.fileno())
    reach("fsynced", path)  # the records are committed: a crash test's kill point


def read_finished(path: str | Path) -> dict[str, dict[str, Any]]:
    """The whole records of `path` by id, after cutting off a torn last line (a crash mid-append).

    A bad line anywhere else is not a crash's doing: it is refused, naming the line.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    data = path.read_bytes()
    whole = data.rfind(b"\n") + 1
    if whole < len(data):
        with path.open("r+b") as fh:
            fh.truncate(whole)
            fh.flush()
            os.fsync(fh.fileno())
    records: dict[str, dict[str, Any]] = {}
    for line_no, raw in enumerate(data[:whole].splitlines(), start=1):
        try:
            record = json.loads(raw)
            records[str(record["id"])] = record
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} line {line_no}: not a student-samples record ({exc}); "
                             "the file was edited, or is not this command's output") from exc
    return records


def check_token_fields(record: dict[str, Any], vocab_fingerprint: str | None
                       ) -> tuple[list[int], list[int], list[float] | None] | None:
    """(prompt ids, completion ids, student logprobs or None) of a record that carries token
    ids, None for a text-only record; ValueError(reason, detail) pairs through `TokenFieldError`.

    >>> check_token_fields({"prompt_token_ids": [1], "completion_token_ids": [2, 3],
    ...                     "student_logprobs": [-0.5, -1.0], "tokenizer_fingerprint": "f"}, "f")
    ([1], [2, 3], [-0.5, -1.0])
    """
    given = [f for f in TOKEN_FIELDS if record.get(f) is not None]
    if not given:
        if record.get("student_logprobs") is not None:
            raise RecordError("missing_token_ids", "`student_logprobs` needs "
                                  "`completion_token_ids` (the tokens they are the logprobs of)")
        return None
    if len(given) == 1:
        missing = next(f for f in TOKEN_FIELDS if f not in given)
        raise RecordError("missing_token_ids", f"record has `{given[0]}` without `{missing}`")
    prompt, completion = (token_list(record, f) for f in TOKEN_FIELDS)
    if record.get("tokenizer_fingerprint") != vocab_fingerprint:
        raise RecordError(
            "tokenizer_mismatch", f"`tokenizer_fingerprint` {record.get('tokenizer_fingerprint')!r} "
            f"is not the teacher's ({vocab_fingerprint}): token ids of another tokenizer mean "
            "other tokens")
    logprobs = record.get("student_logprobs")
    if logprobs is not None:
        if (not isinstance(logprobs, list) or len(logprobs) != len(completion)
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                           and math.isfinite(x) and x <= 0 for x in logprobs)):
            raise RecordError("bad_student_logprobs", "`student_logprobs` must be one finite "
                                  f"logprob <= 0 per completion token ({len(completion)})")
        logprobs = [float(x) for x in logprobs]
    return prompt, completion, logprobs


def token_list(record: dict[str, Any], name: str) -> list[int]:
    value = record[name]
    if (not isinstance(value, list) or not value
            or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)):
        raise RecordError("bad_token_ids", f"`{name}` must be a non-empty list of token ids")
    return value

