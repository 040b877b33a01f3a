"""`kd train-student --cross-tokenizer alm` end to end: trains a Qwen3-tokenizer student from the
embedded teacher's score-mode labels, resumes after SIGKILL bit-identically, exports, and
`kd eval` reports bits per byte that match a direct computation.

The labels are a real score-mode run, which stores the text layout (schema v3).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, TEACHER, engine_output, require_tokenizer

pytestmark = pytest.mark.engine
DOCS = [
    "Bread rises because yeast eats sugar and breathes out carbon dioxide 🍞. 面包 is bread.",
    "The orbit of Mars takes 687 days; a Martian year is   nearly two Earth years long.",
    "Water boils at 100 °C at sea level, and at lower temperatures on high mountains.",
    "To repot a plant, water it first, loosen the root ball, and move it to a pot 2-5 cm wider.",
    "Prime numbers: 2, 3, 5, 7, 11, 13. Every integer above 1 factors into primes uniquely.",
    "A tempo of 120 beats per minute means two beats every second; ♩ = 120 writes it.",
    "Cumulus clouds form when warm air rises, cools and its water vapour condenses.",
    "Compound interest adds the interest to the principal, so the next period earns on both.",
]


def kd(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.cli.main", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=900, env=os.environ | (env or {}))


@pytest.fixture(scope="module")
def doc_labels(tmp_path_factory) -> Path:
    """Score-mode labels of eight short documents (real engine, once per module)."""
    src = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n"
                           for i, t in enumerate(DOCS)))
    return engine_output(tmp_path_factory, "doc-labels", lambda out: [
        sys.executable, "-m", "stages.cli.main", "teacher-labels", "--mode", "score",
        "--teacher", str(TEACHER), "--prompts", str(src), "--out", str(out), "--top-k", "8",
        "--dtype", "float32", "--max-model-len", "256", "--window-overlap", "32",
        "--shard-size", "4", "--enforce-eager"])


def train_args(labels: Path, out: Path, *extra: str) -> list[str]:
    return ["train-student", "--labels", str(labels), "--out", str(out), "--cross-tokenizer", "alm",
            "--student-tokenizer", str(require_tokenizer("qwen3")), "--keep-layers", "2",
            "--steps", "4", "--checkpoint-every", "2", "--eval-every", "0", "--batch-tokens", "192",
            "--lr", "1e-3", "--warmup-steps", "1", "--loader-workers", "0", "--eval-fraction",
            "0.25", "--report-to", "none", *extra]


@pytest.fixture(scope="module")
def straight(doc_labels, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "out"
    proc = kd(train_args(doc_labels, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_trains_reports_bits_per_byte_and_caches_alignments(straight):
    report = json.loads((straight / "report.json").read_text())
    rows = report["eval"]
    assert {"teacher", "student_before", "student_after"} <= rows.keys()
    assert all(r["bits_per_byte"] > 0 for r in rows.values())
    assert rows["teacher"]["labelled_bytes"] == rows["student_after"]["labelled_bytes"]
    train = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) and r["soft"] > 0 for r in train if "loss" in r)
    assert list((straight / "alignment").rglob("*.npz"))
    assert json.loads((straight / "model" / "config.json").read_text())["vocab_size"] >= 151669


def test_sigkill_then_resume_is_bit_identical(doc_labels, straight, tmp_path):
    out = tmp_path / "out"
    crashed = kd(train_args(doc_labels, out), {"KD_CRASH_AT": "renamed:step-0000002"})
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    resumed = kd(train_args(doc_labels, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_file(out / "model/model.safetensors"), load_file(straight / "model/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_tokenizer_mismatch_without_the_flag_suggests_it(doc_labels, straight, tmp_path):
    proc = kd(["train-student", "--labels", str(doc_labels), "--out", str(tmp_path / "o"),
               "--student", str(straight / "model"), "--steps", "1"])
    assert proc.returncode != 0 and "--cross-tokenizer alm" in proc.stderr


def direct_bits_per_byte(model_dir: Path, labels: Path) -> tuple[float, float]:
    """(student, teacher) bits per byte of every labelled window, computed without the
    pipeline's batches: the student's full forward over its own tokens of each window."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.store.shard_reader import ShardReader
    from pipeline.store.text_layout import token_bytes_table

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    s_tok, t_tok = AutoTokenizer.from_pretrained(model_dir), AutoTokenizer.from_pretrained(TEACHER)
    t_table, _ = token_bytes_table(t_tok)
    nll = t_nll = n_bytes = 0.0
    for path in sorted(labels.glob("shard-*.h5")):
        reader = ShardReader(path)
        for i in range(len(reader)):
            s = reader.sample(i)
            ids, first = list(s["token_ids"]), int(s["positions"][0])
            context = b"".join(t_table[t] for t in ids[:first]).decode()
            new = b"".join(t_table[t] for t in ids[first:]).decode()
            a = s_tok(context, add_special_tokens=False)["input_ids"]
            b = s_tok(new, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([a + b])).logits[0].double(), -1)
            nll -= float(lp[len(a) - 1:-1].gather(-1, torch.tensor(b)[:, None]).sum())
            t_nll -= float(np.asarray(s["sampled_logprobs"], np.float64).sum())
            n_bytes += len(new.encode())
    return nll / math.log(2) / n_bytes, t_nll / math.log(2) / n_bytes


