"""A label set stands on its own: the teacher's tokenizer travels in `<out>/tokenizer/`.

The teacher stage runs with the fake engine (`tests/teacher/fake_engine.py`) on a copy
of the embedded teacher's tokenizer and config (no weights needed), then the teacher's
directory is renamed away: the student stage, `kd eval` and `kd export` must work from
the label set alone. The two-part tokenizer identity is checked the way a library
upgrade breaks it: a student whose tokenizer lists other special tokens (as
transformers 5.17 and 5.19 do for the embedded teacher) trains with a warning naming
them; one whose vocabulary differs in one id is refused, naming that id.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TEACHER, require_teacher, run_kd

sys.path.insert(0, str(ROOT / "tests/teacher"))
from fake_engine import run_fake  # noqa: E402

TOKENIZER_AND_CONFIG = ("config.json", "tokenizer.json", "tokenizer_config.json",
                        "generation_config.json", "chat_template.jinja")
CHANGED_ID = 3
"""`<repo_name>`: an added token, so no merge rule names it."""


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """(labels written from a teacher directory that no longer exists, where it was)."""
    require_teacher()
    root = tmp_path_factory.mktemp("moved")
    teacher = root / "teacher"
    teacher.mkdir()
    for name in TOKENIZER_AND_CONFIG:
        shutil.copy(TEACHER / name, teacher / name)
    proc = run_fake(["teacher-labels", "--teacher", str(teacher), "--prompts",
                     str(ROOT / "tests/data/prompts_mixed.jsonl"), "--out", str(root / "labels"),
                     "--max-tokens", "16", "--shard-size", "8", "--no-drop-truncated"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    teacher.rename(root / "teacher-moved-away")
    return root / "labels", teacher


def student_args(labels: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "stages.cli.main", "train-student", "--labels", str(labels),
            "--out", str(out), "--steps", "2", "--batch-tokens", "128", "--eval-fraction", "0.25",
            "--eval-every", "0", "--checkpoint-every", "0", "--loader-workers", "0",
            "--warmup-steps", "0", *extra]


def test_stored_tokenizer_files_are_the_teachers_and_verified(moved):
    from pipeline.store.atomic_commit import sha256_file
    from pipeline.store.manifest import read_manifest
    from pipeline.store.tokenizer_files import stored_tokenizer_dir

    labels, _ = moved
    listed = read_manifest(labels).tokenizer_files
    assert sorted(listed) == sorted(f"tokenizer/{n}" for n in TOKENIZER_AND_CONFIG)
    for name, sha in listed.items():
        assert (labels / name).read_bytes() == (TEACHER / Path(name).name).read_bytes()
        assert sha256_file(labels / name) == sha
    assert stored_tokenizer_dir(labels) == labels / "tokenizer"


def test_kd_verify_names_a_corrupt_stored_tokenizer_file(moved, tmp_path):
    labels, _ = moved
    copy = tmp_path / "labels"
    shutil.copytree(labels, copy)
    (copy / "tokenizer/tokenizer_config.json").write_text("{}")
    proc = run_kd([sys.executable, "-m", "stages.cli.main", "verify", str(copy)])
    assert proc.returncode == 1
    assert "tokenizer/tokenizer_config.json: sha256" in proc.stderr


def test_train_eval_export_without_the_teacher(moved, tmp_path):
    labels, teacher = moved
    assert not teacher.exists()
    out = tmp_path / "student"
    proc = run_kd(student_args(labels, out, "--student", "narrow", "--narrow-hidden-size", "64",
                               "--keep-layers", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning" not in proc.stderr and (out / "model/config.json").is_file()
    proc = run_kd([sys.executable, "-m", "stages.cli.main", "eval", "--labels", str(labels),
                   "--model", f"student={out / 'model'}", "--all"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| student |" in proc.stdout
    export = tmp_path / "export"
    proc = run_kd([sys.executable, "-m", "stages.cli.main", "export", "--labels", str(labels),
                   "--format", "parquet", "--out", str(export)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ((export / "tokenizer/tokenizer.json").read_bytes()
            == (labels / "tokenizer/tokenizer.json").read_bytes())


def test_from_teacher_says_it_needs_the_weights(moved, tmp_path):
    labels, teacher = moved
    proc = run_kd(student_args(labels, tmp_path / "student"))
    assert proc.returncode == 1
    assert f"needs the teacher's weights, and {teacher} does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def edited_student(labels: Path, path: Path, edit) -> Path:
    """A tiny student whose tokenizer files are the stored ones after `edit(path)`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from stages.student.model import narrow_config

    torch.manual_seed(0)
    config = narrow_config(AutoConfig.from_pretrained(labels / "tokenizer"), 64, 2)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    for name in TOKENIZER_AND_CONFIG[1:]:
        shutil.copy(labels / "tokenizer" / name, path / name)
    edit(path)
    return path


