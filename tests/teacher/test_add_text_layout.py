"""`kd add-text-layout`: an older (v2) output gains the layout a fresh v3 run writes.

A fresh v3 output (fake engine, real tokenizer) is turned back into the v2
output an older build wrote (the two datasets dropped, version 2), then given
its layout again from the ids alone: the byte lengths must be the fresh ones
exactly, and the regions the fresh ones, plus what only the ids know (the
template's default system message) and with a prompt/completion record's roles
as the chat it was rendered as. A killed run is finished by the same command;
refusals leave the output untouched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import MIXED_PROMPTS, ROOT, SCORE_INPUT, TEACHER, fake_attrs, require_teacher
from fake_engine import run_fake
from pipeline.store.atomic_commit import sha256_file
from pipeline.store.fingerprint import tokenizer_fingerprint
from pipeline.store.manifest import read_manifest
from pipeline.store.shard_reader import ShardReader
from pipeline.store.text_layout_datasets import LAYOUT_DATASETS
from pipeline.store.verify import verify_outputs
from bench.synthetic_output import write_random_output
from schemas import SHARD_SCHEMA_VERSION


def kd(*args: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "stages.cli.main", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=300, env=os.environ | env)


def downgrade_to_v2(out: Path) -> None:
    """Rewrite a v3 output as the v2 writer wrote it: no layout datasets, version 2."""
    manifest = json.loads((out / "manifest.json").read_text())
    for rec in manifest["shards"]:
        path = out / rec["name"]
        with h5py.File(path, "r+") as f:
            for name in [n for n in LAYOUT_DATASETS if n in f]:
                del f[name]
            f.attrs["schema_version"] = 2
        rec["sha256"], rec["bytes"] = sha256_file(path), path.stat().st_size
    manifest["schema_version"] = 2
    manifest.pop("text_layout", None)
    (out / "manifest.json").write_text(json.dumps(manifest))


def fresh(tmp_path_factory, name: str, *args: str) -> Path:
    require_teacher()
    out = tmp_path_factory.mktemp(name) / "out"
    proc = run_fake(["teacher-labels", "--teacher", str(TEACHER), "--out", str(out), "--top-k", "4",
                     "--shard-size", "4", "--max-model-len", "256", *args])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return fresh(tmp_path_factory, "gen", "--prompts", str(MIXED_PROMPTS), "--max-tokens", "16")


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> Path:
    return fresh(tmp_path_factory, "score", "--mode", "score", "--prompts", str(SCORE_INPUT),
                 "--window-overlap", "64")


def old_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    downgrade_to_v2(dst)
    assert read_manifest(dst).schema_version == 2 and not verify_outputs([dst]).problems
    return dst


def layouts(out: Path) -> dict[str, tuple[list[int], list[tuple]]]:
    found = {}
    for rec in read_manifest(out).shards.values():
        r = ShardReader(out / rec.name)
        for i, sid in enumerate(r.strings("samples/ids")):
            s = r.sample(i)
            found[sid] = (s["token_byte_lengths"].tolist(),
                          [(g.role, g.start, g.end, g.labelled) for g in s["regions"]])
    return found


AS_RENDERED = {"prompt": "user", "completion": "assistant"}


@pytest.mark.parametrize("which", ["generated", "scored"])
def test_an_old_output_gains_the_layout_a_fresh_run_writes(tmp_path, request, which):
    src = request.getfixturevalue(which)
    out = old_copy(src, tmp_path / "old")
    proc = kd("add-text-layout", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "0 already had it" in proc.stdout
    m = read_manifest(out)
    assert (m.schema_version, m.text_layout) == (SHARD_SCHEMA_VERSION, True)
    assert not verify_outputs([out]).problems
    want, got = layouts(src), layouts(out)
    assert sorted(want) == sorted(got)
    for sid, (lengths, regions) in want.items():
        assert got[sid][0] == lengths, sid
        rebuilt = got[sid][1]
        if which == "scored" and regions[0][0] != "text":
            regions = [(AS_RENDERED.get(r, r), *rest) for r, *rest in regions]
        extra = [g for g in rebuilt if g not in regions]
        assert [g for g in rebuilt if g in regions] == regions, sid
        assert all(role == "system" and not labelled for role, _, _, labelled in extra), sid
    again = kd("add-text-layout", str(out))
    assert again.returncode == 0 and f"0 shard(s) rewritten, {len(m.shards)} already had it" in again.stdout


def test_a_killed_run_is_finished_by_the_same_command(tmp_path, generated):
    whole = old_copy(generated, tmp_path / "whole")
    assert kd("add-text-layout", str(whole)).returncode == 0
    out = old_copy(generated, tmp_path / "old")
    crashed = kd("add-text-layout", str(out), KD_CRASH_AT="renamed:shard-00001.h5")
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    assert verify_outputs([out]).problems  # v3 shards under a v2 manifest, named
    resumed = kd("add-text-layout", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "already had it" in resumed.stdout and not verify_outputs([out]).problems
    for rec in read_manifest(whole).shards.values():
        assert sha256_file(out / rec.name) == rec.sha256, rec.name


def shard_hashes(out: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(out.iterdir())
            if p.is_file() and not p.name.startswith(".")}  # not the writer lock


def test_ids_that_are_not_chatml_are_refused_and_nothing_changes(tmp_path):
    require_teacher()
    from transformers import AutoTokenizer

    fingerprint = tokenizer_fingerprint(AutoTokenizer.from_pretrained(TEACHER))
    attrs = fake_attrs()
    attrs = type(attrs)(str(TEACHER), fingerprint, 49152, attrs.top_k, attrs.sampling)
    out = tmp_path / "base"
    write_random_output(out, attrs, 2, 3, seed=3)
    for rec in read_manifest(out).shards.values():  # base-model prompts: no ChatML markers
        ids = ShardReader(out / rec.name).arrays["samples/token_ids"]
        assert not np.isin(ids, [1, 2]).any() or pytest.skip("random ids hit a marker")
    downgrade_to_v2(out)
    before = shard_hashes(out)
    proc = kd("add-text-layout", str(out))
    assert proc.returncode == 1 and "holds no <|im_start|>" in proc.stderr and "sample p0-0/0" in proc.stderr
    assert shard_hashes(out) == before


def test_a_tokenizer_that_is_not_the_outputs_is_refused(tmp_path):
    require_teacher()
    out = tmp_path / "fake"
    write_random_output(out, fake_attrs(), 1, 2)
    downgrade_to_v2(out)
    no_tokenizer = kd("add-text-layout", str(out))
    assert no_tokenizer.returncode == 1 and "pass --tokenizer" in no_tokenizer.stderr
    other = kd("add-text-layout", str(out), "--tokenizer", str(TEACHER))
    assert other.returncode == 1 and "fingerprint is not the output's" in other.stderr
