"""The codec registry (`pipeline.store.codecs`): formats are things, not branches.

- The registry and the choices `kd teacher-labels` accepts (`schemas.teacher_config`) name
  the same formats, with the same defaults.
- Every combination of registered label format, label kind and hidden format writes
  shards that `kd verify` accepts and that read back what was written: a new codec is
  covered here by registering it.
- A format added as one object and one registry entry (a test-only float32 label format,
  a test-only per-token dataset, a test-only per-sample string) goes through writer,
  reader and `kd verify` with no other change.
- Outside the codecs package, pipeline/ and stages/ compare format names in at most
  `MAX_FORMAT_BRANCHES` places.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import numpy as np
import pytest

from bench.synthetic_output import random_sample, write_random_output
from pipeline.store import codecs
from pipeline.store.codecs.base import HiddenFormat, LabelFormat, LabelKind, RowField, SampleText
from pipeline.store.shard_reader import ShardReader, read_samples
from pipeline.store.shard_writer import ShardAttrs, write_shard
from pipeline.store.verify import check_structure, check_values, verify_outputs
from schemas import teacher_config

ROOT = Path(__file__).resolve().parents[2]
MAX_FORMAT_BRANCHES = 0
"""The comparisons left in stages/teacher (labels.py, hidden.py), edited there by other work."""
FORMAT_NAMES = set(codecs.LABEL_FORMATS) | set(codecs.LABEL_KINDS) | set(codecs.HIDDEN_FORMATS)


def test_registry_names_the_choices_the_teacher_stage_accepts():
    cfg = teacher_config.TeacherConfig()
    for registry, choices, default in (
            (codecs.LABEL_FORMATS, teacher_config.LABEL_FORMATS, cfg.label_format),
            (codecs.LABEL_KINDS, teacher_config.LABEL_KINDS, cfg.label_kind),
            (codecs.HIDDEN_FORMATS, teacher_config.HIDDEN_FORMATS, cfg.resolved_hidden_format())):
        assert tuple(registry) == choices and next(iter(registry)) == default


@pytest.mark.parametrize("registry, base", [(codecs.LABEL_FORMATS, LabelFormat),
                                            (codecs.LABEL_KINDS, LabelKind),
                                            (codecs.HIDDEN_FORMATS, HiddenFormat)])
def test_every_codec_is_registered_under_its_own_name(registry, base):
    for name, codec in registry.items():
        assert isinstance(codec, base) and codec.name == name
        assert type(codec).__module__.startswith("pipeline.store.codecs.")


def test_unknown_names_are_refused_naming_the_field_and_the_choices():
    with pytest.raises(codecs.UnknownFormat, match=r"label_format 'q4' is not one this build "
                                                   r"knows \(fp16, q8, q8poly\)"):
        codecs.label_format_of({"label_format": "q4"})


def combinations():
    for fmt, kind, hidden in itertools.product(codecs.LABEL_FORMATS, codecs.LABEL_KINDS,
                                               codecs.HIDDEN_FORMATS):
        if kind == "topk" or fmt == next(iter(codecs.LABEL_FORMATS)):  # draws store counts
            yield fmt, kind, hidden


def attrs_for(fmt: str, kind: str, hidden: str) -> ShardAttrs:
    k = teacher_config.Q8POLY_MIN_TOP_K
    return ShardAttrs("fake", "f" * 64, 1000, k, {"n": 1}, hidden_layers=(1,), hidden_size=16,
                      label_format=fmt, label_kind=kind, hidden_format=hidden, hidden_rank=4,
                      samples_per_position=8 if kind == "sampled" else 0,
                      label_source_k=k if kind == "sampled" else 0)


@pytest.mark.parametrize("fmt, kind, hidden", list(combinations()))
def test_every_registered_combination_writes_verifies_and_reads_back(tmp_path, fmt, kind, hidden):
    attrs = attrs_for(fmt, kind, hidden)
    manifest = write_random_output(tmp_path, attrs, 2, 3)
    assert verify_outputs([tmp_path]).problems == []
    reader = ShardReader(tmp_path / manifest.shards[0].name)
    assert (reader.label_format, reader.label_kind, reader.hidden_format) == (fmt, kind, hidden)
    s = reader.sample(0)
    rows = len(s["positions"])
    assert s["topk_logprobs"].shape[0] == s["topk_ids"].shape[0] == rows
    lps = s["topk_logprobs"]
    assert np.all(lps[:, 1:] <= lps[:, :-1])  # every kind reads back sorted rows
    width = attrs.hidden_rank if codecs.HIDDEN_FORMATS[hidden].needs_basis else attrs.hidden_size
    assert s["hidden_1"].shape == (len(s["token_ids"]), width)


class Fp32Labels(LabelFormat):
    """A format this build does not ship: float32 logprobs, kept exactly."""

    name = "fp32"
    dataset = "labels/topk_logprobs_fp32"
    stored_dtype = np.dtype(np.float32)

    def root_attrs(self):
        return {"label_format": self.name}

    def encode(self, logprobs):
        return np.asarray(logprobs, np.float32)

    def decoder(self, attrs):
        return lambda stored: stored


def test_a_new_format_is_one_object_and_one_registry_entry(tmp_path, monkeypatch):
    monkeypatch.setitem(codecs.LABEL_FORMATS, "fp32", Fp32Labels())
    attrs = ShardAttrs("fake", "f" * 64, 1000, 4, {"n": 1}, label_format="fp32")
    write_random_output(tmp_path / "fp32", attrs, 1, 3, seed=5)
    write_random_output(tmp_path / "fp16", ShardAttrs("fake", "f" * 64, 1000, 4, {"n": 1}), 1, 3,
                        seed=5)
    assert verify_outputs([tmp_path / "fp32"]).problems == []
    exact, rounded = (ShardReader(tmp_path / d / "shard-00000.h5") for d in ("fp32", "fp16"))
    assert exact.attrs["label_format"] == "fp32" and "labels/topk_logprobs" not in exact.arrays
    got = exact.sample(0)["topk_logprobs"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.astype(np.float16), rounded.sample(0)["topk_logprobs"])


class TokenBytes(RowField):
    """A per-token field this build does not ship (the bytes each token decodes to)."""

    name = "token_bytes"
    dataset = "samples/token_bytes"
    rows = "tokens"
    dtype = np.uint16
    what = "token byte lengths"

    def check_values(self, values):
        return [] if values.min(initial=1) >= 1 else [f"{self.dataset} holds a token of 0 bytes"]


def test_a_new_per_token_dataset_is_one_object_and_one_registry_entry(tmp_path, monkeypatch):
    monkeypatch.setitem(codecs.ROW_FIELDS, "token_bytes", TokenBytes())
    rng = np.random.default_rng(3)
    samples = [random_sample(rng, f"p{i}", vocab=100, k=4) for i in range(3)]
    for s in samples:
        s.token_bytes = rng.integers(1, 9, len(s.token_ids))
    write_shard(tmp_path / "shard-00000.h5", 0, samples, ShardAttrs("t", "f", 100, 4, {}))
    reader = ShardReader(tmp_path / "shard-00000.h5")
    assert check_structure(reader) == [] and check_values(reader) == []
    for s, back in zip(samples, read_samples(reader)):
        np.testing.assert_array_equal(back.token_bytes, s.token_bytes)
        assert back.token_bytes.dtype == np.uint16
    samples[1].token_bytes = None
    with pytest.raises(ValueError, match="1 of 3 samples lack the token byte lengths"):
        write_shard(tmp_path / "shard-00001.h5", 1, samples, ShardAttrs("t", "f", 100, 4, {}))


class Regions(SampleText):
    """A per-sample string this build does not ship (a JSON list, as text regions are)."""

    name = "regions"
    dataset = "samples/regions"
    what = "text regions"

    def check_values(self, texts):
        bad = [i for i, t in enumerate(texts) if not t.startswith("[")]
        return [f"{self.dataset}: sample {bad[0]} is not a JSON list"] if bad else []


def test_a_new_per_sample_string_is_one_object_and_one_registry_entry(tmp_path, monkeypatch):
    monkeypatch.setitem(codecs.SAMPLE_TEXTS, "regions", Regions())
    rng = np.random.default_rng(4)
    samples = [random_sample(rng, f"p{i}", vocab=100, k=4) for i in range(3)]
    for i, s in enumerate(samples):
        s.regions = f'[["user",0,{i + 1},0]]'
    write_shard(tmp_path / "shard-00000.h5", 0, samples, ShardAttrs("t", "f", 100, 4, {}))
    reader = ShardReader(tmp_path / "shard-00000.h5")
    assert check_structure(reader) == []
    assert [s.regions for s in read_samples(reader)] == [s.regions for s in samples]
    samples[2].regions = "user 0..3"
    write_shard(tmp_path / "shard-00001.h5", 1, samples, ShardAttrs("t", "f", 100, 4, {}))
    assert check_structure(ShardReader(tmp_path / "shard-00001.h5")) == [
        "samples/regions: sample 2 is not a JSON list"]


def format_branches(path: Path, root: Path = ROOT) -> list[str]:
    """Comparisons with (and dict displays keyed by) a registered format or kind name."""
    def names(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value} & FORMAT_NAMES
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return set().union(set(), *(names(e) for e in node.elts))
        return set()
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        operands = ([node.left, *node.comparators] if isinstance(node, ast.Compare)
                    else [k for k in node.keys if k is not None] if isinstance(node, ast.Dict)
                    else [])
        if any(names(x) for x in operands):
            found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_the_branch_counter_sees_the_branches_it_forbids(tmp_path):
    (tmp_path / "probe.py").write_text('if cfg.label_kind == "sampled": pass\n'
                                       'encode = {"q8": 1, "q8poly": 2}.get(name)\n'
                                       'if fmt in ("int8", "pca"): pass\n'
                                       'if mode == "score" or kind == "sampled_logprobs": pass\n')
    assert sorted(b.split(":")[1] for b in format_branches(tmp_path / "probe.py", tmp_path)) == \
        ["1", "2", "3"]


def test_format_names_are_compared_almost_nowhere_outside_the_registry():
    codec_dir = ROOT / "pipeline" / "store" / "codecs"
    paths = [p for folder in ("pipeline", "stages") for p in sorted((ROOT / folder).rglob("*.py"))
             if codec_dir not in p.parents]
    found = [b for p in paths for b in format_branches(p)]
    assert len(found) <= MAX_FORMAT_BRANCHES, (
        f"{len(found)} format branches outside pipeline/store/codecs (at most "
        f"{MAX_FORMAT_BRANCHES}); ask the codec instead:\n" + "\n".join(found))
