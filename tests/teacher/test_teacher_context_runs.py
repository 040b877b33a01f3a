"""Score mode with teacher contexts, end to end with the fake engine: the position mapping,
rejects, resume after a crash, workers, verify, and records without a context unchanged.

The fake engine (`fake_engine.py`) answers each request from its token ids alone,
so the labels it gives a record scored behind a teacher context are those of the
teacher's rendering: the oracle below renders the teacher's view itself (the
chat template, independently of the stage) and asks the fake for its rows at the
teacher's labelled positions; they must be stored, in order, at the student's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TEACHER, require_teacher
from fake_engine import fake_output, run_fake, scored
from pipeline.store.manifest import read_manifest
from pipeline.store.shard_reader import ShardReader
from pipeline.store.verify import verify_outputs

CONTEXTS = ROOT / "tests/data/score_context.jsonl"
K = 4


def context_args(out: Path, prompts: Path = CONTEXTS, *extra: str) -> list[str]:
    return ["teacher-labels", "--mode", "score", "--teacher", str(TEACHER), "--prompts",
            str(prompts), "--shard-size", "2", "--top-k", str(K), "--max-model-len", "256",
            "--window-overlap", "16", "--out", str(out), *extra]


def records() -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, CONTEXTS.read_text().splitlines())}


def samples(out: Path) -> dict[str, dict]:
    found = {}
    m = read_manifest(out)
    for rec in m.shards.values():
        reader = ShardReader(out / rec.name)
        names = [t.dataset for t in reader.sample_texts()]
        contexts = (reader.strings("samples/teacher_contexts")
                    if "samples/teacher_contexts" in names else None)
        for row, sid in enumerate(reader.strings("samples/ids")):
            s = dict(reader.sample(row))
            s["teacher_context"] = None if contexts is None else contexts[row]
            found[sid] = s
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return fake_output(tmp_path_factory, "ctx", context_args)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TEACHER)


def teacher_chat(record: dict) -> list[dict]:
    """The teacher's whole chat, written out from the record (the documented rules)."""
    if "teacher_messages" in record:
        return record["teacher_messages"]
    return [{"role": "user", "content": record.get("teacher_prefix", "") + record["prompt"]},
            {"role": "assistant", "content": record["completion"]}]


