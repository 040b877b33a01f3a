"""One on-policy round on the real engine: student -> samples -> teacher scoring -> training.

The tiny random student (2 layers, 64 wide, the teacher's tokenizer) writes 16
tokens for 4 prompts under vLLM (`kd student-samples`), the embedded teacher
scores those exact token ids (`kd teacher-labels --mode score`), the output
verifies, and `kd train-student --init-from` the same student trains 2 steps
with the on-policy loss reading the carried behaviour logprobs. Oracles: the
stored student logprobs equal the student's own, recomputed with transformers;
`kd eval --samples` reports the teacher's NLL of the student's text equal to
the stored teacher logprobs' mean.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from conftest import MIXED_PROMPTS, TEACHER, require_teacher, run_kd, save_tiny_student
from pipeline.store.shard_reader import ShardReader, read_samples
from pipeline.store.verify import verify_outputs
from pipeline.teacher.student_records import SAMPLES_NAME

pytestmark = pytest.mark.engine

KD = [sys.executable, "-m", "stages.cli.main"]


@pytest.fixture(scope="module")
def round_one(tmp_path_factory):
    pytest.importorskip("vllm")
    require_teacher()
    root = tmp_path_factory.mktemp("onpolicy")
    student = save_tiny_student(root / "student")
    proc = run_kd(KD + ["student-samples", "--model", str(student), "--prompts",
                        str(MIXED_PROMPTS), "--limit", "4", "--max-tokens", "16",
                        "--max-model-len", "256", "--dtype", "float32", "--enforce-eager",
                        "--out", str(root / "samples")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_kd(KD + ["teacher-labels", "--mode", "score", "--teacher", str(TEACHER),
                        "--prompts", str(root / "samples" / SAMPLES_NAME), "--top-k", "4",
                        "--max-model-len", "256", "--window-overlap", "16", "--shard-size", "2",
                        "--dtype", "float32", "--enforce-eager", "--out", str(root / "labels")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, student


def test_the_teacher_scores_the_sampled_ids_with_the_student_logprobs_carried(round_one):
    from transformers import AutoModelForCausalLM

    root, student = round_one
    records = {r["id"]: r for r in map(json.loads,
                                       (root / "samples" / SAMPLES_NAME).read_text().splitlines())}
    assert len(records) >= 3
    assert verify_outputs([root / "labels"]).problems == []
    model = AutoModelForCausalLM.from_pretrained(student, torch_dtype=torch.float32).eval()
    scored = [s for shard in sorted((root / "labels").glob("shard-*.h5"))
              for s in read_samples(ShardReader(shard))]
    assert sorted(s.prompt_id for s in scored) == sorted(records)
    for s in scored:
        r = records[s.prompt_id]
        assert (s.prompt_token_ids, s.completion_token_ids) == (r["prompt_token_ids"],
                                                                r["completion_token_ids"])
        ids = torch.tensor([s.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        p = len(s.prompt_token_ids)
        own = logp[p - 1:-1].gather(1, ids[0, p:, None])[:, 0].numpy()
        np.testing.assert_allclose(s.student_logprobs, own, atol=2e-3)
        assert np.all(np.isfinite(s.sampled_logprobs)) and np.all(s.sampled_logprobs <= 1e-3)


def test_the_next_round_trains_from_the_student_with_the_onpolicy_loss(round_one):
    from schemas.student_config import EvalConfig, StudentConfig
    from stages.student.evaluate import run_eval
    from stages.student.train import run_train_student

    root, student = round_one
    result = run_train_student(StudentConfig(
        labels=(str(root / "labels"),), init_from=str(student), out=str(root / "round-1"),
        steps=2, batch_tokens=256, lr=1e-3, warmup_steps=0, eval_every=0, checkpoint_every=0,
        loader_workers=0, eval_fraction=0.25, alpha=1.0, onpolicy_weight=1.0).validate())
    assert result.steps == 2 and (root / "round-1/model/config.json").is_file()
    rows = run_eval(EvalConfig(labels=(str(root / "labels"),), all=True,
                               model=(f"r1={root / 'round-1/model'}",),
                               samples=(f"r0={root / 'labels'}",)))
    teacher = np.concatenate([s.sampled_logprobs for shard in sorted((root / "labels").glob("s*.h5"))
                              for s in read_samples(ShardReader(shard))]).astype(np.float64)
    assert rows["r0"]["teacher_nll_of_samples"] == pytest.approx(-teacher.mean(), rel=1e-6)
    assert np.isfinite(rows["r0"]["reverse_kl_estimate"]) and np.isfinite(rows["r1"]["kl"])
