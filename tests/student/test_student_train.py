"""Student stage on real teacher labels with a tiny student: losses, resume, export, refusals.

The labels are the session's real vLLM run (`engine_labels`); the student is a
2-layer, 64-wide model with the teacher's tokenizer, so steps take
milliseconds and every property is checked on real data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, TEACHER, flip_byte, run_kd, sigterm_after_step
from pipeline.student.batch_plan import plan_batches
from pipeline.student.batches import PlannedBatches
from pipeline.student.kd_losses import hard_label_loss, soft_label_loss
from pipeline.student.label_set import open_label_set
from schemas.config_base import ConfigError
from schemas.student_config import EvalConfig, StudentConfig
from stages.cli.preemption import Preempted
from stages.student.evaluate import run_eval
from stages.student.forward import batch_losses
from stages.student.model import narrow_config
from stages.student.train import NonFiniteLoss, run_train_student

pytestmark = pytest.mark.engine


def config(labels: Path, student: Path, out: Path, **changes) -> StudentConfig:
    base = dict(labels=(str(labels),), student=str(student), out=str(out), steps=4,
                batch_tokens=256, lr=1e-3, warmup_steps=1, eval_every=2, checkpoint_every=2,
                loader_workers=0, eval_fraction=0.25)
    return StudentConfig(**(base | changes)).validate()


def train_losses(out: Path) -> list[float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in lines if "loss" in m]


def test_chunked_head_losses_equal_a_dense_forward(engine_labels, tiny_student):
    from transformers import AutoModelForCausalLM

    labels = open_label_set([engine_labels])
    model = AutoModelForCausalLM.from_pretrained(tiny_student, dtype=torch.float32)
    batch = PlannedBatches(labels, plan_batches(labels.length, np.arange(6), 4096, 0, 0))[0]
    cfg = StudentConfig(loss_chunk=7, tail="bucket", kd_temperature=2.0)
    parts = batch_losses(model, None, batch, labels.vocab_size, cfg, {})
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rows = logits.reshape(-1, logits.shape[-1])[batch["loss_rows"]]
    soft = soft_label_loss(rows, batch["teacher_ids"], batch["teacher_logprobs"], temperature=2.0)
    assert float(parts.soft.detach()) == pytest.approx(float(soft.detach()), rel=1e-5)
    assert float(parts.hard.detach()) == pytest.approx(float(hard_label_loss(rows, batch["target_ids"]).detach()),
                                              rel=1e-5)
    assert parts.positions == int(labels.label_count[:6].sum())


def test_resume_after_sigterm_matches_an_uninterrupted_run(engine_labels, tiny_student, tmp_path,
                                                           monkeypatch):
    straight = run_train_student(config(engine_labels, tiny_student, tmp_path / "a"))
    undo = sigterm_after_step(monkeypatch, 2)
    with pytest.raises(Preempted, match="step 2"):
        run_train_student(config(engine_labels, tiny_student, tmp_path / "b"))
    undo()
    with pytest.raises(ConfigError, match="--resume"):
        run_train_student(config(engine_labels, tiny_student, tmp_path / "b"))
    with pytest.raises(ConfigError, match=r"--resume: --lr was 0.001 .* is 0.002 now"):
        run_train_student(config(engine_labels, tiny_student, tmp_path / "b", resume=True, lr=2e-3))
    with pytest.raises(ConfigError, match=r"global batch was 1 micro-batches .* now 1 x 2"):
        run_train_student(config(engine_labels, tiny_student, tmp_path / "b", resume=True,
                                 grad_accum=2))
    resumed = run_train_student(config(engine_labels, tiny_student, tmp_path / "b", resume=True))
    assert straight.steps == resumed.steps == 4
    np.testing.assert_allclose(train_losses(tmp_path / "b"), train_losses(tmp_path / "a"),
                               rtol=0, atol=1e-5)
    assert resumed.evals["student_after"]["kl"] == pytest.approx(
        straight.evals["student_after"]["kl"], abs=1e-5)


def test_training_lowers_kl_and_the_export_reproduces_the_evaluation(engine_labels, tiny_student,
                                                                     tmp_path):
    out = tmp_path / "run"
    result = run_train_student(config(engine_labels, tiny_student, out, steps=12, eval_every=0))
    before, after = result.evals["student_before"], result.evals["student_after"]
    assert after["kl"] < before["kl"] and after["nll"] < before["nll"]
    report = json.loads((out / "report.json").read_text())
    assert set(report["eval"]) == {"teacher", "student_before", "student_after"}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = run_eval(EvalConfig(labels=(str(engine_labels),), model=(str(out / "model"),),
                               eval_fraction=0.25, batch_tokens=256))
    assert rows["model"]["kl"] == pytest.approx(after["kl"], rel=1e-5)
    assert rows["teacher"]["nll"] == pytest.approx(report["eval"]["teacher"]["nll"])


def test_hidden_state_loss_trains_through_the_adapter_without_vllm(engine_labels, tiny_student,
                                                                   tmp_path):
    """A fresh process: vLLM is never imported and only the 2-layer student is ever built."""
    code = f"""