def labelled_positions(tokenizer, chat: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids of the rendered chat, and the positions of its assistant turns' contents and
    end-of-turn markers, located by rendering the chat up to each turn."""
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = []
    for i, m in enumerate(chat):
        if m["role"] == "assistant":
            before = tokenizer.apply_chat_template(chat[:i], tokenize=False,
                                                   add_generation_prompt=True)
            spans.append((len(before), len(before) + len(m["content"]) + len("<|im_end|>")))
    positions = [t for t, (a, _) in enumerate(enc["offset_mapping"])
                 if any(lo <= a < hi for lo, hi in spans)]
    return enc["input_ids"], positions


def test_rejects_name_the_reason(reference):
    rejects = [json.loads(x) for x in (reference / "rejects.jsonl").read_text().splitlines()]
    assert {r["id"]: r["reason"] for r in rejects} == {
        "changed": "teacher_context_changes_completion", "no-turn": "no_teacher_assistant_turn",
        "both": "ambiguous_teacher_context", "text-ctx": "teacher_context_on_text"}
    (changed,) = [r for r in rejects if r["id"] == "changed"]
    assert "assistant turn 0, token 0" in changed["detail"]


def test_context_labels_are_the_teachers_rendering_stored_at_the_students_positions(
        reference, tokenizer):
    stored = samples(reference)
    for rid in ("hinted", "persona", "reference"):
        record, s = records()[rid], stored[f"{rid}/w0"]
        teacher = teacher_chat(record)
        assert json.loads(s["teacher_context"]) == teacher
        ids, positions = labelled_positions(tokenizer, teacher)
        student = record.get("messages") or [{"role": "user", "content": record["prompt"]},
                                             {"role": "assistant", "content": record["completion"]}]
        student_ids, student_positions = labelled_positions(tokenizer, student)
        assert s["token_ids"].tolist() == student_ids  # the stored sample is the student's view
        assert s["positions"].tolist() == student_positions
        assert [ids[p] for p in positions] == s["token_ids"][s["positions"]].tolist()
        flat = scored(ids, K).prompt_logprobs
        rows = [flat.token_ids[flat.start_indices[p] + 1:flat.end_indices[p]] for p in positions]
        assert s["topk_ids"].tolist() == rows, rid
        firsts = [flat.logprobs[flat.start_indices[p]] for p in positions]
        np.testing.assert_allclose(s["sampled_logprobs"], firsts, rtol=0, atol=1e-6)


def test_records_without_a_context_are_labelled_as_in_an_output_without_any(reference, tmp_path):
    plain = tmp_path / "plain.jsonl"
    kept = [json.dumps(r) for r in records().values() if set(r) & {"teacher_messages",
                                                                  "teacher_prefix"} == set()]
    plain.write_text("\n".join(kept) + "\n")
    proc = run_fake(context_args(tmp_path / "out", plain))
    assert proc.returncode == 0, proc.stderr[-2000:]
    alone, mixed = samples(tmp_path / "out"), samples(reference)
    assert set(alone) == {"plain/w0", "doc/w0"}
    for sid, s in alone.items():
        assert s.pop("teacher_context") is None and mixed[sid].pop("teacher_context") == ""
        assert s.keys() == mixed[sid].keys()
        for key in s:
            np.testing.assert_array_equal(np.asarray(s[key]), np.asarray(mixed[sid][key]), key)
    m = read_manifest(tmp_path / "out")
    assert m.teacher_context == {}
    for rec in m.shards.values():
        assert "samples/teacher_contexts" not in [
            t.dataset for t in ShardReader(tmp_path / "out" / rec.name).sample_texts()]


def test_manifest_pins_the_contexts_and_the_output_verifies(reference):
    m = read_manifest(reference)
    assert m.teacher_context["kind"] == "per_record" and m.teacher_context["records"] == 3
    assert len(m.teacher_context["sha256"]) == 64
    assert not verify_outputs([reference]).problems


def test_sigkill_mid_run_then_the_same_command_completes_identically(tmp_path, reference):
    out = tmp_path / "out"
    crashed = run_fake(context_args(out), KD_CRASH_AT="renamed:shard-00001.h5")
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    resumed = run_fake(context_args(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    names = sorted(p.name for p in reference.glob("shard-*.h5"))
    assert sorted(p.name for p in out.glob("shard-*.h5")) == names
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_two_workers_together_make_the_single_run(tmp_path, reference):
    parts = {}
    for worker in (0, 1):
        out = tmp_path / f"w{worker}"
        proc = run_fake(context_args(out, CONTEXTS, "--num-workers", "2",
                                     "--worker-index", str(worker)))
        assert proc.returncode == 0, proc.stderr[-2000:]
        parts |= samples(out)
    single = samples(reference)
    assert parts.keys() == single.keys()
    for sid in single:
        assert parts[sid]["topk_ids"].tolist() == single[sid]["topk_ids"].tolist()
    assert not verify_outputs([tmp_path / "w0", tmp_path / "w1"]).problems


def test_hidden_layers_with_record_contexts_are_refused_naming_the_flag(tmp_path):
    require_teacher()
    proc = run_fake(context_args(tmp_path / "out", CONTEXTS, "--hidden-layers", "3"))
    assert proc.returncode != 0 and "--hidden-layers" in proc.stderr


def test_inspect_shows_both_views_and_export_reads_the_output(reference, tmp_path):
    from pipeline.store.summary import summarise_output

    order = [sid for rec in sorted(read_manifest(reference).shards.values(), key=lambda r: r.name)
             for sid in ShardReader(reference / rec.name).strings("samples/ids")]
    text = summarise_output(reference, order.index("hinted/w0"), decode=lambda ids: str(ids))
    assert "teacher view per_record: 3 record(s)" in text
    assert "teacher user      'Hint: the answer is four.\\n\\nWhat is 2 + 2?'" in text
    plain = summarise_output(reference, order.index("plain/w0"), decode=lambda ids: str(ids))
    assert "the teacher saw the stored (student's) view" in plain
    out = tmp_path / "export"
    proc = run_fake(["export", "--format", "parquet", "--labels", str(reference), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(out.glob("*.parquet")))
    assert table.num_rows == len(order)


def test_eval_reads_the_students_view_and_says_the_teacher_saw_more(reference, tmp_path):
    from conftest import save_tiny_student

    student = save_tiny_student(tmp_path / "student")
    rows = tmp_path / "eval.json"
    proc = run_fake(["eval", "--all", "--labels", str(reference), "--model", f"tiny={student}",
                     "--output", str(rows)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "behind a context the stored samples lack" in proc.stdout
    stored = samples(reference)
    assert json.loads(rows.read_text())["tiny"]["positions"] == sum(
        len(s["positions"]) for s in stored.values())
