"""Teacher context on the real vLLM CPU engine: the teacher sees more than the stored sample.

Score mode (one run over tests/data/score_context.jsonl plus a `kd student-samples`-style
token-id record with a `teacher_prefix`): the labels of each record scored behind a
teacher context equal a float32 transformers pass over the teacher's rendering at its
labelled tokens, stored at the student's positions; a record without one, over its own.

`--teacher-system-prompt` in generate mode: the engine generates behind the
teacher's view (a system turn ahead of the record's prompt); the stored sample
holds the student's view (the plain prompt's rendering + the completion ids),
and its labels must equal a float32 transformers pass over the TEACHER's
rendering + the completion, at the completion tokens, stored at the student's
positions. The oracle is independent of the stage: it renders both views itself.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TEACHER, engine_output, run_kd
from test_teacher_context_runs import CONTEXTS, labelled_positions, teacher_chat
from pipeline.store.manifest import read_manifest
from pipeline.store.shard_reader import ShardReader
from pipeline.store.verify import verify_outputs

pytestmark = pytest.mark.engine

TOLERANCE = 1e-2
TEACHER_SYSTEM = "You are a pirate. Always answer like a pirate, saying Arr."
PROMPTS = [{"id": "g1", "prompt": "Name three primary colors."},
           {"id": "g2", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "What is 2 + 2?"}]},
           {"id": "g3", "prompt": "Write one sentence about the ocean."}]


def stored_samples(out: Path):
    m = read_manifest(out)
    for i in sorted(m.shards):
        reader = ShardReader(out / m.shards[i].name)
        contexts = reader.strings("samples/teacher_contexts")
        for row, sid in enumerate(reader.strings("samples/ids")):
            yield sid, reader.sample(row), contexts[row]


def generate_args(prompts: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "stages.cli.main", "teacher-labels", "--teacher", str(TEACHER),
            "--prompts", str(prompts), "--out", str(out), "--max-tokens", "16",
            "--dtype", "float32", "--n", "2", "--shard-size", "4", "--max-model-len", "256",
            "--enforce-eager", "--no-drop-truncated", "--min-mean-logprob", "none", *extra]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ctx-prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory, prompts_file) -> Path:
    return engine_output(tmp_path_factory, "ctx-generate", lambda out: generate_args(
        prompts_file, out, "--teacher-system-prompt", TEACHER_SYSTEM))


@pytest.fixture(scope="module")
def hf():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(TEACHER)


def rendered(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def views(record: dict) -> tuple[list[dict], list[dict]]:
    """(student's, teacher's) prompt messages, written out here independently of the stage."""
    student = record.get("messages") or [{"role": "user", "content": record["prompt"]}]
    if student[0]["role"] == "system":
        own = student[0]["content"]
        return student, [{"role": "system", "content": f"{TEACHER_SYSTEM}\n\n{own}"}, *student[1:]]
    return student, [{"role": "system", "content": TEACHER_SYSTEM}, *student]


def logprob_rows(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1).numpy()


def test_generated_labels_are_the_teachers_behind_its_context_at_the_students_positions(
        generated, hf):
    model, tokenizer = hf
    records = {r["id"]: r for r in PROMPTS}
    seen = set()
    for sid, s, context in stored_samples(generated):
        student, teacher = views(records[sid.split("/")[0]])
        seen.add(sid.split("/")[0])
        ids, p = s["token_ids"].tolist(), s["prompt_length"]
        assert ids[:p] == rendered(tokenizer, student), sid  # the stored prompt is the student's
        assert json.loads(context) == teacher, sid
        completion = ids[p:]
        teacher_prompt = rendered(tokenizer, teacher)
        assert teacher_prompt != ids[:p]
        rows = logprob_rows(model, teacher_prompt + completion)[len(teacher_prompt) - 1:-1]
        positions = s["positions"]
        assert positions.tolist() == list(range(p, len(ids)))  # the student's positions
        top = np.take_along_axis(rows, s["topk_ids"].astype(np.int64), axis=1)
        assert np.abs(top - s["topk_logprobs"].astype(np.float32)).max() < TOLERANCE, sid
        actual = rows[np.arange(len(completion)), completion]
        assert np.abs(actual - s["sampled_logprobs"]).max() < TOLERANCE, sid
        # and not the student-view distributions: the context changed what the teacher said
        plain = logprob_rows(model, ids)[p - 1:-1]
        plain_top = np.take_along_axis(plain, s["topk_ids"].astype(np.int64), axis=1)
        assert np.abs(plain_top - s["topk_logprobs"].astype(np.float32)).max() > 0.1, sid
    assert seen == set(records)


def test_manifest_records_the_teachers_context_and_the_output_verifies(generated):
    m = read_manifest(generated)
    assert m.teacher_context == {
        "kind": "system_prompt", "records": len(PROMPTS),
        "sha256": hashlib.sha256(TEACHER_SYSTEM.encode()).hexdigest()}
    assert m.config["teacher_system_prompt"] == TEACHER_SYSTEM
    assert verify_outputs([generated]).problems == []


def test_a_rerun_reuses_every_shard_and_another_teacher_prompt_is_refused(generated, prompts_file):
    before = {p.name: p.read_bytes() for p in generated.glob("shard-*.h5")}
    proc = run_kd(generate_args(prompts_file, generated, "--teacher-system-prompt",
                                TEACHER_SYSTEM))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in generated.glob("shard-*.h5")} == before
    proc = run_kd(generate_args(prompts_file, generated, "--teacher-system-prompt", "Be kind."))
    assert proc.returncode != 0
    assert "teacher_system_prompt" in proc.stderr


TOKEN_RECORD = {"id": "onpolicy", "prompt": "Name a color.", "completion": "Blue.",
                "teacher_prefix": "Answer with the color of the sky.\n\n"}


@pytest.fixture(scope="module")
def score_input(tmp_path_factory, hf) -> Path:
    from pipeline.store.fingerprint import tokenizer_fingerprint

    _, tokenizer = hf
    student = [{"role": "user", "content": TOKEN_RECORD["prompt"]}]
    record = TOKEN_RECORD | {
        "prompt_token_ids": rendered(tokenizer, student),
        "completion_token_ids": tokenizer("Blue.<|im_end|>", add_special_tokens=False)["input_ids"],
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer)}
    path = tmp_path_factory.mktemp("ctx-score-input") / "records.jsonl"
    path.write_text(CONTEXTS.read_text() + json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def scored(tmp_path_factory, score_input) -> Path:
    return engine_output(tmp_path_factory, "ctx-score", lambda out: [
        sys.executable, "-m", "stages.cli.main", "teacher-labels", "--mode", "score",
        "--teacher", str(TEACHER), "--prompts", str(score_input), "--out", str(out),
        "--dtype", "float32", "--max-model-len", "256", "--window-overlap", "64",
        "--shard-size", "3", "--enforce-eager"])


def teacher_view_ids(tokenizer, record: dict) -> tuple[list[int], list[int]]:
    """The teacher's rendering of a record and its labelled positions (the test's own rules)."""
    if "completion_token_ids" in record:
        prompt = rendered(tokenizer, [{"role": "user", "content": record["teacher_prefix"]
                                       + record["prompt"]}])
        ids = prompt + record["completion_token_ids"]
        return ids, list(range(len(prompt), len(ids)))
    if not {"teacher_messages", "teacher_prefix"} & set(record):
        chat = record.get("messages") or [{"role": "user", "content": record["prompt"]},
                                          {"role": "assistant", "content": record["completion"]}]
        return labelled_positions(tokenizer, chat)
    return labelled_positions(tokenizer, teacher_chat(record))


def test_scored_labels_are_the_teachers_behind_its_context_at_the_students_positions(
        scored, score_input, hf):
    model, tokenizer = hf
    records = {r["id"]: r for r in map(json.loads, score_input.read_text().splitlines())}
    checked = set()
    for sid, s, context in stored_samples(scored):
        rid = sid.split("/")[0]
        if rid == "doc":
            continue  # a text record: the plain score-mode oracle (test_score_engine.py)
        ids, positions = teacher_view_ids(tokenizer, records[rid])
        stored_ids = s["token_ids"].astype(np.int64)
        assert [ids[p] for p in positions] == stored_ids[s["positions"]].tolist(), sid
        rows = logprob_rows(model, ids)[np.asarray(positions) - 1]
        top = np.take_along_axis(rows, s["topk_ids"].astype(np.int64), axis=1)
        assert np.abs(top - s["topk_logprobs"].astype(np.float32)).max() < TOLERANCE, sid
        actual = rows[np.arange(len(positions)), stored_ids[s["positions"]]]
        assert np.abs(actual - s["sampled_logprobs"]).max() < TOLERANCE, sid
        assert (context == "") == (rid == "plain"), sid
        checked.add(rid)
    assert checked == {"plain", "hinted", "persona", "reference", "onpolicy"}
    assert verify_outputs([scored]).problems == []
