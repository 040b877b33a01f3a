"""`kd student-samples` and the score mode of its records, on the fake engine (no vLLM).

Pure parts: record writing, the torn-line repair of a resume, the token-id
fields score mode reads. Stage: the fake engine writes the completions (the
real tokenizer of the embedded teacher renders prompts and decodes), an
interrupted run resumes to the uninterrupted one's records, score mode labels
the stored ids with the student's logprobs carried into `labels/student_logprobs`,
and `kd verify` checks them. The real engine round trip is in
`tests/student/test_onpolicy_round.py`.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import TEACHER, require_teacher
from pipeline.teacher.prompts import RecordError
from pipeline.teacher.score_records import check_all_or_none, score_items
from pipeline.teacher.student_records import (SAMPLES_NAME, append_records, check_token_fields,
                                              read_finished, student_record)
from schemas.config_base import ConfigError
from schemas.student_samples_config import StudentSamplesConfig

FP = "f" * 64


def record(rid="a", prompt=(1, 2), completion=(3, 4, 5), logprobs=(-0.5, -1.0, -2.0), **extra):
    r = {"id": rid, "prompt": "q", "completion": "c", "prompt_token_ids": list(prompt),
         "completion_token_ids": list(completion), "student_logprobs": list(logprobs),
         "tokenizer_fingerprint": FP}
    return r | extra


class Tok:
    """A ScoreTokenizer that must not be asked to tokenize token-id records."""

    fingerprint = FP

    def render(self, messages, add_generation_prompt):
        raise AssertionError("a token-id record was re-rendered")

    def encode(self, text, add_special_tokens):
        raise AssertionError("a token-id record was re-tokenised")


def test_a_student_record_is_a_pair_for_one_user_turn_and_a_chat_otherwise():
    pair = student_record("p", [{"role": "user", "content": "q"}], "c", [1], [2], [-0.1], "stop",
                          FP, False)
    assert (pair["prompt"], pair["completion"], pair["student_logprobs"]) == ("q", "c", [-0.1])
    chat = student_record("p", [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
                          "c", [1], [2], [-0.1], "stop", FP, True)
    assert chat["messages"][-1] == {"role": "assistant", "content": "c"} and "prompt" not in chat
    with pytest.raises(ValueError, match="1 logprobs for 2 completion tokens"):
        student_record("p", [{"role": "user", "content": "q"}], "c", [1], [2, 3], [-0.1], "stop",
                       FP, False)


def test_a_torn_last_line_is_cut_and_a_bad_middle_line_refused(tmp_path):
    path = tmp_path / SAMPLES_NAME
    append_records(path, [record("a"), record("b")])
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"id": "c", "prompt_tok')
    assert sorted(read_finished(path)) == ["a", "b"] and path.read_bytes() == whole
    path.write_bytes(b"not json\n" + whole)
    with pytest.raises(ValueError, match="line 1: not a student-samples record"):
        read_finished(path)
    assert read_finished(tmp_path / "absent.jsonl") == {}


def test_token_id_records_are_scored_as_given_with_their_logprobs():
    kind, (item,) = score_items("a", record(), Tok(), width=16, overlap=4)
    assert kind == "completion" and item.token_ids == [1, 2, 3, 4, 5]
    assert item.positions == [2, 3, 4] and item.student_logprobs == [-0.5, -1.0, -2.0]
    no_logprobs = {k: v for k, v in record().items() if k != "student_logprobs"}
    assert score_items("a", no_logprobs, Tok(), 16, 4)[1][0].student_logprobs is None


@pytest.mark.parametrize("changes, reason", [
    ({"tokenizer_fingerprint": "other"}, "tokenizer_mismatch"),
    ({"completion_token_ids": None}, "missing_token_ids"),
    ({"completion_token_ids": [3, "x"]}, "bad_token_ids"),
    ({"student_logprobs": [-0.5, -1.0]}, "bad_student_logprobs"),
    ({"student_logprobs": [-0.5, 0.5, -1.0]}, "bad_student_logprobs"),
    ({"student_logprobs": [-0.5, float("nan"), -1.0]}, "bad_student_logprobs"),
    ({"prompt_token_ids": list(range(20))}, "too_long"),
])
def test_bad_token_fields_reject_the_record_naming_why(changes, reason):
    with pytest.raises(RecordError) as err:
        score_items("a", record(**changes), Tok(), width=16, overlap=4)
    assert err.value.reason == reason
    text_only = {"id": "t", "prompt": "q", "completion": "c", "student_logprobs": [-1.0]}
    with pytest.raises(RecordError, match="needs `completion_token_ids`"):
        check_token_fields(text_only, FP)


def test_an_input_mixing_records_with_and_without_student_logprobs_is_refused():
    from pipeline.teacher.score_records import ScoreItem, ScoreRecord

    def rec(rid, line, lps):
        return ScoreRecord(rid, line, "completion", [ScoreItem(rid, 0, [1, 2], [1], lps)])

    check_all_or_none([rec("a", 1, [-1.0]), rec("b", 2, [-2.0])])
    check_all_or_none([rec("a", 1, None), rec("b", 2, None)])
    with pytest.raises(ValueError, match=r"record 'a' \(line 1\) carries .* record 'b' \(line 2\)"):
        check_all_or_none([rec("a", 1, [-1.0]), rec("b", 2, None)])


def test_config_errors_name_the_flag():
    for changes, name in [({"max_tokens": 0}, "--max-tokens"), ({"top_p": 0}, "--top-p"),
                          ({"max_tokens": 64, "max_model_len": 64}, "--max-tokens"),
                          ({"flush_every": 0}, "--flush-every"), ({"dtype": "int4"}, "--dtype"),
                          ({"temperature": -1.0}, "--temperature")]:
        with pytest.raises(ConfigError, match=name):
            StudentSamplesConfig(**changes).validate()


def test_the_cli_maps_the_config_one_to_one():
    import dataclasses

    from stages.cli.main import student_samples

    options = {p.name for p in student_samples.params}
    assert options == {f.name for f in dataclasses.fields(StudentSamplesConfig)}


# --- the stage, on the fake engine -------------------------------------------------------

@pytest.fixture
def fake(monkeypatch):
    import fake_engine
    import stages.teacher.labels as labels

    monkeypatch.setattr(labels, "VllmEngine", fake_engine.FakeEngine)
    monkeypatch.setattr(labels, "EngineSource", fake_engine.FakeSource)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    """A directory the stage accepts as a model: the teacher's config and tokenizer
    (the fake engine never loads weights)."""
    require_teacher()
    path = tmp_path_factory.mktemp("student") / "model"
    path.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.json", "merges.txt"):
        if (TEACHER / name).is_file():
            shutil.copy(TEACHER / name, path / name)
    return path


def sample(student_dir, out, **changes):
    from stages.teacher.student_samples import run_student_samples

    base = dict(model=str(student_dir), prompts="tests/data/prompts_mixed.jsonl", out=str(out),
                max_tokens=16, max_model_len=256, flush_every=2, limit=6)
    return run_student_samples(StudentSamplesConfig(**(base | changes)))


def lines(out):
    return (out / SAMPLES_NAME).read_text().splitlines()


def test_samples_keep_prompt_ids_and_a_resume_ends_as_an_uninterrupted_run(fake, student_dir,
                                                                            tmp_path):
    whole = sample(student_dir, tmp_path / "whole")
    records = [json.loads(x) for x in lines(tmp_path / "whole")]
    ids = [json.loads(x)["id"] for x in (tmp_path / "whole/rejects.jsonl").read_text().splitlines()]
    assert whole.written == len(records) == whole.accepted and whole.reused == 0
    assert len({r["id"] for r in records}) == len(records) and not set(ids) & {r["id"] for r in records}
    for r in records:
        assert len(r["student_logprobs"]) == len(r["completion_token_ids"]) > 0
        assert all(x <= 0 for x in r["student_logprobs"])
    config = json.loads((tmp_path / "whole/student_samples_config.json").read_text())
    assert config["model"] == str(student_dir) and config["identity"]["tokenizer_fingerprint"]
    # a crash after the first batch, mid-way through writing the second
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "whole", part)
    (part / SAMPLES_NAME).write_text("\n".join(lines(part)[:2]) + "\n" + lines(part)[2][:30])
    resumed = sample(student_dir, part)
    assert (resumed.reused, resumed.written) == (2, len(records) - 2)
    assert lines(part) == lines(tmp_path / "whole")
    again = sample(student_dir, part)
    assert again.written == 0 and lines(part) == lines(tmp_path / "whole")


def test_a_rerun_with_other_settings_is_refused_naming_them(fake, student_dir, tmp_path):
    sample(student_dir, tmp_path / "s")
    with pytest.raises(ConfigError, match="different max_tokens, seed; pass --overwrite"):
        sample(student_dir, tmp_path / "s", max_tokens=8, seed=1)
    assert sample(student_dir, tmp_path / "s", max_tokens=8, seed=1, overwrite=True).reused == 0


def test_samples_of_other_weights_at_the_same_path_are_not_reused(fake, student_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(student_dir, model)
    sample(model, tmp_path / "s")
    assert sample(model, tmp_path / "s").reused > 0   # the same weights: reused
    (model / "model.safetensors").write_bytes(b"retrained")
    with pytest.raises(ConfigError, match="different model_sha256"):
        sample(model, tmp_path / "s")


def test_a_missing_or_non_model_directory_is_refused_before_any_engine(tmp_path):
    from stages.teacher.student_samples import run_student_samples

    cfg = StudentSamplesConfig(model=str(tmp_path / "nope"), prompts="data/prompts/demo.jsonl",
                               out=str(tmp_path / "s"))
    with pytest.raises(ConfigError, match="--model .*nope: no such directory"):
        run_student_samples(cfg)
    (tmp_path / "empty").mkdir()
    cfg.model = str(tmp_path / "empty")
    with pytest.raises(ConfigError, match="no config.json, not a Hugging Face model directory"):
        run_student_samples(cfg)
    assert not (tmp_path / "s").exists()


def test_score_mode_labels_the_stored_ids_and_carries_the_student_logprobs(fake, student_dir,
                                                                           tmp_path):
    from pipeline.store.shard_reader import ShardReader, read_samples
    from pipeline.store.verify import verify_outputs
    from schemas.teacher_config import TeacherConfig
    from stages.teacher.labels import run_teacher_labels

    sample(student_dir, tmp_path / "s")
    records = {r["id"]: r for r in map(json.loads, lines(tmp_path / "s"))}
    run_teacher_labels(TeacherConfig(mode="score", teacher=str(TEACHER), top_k=4,
                                     prompts=str(tmp_path / "s" / SAMPLES_NAME),
                                     out=str(tmp_path / "labels"), max_model_len=256,
                                     window_overlap=16, shard_size=2))
    assert verify_outputs([tmp_path / "labels"]).problems == []
    seen = 0
    for shard in sorted((tmp_path / "labels").glob("shard-*.h5")):
        for s in read_samples(ShardReader(shard)):
            r = records[s.prompt_id]
            assert s.prompt_token_ids == r["prompt_token_ids"]
            assert s.completion_token_ids == r["completion_token_ids"]
            np.testing.assert_array_equal(s.student_logprobs,
                                          np.float32(r["student_logprobs"]))
            seen += 1
    assert seen == len(records)


def test_a_run_killed_after_a_committed_batch_resumes_to_the_uninterrupted_records(student_dir,
                                                                                   tmp_path):
    from fake_engine import run_fake

    def args(out):
        return ["student-samples", "--model", str(student_dir), "--prompts",
                "tests/data/prompts_mixed.jsonl", "--limit", "6", "--max-tokens", "16",
                "--max-model-len", "256", "--flush-every", "2", "--out", str(out)]

    whole = run_fake(args(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = run_fake(args(tmp_path / "part"), KD_CRASH_AT="fsynced:samples.jsonl@2")
    assert killed.returncode == -9
    assert len(lines(tmp_path / "part")) == 4
    resumed = run_fake(args(tmp_path / "part"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "4 reused" in resumed.stdout
    assert lines(tmp_path / "part") == lines(tmp_path / "whole")


def test_on_policy_with_a_teacher_context_the_student_writes_alone_the_teacher_scores_behind_it(
        fake, student_dir, tmp_path):
    """The prompts' teacher contexts ride along in the student's records; the teacher's
    rendering (its prefix before the prompt, then the student's completion ids) is scored
    and the rows are stored at the student's positions."""
    from fake_engine import scored
    from pipeline.store.shard_reader import ShardReader, read_samples
    from schemas.teacher_config import TeacherConfig
    from stages.teacher.labels import run_teacher_labels
    from transformers import AutoTokenizer

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "What is 2 + 2?",
                                   "teacher_prefix": "The answer is 4.\n\n"}) + "\n"
                       + json.dumps({"id": "b", "prompt": "Say hi."}) + "\n")
    sample(student_dir, tmp_path / "s", prompts=str(prompts))
    records = {r["id"]: r for r in map(json.loads, lines(tmp_path / "s"))}
    assert records["a"]["teacher_prefix"] == "The answer is 4.\n\n"
    assert "teacher_prefix" not in records["b"]
    run_teacher_labels(TeacherConfig(mode="score", teacher=str(TEACHER), top_k=4,
                                     prompts=str(tmp_path / "s" / SAMPLES_NAME),
                                     out=str(tmp_path / "labels"), max_model_len=256,
                                     window_overlap=16, shard_size=4))
    tok = AutoTokenizer.from_pretrained(TEACHER)
    (s_a, s_b) = sorted(read_samples(ShardReader(tmp_path / "labels/shard-00000.h5")),
                        key=lambda s: s.prompt_id)
    r = records["a"]
    assert s_a.prompt_token_ids == r["prompt_token_ids"]  # the student's view is stored
    text = tok.apply_chat_template([{"role": "user", "content": "The answer is 4.\n\nWhat is 2 + 2?"}],
                                   tokenize=False, add_generation_prompt=True)
    teacher = tok(text, add_special_tokens=False)["input_ids"] + r["completion_token_ids"]
    flat = scored(teacher, 4).prompt_logprobs
    first = len(teacher) - len(r["completion_token_ids"])
    rows = [flat.token_ids[flat.start_indices[p] + 1:flat.end_indices[p]]
            for p in range(first, len(teacher))]
    assert s_a.topk_ids.tolist() == rows
    assert s_b.teacher_context == "" and json.loads(s_a.teacher_context)[0]["content"].startswith(
        "The answer is 4.")
