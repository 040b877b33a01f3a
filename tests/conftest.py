"""Shared fixtures: tiny fake samples and outputs, so pure logic is tested without vLLM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.manifest import Manifest, write_manifest
from pipeline.sample import Sample
from pipeline.sample_filter import FilterThresholds, filter_samples
from pipeline.sample_index import index_table, merge_index, write_index_part
from pipeline.shard_writer import ShardAttrs, write_shard
from schemas import shard_name

VOCAB = 1000
K = 4
KEEP_ALL = FilterThresholds(drop_truncated=False, max_repetition=None, min_mean_logprob=None)


def fake_sample(rng: np.random.Generator, prompt_id: str, index: int = 0, vocab: int = VOCAB,
                k: int = K, prompt_len: int | None = None, comp_len: int | None = None,
                hidden: dict[int, int] | None = None) -> Sample:
    """A random but schema-valid sample: sorted top-k rows, logprobs <= 0."""
    p = prompt_len or int(rng.integers(1, 8))
    c = comp_len or int(rng.integers(1, 10))
    topk_ids = np.stack([rng.choice(vocab, size=k, replace=False) for _ in range(c)])
    lps = -np.sort(rng.exponential(2.0, size=(c, k)), axis=1).astype(np.float32)
    sample = Sample(prompt_id, index, rng.integers(0, vocab, p).tolist(),
                    topk_ids[:, 0].tolist(), topk_ids, lps, lps[:, 0].copy(),
                    "stop" if rng.random() < 0.5 else "length")
    for layer, size in (hidden or {}).items():
        sample.hidden[layer] = rng.standard_normal((p + c, size)).astype(np.float32)
    return sample


def fake_attrs(vocab: int = VOCAB, k: int = K, hidden_layers=(), hidden_size=0) -> ShardAttrs:
    return ShardAttrs("fake-teacher", "f" * 64, vocab, k, {"n": 1, "temperature": 1.0},
                      tuple(hidden_layers), hidden_size)


def write_fake_output(out, shards: int = 2, per_shard: int = 3, seed: int = 0,
                      attrs: ShardAttrs | None = None, prefix: str = "p") -> Manifest:
    """Write a complete, valid output directory of fake shards and return its manifest."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    attrs = attrs or fake_attrs()
    manifest = Manifest(teacher=attrs.teacher, tokenizer_fingerprint=attrs.tokenizer_fingerprint,
                        vocab_size=attrs.vocab_size, top_k=attrs.top_k, complete=True,
                        hidden_layers=list(attrs.hidden_layers), hidden_size=attrs.hidden_size,
                        config={"n": 1}, input_records=shards * per_shard,
                        accepted_prompts=shards * per_shard)
    sizes = dict.fromkeys(attrs.hidden_layers, attrs.hidden_size)
    for i in range(shards):
        samples = [fake_sample(rng, f"{prefix}{i}-{j}", vocab=attrs.vocab_size, k=attrs.top_k,
                               hidden=sizes) for j in range(per_shard)]
        outcome = filter_samples(samples, KEEP_ALL)
        record = write_shard(out / shard_name(i), i, samples, attrs)
        record.index_sha256 = write_index_part(
            out, i, index_table(samples, outcome.metrics, outcome.reasons, record.name))
        record.generated, record.hidden_layers = len(samples), list(attrs.hidden_layers)
        manifest.shards[i] = record
    merge_index(out, range(shards))
    write_manifest(out, manifest)
    return manifest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "data/models/smollm2-135m-instruct"
MIXED_PROMPTS = ROOT / "tests/data/prompts_mixed.jsonl"


def teacher_args(out: Path, *extra: str) -> list[str]:
    """The shared real-engine run: float32, n = 2, hidden layers 3 and -1, no truncation filter."""
    return [sys.executable, "-m", "stages.cli", "teacher-labels", "--teacher", str(TEACHER),
            "--prompts", str(MIXED_PROMPTS), "--out", str(out), "--max-tokens", "24",
            "--dtype", "float32", "--n", "2", "--shard-size", "8", "--max-model-len", "512",
            "--enforce-eager", "--hidden-layers", "3,-1", "--no-drop-truncated", *extra]


def run_kd(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def engine_labels(tmp_path_factory) -> Path:
    """Real teacher labels from the vLLM CPU engine, made once per test session."""
    pytest.importorskip("vllm")
    if not (TEACHER / "config.json").is_file():
        pytest.skip("embedded teacher not converted: run `make models`")
    out = tmp_path_factory.mktemp("labels") / "out"
    proc = run_kd(teacher_args(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out