import gc, sys
from schemas.student_config import StudentConfig
from stages.student.train import run_train_student
from transformers import PreTrainedModel
r = run_train_student(StudentConfig(labels=({str(engine_labels)!r},), student={str(tiny_student)!r},
    out={str(tmp_path / 'h')!r}, steps=3, batch_tokens=256, hidden_weight=1.0, layer_map="1:3,-1:-1",
    loader_workers=2, eval_every=0, eval_fraction=0.25))
assert "vllm" not in sys.modules, "the student stage imported vllm"
models = [o for o in gc.get_objects() if isinstance(o, PreTrainedModel)]
assert all(m.config.num_hidden_layers == 2 for m in models), "a teacher-sized model was resident"
print("hidden", r.steps)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "hidden 3" in proc.stdout, proc.stderr[-3000:]
    hidden = [json.loads(x)["hidden"] for x in (tmp_path / "h/metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    assert all(h > 0 for h in hidden)


def test_non_finite_loss_stops_naming_the_step(engine_labels, tiny_student, tmp_path, monkeypatch):
    import stages.student.forward as forward

    real = forward.batch_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        parts = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            parts.weighted = parts.weighted * float("nan")
        return parts
    monkeypatch.setattr(forward, "batch_losses", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"step 2 \(epoch 0 batch 1\)"):
        run_train_student(config(engine_labels, tiny_student, tmp_path / "nan", eval_every=0))


def test_tokenizer_mismatch_is_refused_naming_both(engine_labels, tiny_student, tmp_path):
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    import shutil

    shutil.copytree(tiny_student, other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<not-in-the-teacher>"])
    tok.save_pretrained(other)
    # the two-part identity names the first id whose token differs (the one added)
    with pytest.raises(ConfigError, match=r"tokenizer mismatch.*vocabulary differs.*"
                                          r"'<not-in-the-teacher>' in the student"):
        run_train_student(config(engine_labels, other, tmp_path / "mismatch"))


def test_padded_student_vocabulary_is_sliced_and_a_short_one_refused(engine_labels, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    for name, vocab in (("padded", 49152 + 64), ("short", 49000)):
        path = tmp_path / name
        cfg = narrow_config(AutoConfig.from_pretrained(TEACHER), 64, 1)
        cfg.vocab_size = vocab
        AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
        AutoTokenizer.from_pretrained(TEACHER).save_pretrained(path)
    result = run_train_student(config(engine_labels, tmp_path / "padded", tmp_path / "p", steps=1,
                                      eval_every=0))
    assert result.steps == 1 and np.isfinite(result.evals["student_after"]["kl"])
    with pytest.raises(ConfigError, match="49000 rows"):
        run_train_student(config(engine_labels, tmp_path / "short", tmp_path / "s", steps=1))


VLLM_GENERATE = """
import json, sys
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=256,
              kv_cache_memory_bytes=256 * 2**20)
    out = llm.generate([{"prompt_token_ids": json.loads(sys.argv[2])}],
                       SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    print("TOKENS", json.dumps(list(out[0].outputs[0].token_ids)))
"""


def test_exported_student_generates_in_vllm_like_in_transformers(engine_labels, tiny_student,
                                                                 tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    run_train_student(config(engine_labels, tiny_student, out, steps=2, eval_every=0))
    model_dir = out / "model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Name a colour."}],
                                     add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    greedy = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                            min_new_tokens=8)[0, len(ids):].tolist()
    script = tmp_path / "gen.py"
    script.write_text(VLLM_GENERATE)
    proc = subprocess.run([sys.executable, str(script), str(model_dir), json.dumps(ids)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("TOKENS"))
    tokens = json.loads(line.split(" ", 1)[1])
    # vLLM stops at EOS; transformers was forced to 8 tokens: compare the common prefix.
    assert tokens and tokens == greedy[:len(tokens)]


def test_evaluation_reads_at_most_the_bound_and_always_the_same_positions(engine_labels,
                                                                          tiny_student, tmp_path):
    out, bound = tmp_path / "run", 150
    run_train_student(config(engine_labels, tiny_student, out, steps=2, eval_every=1,
                             eval_max_tokens=bound))
    resumed = run_train_student(config(engine_labels, tiny_student, out, steps=4, eval_every=1,
                                       eval_max_tokens=bound, resume=True))
    logged = [json.loads(x)["eval"] for x in (out / "metrics.jsonl").read_text().splitlines()
              if "eval" in json.loads(x)]
    assert len(logged) == 5  # before, after steps 1, 2, 3 (the resumed run), and after
    positions = {e["positions"] for e in logged} | {e["positions"] for e in resumed.evals.values()}
    assert len(positions) == 1 and 0 < next(iter(positions)) <= bound
    common = dict(labels=(str(engine_labels),), model=(str(out / "model"),), eval_fraction=0.25,
                  batch_tokens=256)
    bounded = run_eval(EvalConfig(**common, eval_max_tokens=bound))
    assert bounded["model"]["positions"] == next(iter(positions))
    assert bounded["model"]["kl"] == pytest.approx(resumed.evals["student_after"]["kl"], rel=1e-5)
    whole = run_eval(EvalConfig(**common, eval_max_tokens=0))["model"]["positions"]
    every = run_eval(EvalConfig(**common, all=True))["model"]["positions"]
    assert next(iter(positions)) < whole < every
    assert every == int(open_label_set([engine_labels]).label_count.sum())


def test_a_shard_corrupted_after_start_up_stops_the_run_naming_it(engine_labels, tiny_student,
                                                                  tmp_path):
    labels = tmp_path / "labels"
    shutil.copytree(engine_labels, labels)
    flip_byte(labels / "shard-00000.h5")
    args = [sys.executable, "-m", "stages.cli.main", "train-student", "--labels", str(labels),
            "--student", str(tiny_student), "--out", str(tmp_path / "out"), "--steps", "2",
            "--batch-tokens", "256", "--eval-fraction", "0.25", "--loader-workers", "2"]
    lazy = run_kd(args)
    assert lazy.returncode == 1, lazy.stderr[-2000:]
    assert f"{labels / 'shard-00000.h5'}: sha256: checksum differs from the manifest" in lazy.stderr
    assert "stopped before training on it" in lazy.stderr and "Traceback" not in lazy.stderr
    assert not (tmp_path / "out" / "model").exists()
    full = run_kd(args + ["--verify", "full", "--overwrite"])
    assert full.returncode == 1 and "refusing to train from labels that fail verification" in \
        full.stderr and "shard-00000.h5: sha256" in full.stderr


def test_a_student_trains_from_generated_and_scored_labels_and_is_evaluated_on_given_text(
        engine_labels, score_labels, tiny_student, tmp_path):
    from pipeline.store.shard_reader import ShardReader

    out = tmp_path / "mixed"
    cfg = config(engine_labels, tiny_student, out, steps=12, eval_every=0)
    cfg.labels = (str(engine_labels), str(score_labels))
    result = run_train_student(cfg.validate())
    assert result.steps == 12
    rows = run_eval(EvalConfig(labels=(str(score_labels),), all=True, batch_tokens=256,
                               model=(f"before={tiny_student}", f"after={out / 'model'}")))
    assert list(rows) == ["teacher", "before", "after"]
    labels = open_label_set([score_labels])
    stored = np.concatenate([
        ShardReader(labels.shard_paths[s]).sample(int(r))["sampled_logprobs"]
        for s, r in zip(labels.shard, labels.row)]).astype(np.float64)
    assert rows["teacher"]["nll"] == pytest.approx(-stored.mean(), rel=1e-6)
    assert rows["before"]["positions"] == rows["after"]["positions"] == len(stored)
    assert rows["after"]["kl"] < rows["before"]["kl"]
    assert rows["after"]["perplexity"] == pytest.approx(np.exp(rows["after"]["nll"]))


def test_a_training_run_touches_nothing_until_set_up(engine_labels, tiny_student, tmp_path):
    from stages.student.distributed import DistContext
    from stages.student.train import TrainingRun, build_trainable

    cfg = config(engine_labels, tiny_student, tmp_path / "s")
    labels, dist = open_label_set(cfg.labels), DistContext.from_env()
    run = TrainingRun(cfg, labels, build_trainable(cfg, labels, dist), dist)
    assert not (tmp_path / "s").exists() and run.step == 0
    assert run.set_up() is run
    saved = json.loads((tmp_path / "s" / "student_config.json").read_text())
    assert saved == cfg.to_dict() and run.steps == 4 and set(run.evals) == {"teacher", "student_before"}