def test_kd_eval_bits_per_byte_match_a_direct_computation(doc_labels, straight, tmp_path):
    out = tmp_path / "eval.json"
    proc = kd(["eval", "--all", "--labels", str(doc_labels), "--model",
               f"after={straight / 'model'}", "--output", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    student, teacher = direct_bits_per_byte(straight / "model", doc_labels)
    assert rows["after"]["bits_per_byte"] == pytest.approx(student, rel=1e-4)
    assert rows["teacher"]["bits_per_byte"] == pytest.approx(teacher, rel=1e-6)


def test_same_tokenizer_rows_report_bits_per_byte_too(doc_labels, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.store.shard_reader import ShardReader
    from pipeline.store.text_layout import token_bytes_table
    from schemas.student_config import EvalConfig
    from stages.student.evaluate import run_eval
    from tests.conftest import save_tiny_student

    student = save_tiny_student(tmp_path / "tiny")
    rows = run_eval(EvalConfig(labels=(str(doc_labels),), all=True, model=(f"tiny={student}",)))
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).eval()
    table, _ = token_bytes_table(AutoTokenizer.from_pretrained(student))
    nll = n_bytes = 0.0
    for path in sorted(doc_labels.glob("shard-*.h5")):
        reader = ShardReader(path)
        for i in range(len(reader)):
            s = reader.sample(i)
            ids, pos = torch.tensor(np.asarray(s["token_ids"], np.int64)), np.asarray(s["positions"])
            with torch.no_grad():
                lp = torch.log_softmax(model(ids[None]).logits[0].double(), -1)
            nll -= float(lp[pos - 1].gather(-1, ids[pos][:, None]).sum())
            n_bytes += sum(len(table[int(t)]) for t in ids[pos])
    assert rows["tiny"]["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-4)


@pytest.fixture(scope="module")
def chat_labels(tmp_path_factory) -> Path:
    """Score-mode labels of the shipped held-out chats (system, user and assistant turns)."""
    chats = [line for line in (ROOT / "data/corpus/heldout.jsonl").read_text().splitlines()
             if "messages" in json.loads(line)][:6]
    src = tmp_path_factory.mktemp("chats") / "chats.jsonl"
    src.write_text("\n".join(chats) + "\n")
    return engine_output(tmp_path_factory, "chat-labels", lambda out: [
        sys.executable, "-m", "stages.cli.main", "teacher-labels", "--mode", "score",
        "--teacher", str(TEACHER), "--prompts", str(src), "--out", str(out), "--top-k", "8",
        "--dtype", "float32", "--max-model-len", "1024", "--shard-size", "3", "--enforce-eager"])


def test_chat_labels_train_a_cross_student_end_to_end(chat_labels, tmp_path):
    from pipeline.store.shard_reader import ShardReader
    from pipeline.store.text_layout import decode_regions
    from pipeline.student.cross_tokenizer_batches import TEXT_REGIONS, unpack

    out = tmp_path / "chat"
    proc = kd(train_args(chat_labels, out, "--steps", "2", "--eval-fraction", "0.3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) and r["soft"] > 0 for r in train if "loss" in r)
    # Every labelled byte of every chat lies in exactly one chunk: the evaluation's labelled
    # bytes are the stored labelled regions' lengths.
    rows_out = tmp_path / "eval.json"
    proc = kd(["eval", "--all", "--labels", str(chat_labels), "--model", f"s={out / 'model'}",
               "--output", str(rows_out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    labelled = sum(r.end - r.start for path in sorted(chat_labels.glob("shard-*.h5"))
                   for regions in ShardReader(path).strings(TEXT_REGIONS)
                   for r in decode_regions(regions) if r.labelled)
    rows = json.loads(rows_out.read_text())
    assert labelled > 0 and rows["s"]["labelled_bytes"] == labelled
    # The teacher's end of turn pairs with Qwen3's own <|im_end|>: 0-byte chunks exist.
    aligned = [a for f in (out / "alignment").rglob("*.npz") for a in unpack(np.load(f))]
    assert any((a.chunk_bytes[a.one_to_one()] == 0).any() for a in aligned)


def test_hidden_states_align_at_chunk_ends_when_the_labels_hold_them(score_labels, tmp_path):
    out = tmp_path / "hidden"
    proc = kd(train_args(score_labels, out, "--steps", "2", "--hidden-weight", "0.5"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    alpha = json.loads((out / "student_config.json").read_text())["alpha"]
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "loss" in r]
    assert len(steps) == 2
    for r in steps:
        assert r["hidden"] > 0 and math.isfinite(r["hidden"])
        assert r["loss"] == pytest.approx(alpha * r["soft"] + (1 - alpha) * r["hard"]
                                          + 0.5 * r["hidden"], rel=1e-5)
        assert len(r["cosine"]) == 1 and all(-1 <= c <= 1 for c in r["cosine"].values())
