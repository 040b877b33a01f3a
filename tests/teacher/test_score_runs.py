"""Score-mode runs end to end with the fake engine: resume after a crash, refusals, empty input.

The fake engine (`fake_engine.py`) answers prompt-logprob requests in vLLM's
flat layout, so the whole stage (records, windows, shards, index, manifest)
runs without vLLM; the real engine's numbers are checked in `test_score_engine.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import ROOT, TEACHER, require_teacher
from fake_engine import fake_output, run_fake
from pipeline.store.manifest import read_manifest
from pipeline.store.shard_reader import ShardReader
from pipeline.store.verify import verify_outputs

CORPUS = ROOT / "data/corpus/train.jsonl"


def score_args(out: Path, *extra: str, prompts: Path = CORPUS) -> list[str]:
    return ["teacher-labels", "--mode", "score", "--teacher", str(TEACHER), "--prompts",
            str(prompts), "--limit", "12", "--shard-size", "4", "--top-k", "4",
            "--max-model-len", "128", "--window-overlap", "16", "--max-tokens", "16",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return fake_output(tmp_path_factory, "score", score_args)


def test_windows_become_samples_and_the_output_verifies(reference):
    m = read_manifest(reference)
    assert (m.mode, m.accepted_prompts, m.complete) == ("score", 12, True)
    assert m.totals()["generated"] == m.planned_samples > 12  # ~130-token documents, 127-token windows
    ids = [sid for rec in m.shards.values()
           for sid in ShardReader(reference / rec.name).strings("samples/ids")]
    assert "doc-001/w1" in ids and all("/w" in sid for sid in ids)
    assert not verify_outputs([reference]).problems


def test_sigkill_mid_run_then_the_same_command_completes_identically(tmp_path, reference):
    out = tmp_path / "out"
    crashed = run_fake(score_args(out), KD_CRASH_AT="renamed:shard-00001.h5")
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    assert not read_manifest(out).complete
    resumed = run_fake(score_args(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    names = sorted(p.name for p in reference.glob("shard-*.h5"))
    assert sorted(p.name for p in out.glob("shard-*.h5")) == names
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.parametrize("change, named", [
    (["--window-overlap", "8"], "window_overlap"), (["--mode", "generate"], "mode")])
def test_a_rerun_with_other_settings_is_refused_naming_them(tmp_path, reference, change, named):
    out = tmp_path / "out"
    assert run_fake(score_args(out)).returncode == 0
    args = score_args(out)
    i = args.index(change[0])
    args[i + 1] = change[1]
    refused = run_fake(args)
    assert refused.returncode == 1
    assert f"{out} was generated with different" in refused.stderr and named in refused.stderr


@pytest.mark.parametrize("mode", ["score", "generate"])
def test_an_input_with_no_usable_record_fails_saying_so(tmp_path, mode):
    require_teacher()
    garbage = tmp_path / "random.jsonl"
    garbage.write_bytes(os.urandom(4096).replace(b"\n", b"\n\x00") + b"\n" + b"\xff\xfe" * 9)
    out = tmp_path / "out"
    args = score_args(out, prompts=garbage)
    args[args.index("--mode") + 1] = mode
    proc = run_fake(args)
    assert proc.returncode == 1, proc.stderr[-2000:]
    records = min(12, sum(1 for line in garbage.read_bytes().split(b"\n") if line.strip()))
    assert f"none of its {records} records is usable (rejected: malformed_json {records})" \
        in proc.stderr
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == records and not (out / "manifest.json").exists()


def test_two_workers_split_the_records_and_together_make_the_single_run(tmp_path, reference):
    ids = {}
    for worker in (0, 1):
        out = tmp_path / f"w{worker}"
        proc = run_fake(score_args(out, "--num-workers", "2", "--worker-index", str(worker)))
        assert proc.returncode == 0, proc.stderr[-2000:]
        m = read_manifest(out)
        ids[worker] = {sid for rec in m.shards.values()
                       for sid in ShardReader(out / rec.name).strings("samples/ids")}
    single = {sid for rec in read_manifest(reference).shards.values()
              for sid in ShardReader(reference / rec.name).strings("samples/ids")}
    assert ids[0] and ids[1] and not ids[0] & ids[1] and ids[0] | ids[1] == single
    assert not verify_outputs([tmp_path / "w0", tmp_path / "w1"]).problems