def without_im_end_special(path: Path) -> None:
    """As transformers 5.17's GGUF conversion: `<|im_end|>` not among the special tokens."""
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["eos_token"] = config["pad_token"] = "<|endoftext|>"
    (path / "tokenizer_config.json").write_text(json.dumps(config))


def with_one_id_changed(path: Path) -> None:
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    old = next(t for t, i in vocab.items() if i == CHANGED_ID)
    vocab["renamed-token"] = vocab.pop(old)
    for added in tokenizer["added_tokens"]:
        if added["id"] == CHANGED_ID:
            added["content"] = "renamed-token"
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))


def test_special_tokens_only_differ_warns_and_trains(moved, tmp_path):
    from transformers import AutoTokenizer

    labels, _ = moved
    student = edited_student(labels, tmp_path / "tiny", without_im_end_special)
    assert "<|im_end|>" not in AutoTokenizer.from_pretrained(student).all_special_tokens
    proc = run_kd(student_args(labels, tmp_path / "out", "--student", str(student)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "missing: '<|im_end|>' (id 2)" in warning[0]
    assert (tmp_path / "out/model/config.json").is_file()


def test_vocabulary_differing_in_one_id_is_refused_naming_it(moved, tmp_path):
    labels, _ = moved
    student = edited_student(labels, tmp_path / "tiny", with_one_id_changed)
    proc = run_kd(student_args(labels, tmp_path / "out", "--student", str(student)))
    assert proc.returncode == 1
    assert f"at id {CHANGED_ID} (" in proc.stderr and "'renamed-token' in the student" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out/model").exists()


def test_old_output_identity_comes_from_the_stored_files(moved, tmp_path):
    """An output written before the two-part identity: computed from tokenizer/, said so."""
    labels, _ = moved
    old = tmp_path / "labels"
    shutil.copytree(labels, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for key in ("vocab_fingerprint", "special_tokens_fingerprint", "special_tokens"):
        manifest.pop(key)
    (old / "manifest.json").write_text(json.dumps(manifest))
    strip_identity_attrs(old)
    student = edited_student(labels, tmp_path / "tiny", without_im_end_special)
    proc = run_kd(student_args(old, tmp_path / "out", "--student", str(student)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"computed them from the stored copy {old / 'tokenizer'}" in proc.stderr
    assert "missing: '<|im_end|>' (id 2)" in proc.stderr


def strip_identity_attrs(out: Path) -> None:
    """Drop the two fingerprint attributes from every shard, fixing the manifest's sha256."""
    import h5py

    from pipeline.store.atomic_commit import sha256_file

    manifest = json.loads((out / "manifest.json").read_text())
    for rec in manifest["shards"]:
        with h5py.File(out / rec["name"], "r+") as f:
            for key in ("vocab_fingerprint", "special_tokens_fingerprint"):
                del f.attrs[key]
        rec["sha256"] = sha256_file(out / rec["name"])
        rec["bytes"] = (out / rec["name"]).stat().st_size
    (out / "manifest.json").write_text(json.dumps(manifest))
