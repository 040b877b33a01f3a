"""The teacher stage killed, or out of disk, at every point of its commit protocol, then resumed.

Each point is a `pipeline.store.fault_points` pass: a shard's temporary file
written, fsynced, renamed; its index part; the manifest's temporary file and
its rename; the hidden-state rewrite of a shard; the final index merge. After
each crash (SIGKILL at that point) or ENOSPC (raised there): `kd verify`
passes on what is committed or names what is broken, the same command
completes the run, and every shard is byte-identical to an uninterrupted
run's. The fake engine stands in for vLLM (`fake_engine.py`); the real one
takes one point (engine marker).
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, TEACHER, require_teacher
from fake_engine import RUN_FAKE, run_fake
from pipeline.store.manifest import read_manifest
from pipeline.store.verify import verify_outputs



def teacher_args(out: Path, hidden: bool) -> list[str]:
    args = ["teacher-labels", "--teacher", str(TEACHER), "--prompts",
            str(ROOT / "data/prompts/demo.jsonl"), "--limit", "12", "--shard-size", "4",
            "--top-k", "4", "--max-tokens", "16", "--out", str(out)]
    return args + (["--hidden-layers", "-1"] if hidden else [])


def shard_bytes(out: Path) -> dict[str, bytes]:
    m = read_manifest(out)
    assert m.complete
    return {rec.name: (out / rec.name).read_bytes() for rec in m.shards.values()}


def h5_items(data: bytes) -> dict[str, tuple[dict, np.ndarray | None]]:
    """Every group's and dataset's attributes and values of an HDF5 file held in memory."""
    items = {}
    with h5py.File(io.BytesIO(data), "r") as f:
        items["/"] = (dict(f.attrs), None)
        f.visititems(lambda name, obj: items.__setitem__(
            name, (dict(obj.attrs), obj[()] if isinstance(obj, h5py.Dataset) else None)))
    return items


def assert_same_shards(got: dict[str, bytes], want: dict[str, bytes]) -> None:
    """Byte-identical shards, except that recomputed hidden states may differ by float16 rounding.

    A shard rewritten for hidden states but not yet re-sealed is recomputed on resume
    (never trusted), by a transformers forward pass on the CPU, whose float32 sums are not
    bit-reproducible from run to run (MKL picks kernels by buffer alignment), so the
    float16 states can land one rounding step apart; everything else must match exactly.
    """
    assert got.keys() == want.keys()
    for name in want:
        if got[name] == want[name]:
            continue
        a, b = h5_items(got[name]), h5_items(want[name])
        assert a.keys() == b.keys(), name
        for key, (attrs, values) in b.items():
            assert str(a[key][0]) == str(attrs), (name, key)
            if values is None:
                continue
            if key.startswith("hidden/") and values.dtype == np.float16:
                np.testing.assert_allclose(a[key][1].astype(np.float32), values.astype(np.float32),
                                           rtol=4e-3, atol=1e-3, err_msg=f"{name}: {key}")
            else:
                np.testing.assert_array_equal(a[key][1], values, err_msg=f"{name}: {key}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[bool, tuple[dict[str, bytes], list]]:
    """Uninterrupted runs, without and with hidden states: shard bytes and index rows."""
    require_teacher()
    refs = {}
    for hidden in (False, True):
        out = tmp_path_factory.mktemp("ref") / "out"
        proc = run_fake(teacher_args(out, hidden))
        assert proc.returncode == 0, proc.stderr[-2000:]
        refs[hidden] = (shard_bytes(out), pq.read_table(out / "index.parquet").to_pylist())
    return refs


POINTS = [  # (fault point, needs hidden states)
    ("written:shard-00001.h5", False), ("fsynced:shard-00001.h5", False),
    ("renamed:shard-00001.h5", False), ("renamed:part-00001.parquet", False),
    ("fsynced:manifest.json@3", False), ("renamed:manifest.json@3", False),
    ("fsynced:shard-00000.h5@2", True), ("renamed:shard-00000.h5@2", True),
    ("renamed:index.parquet", False),
]


def check_then_resume(out: Path, hidden: bool, reference) -> None:
    m = read_manifest(out)
    assert not m.complete
    problems = verify_outputs([out]).problems
    # What is committed verifies; a shard rewritten for hidden states but not yet re-sealed in
    # the manifest is named, never trusted.
    assert all(p.where.startswith("shard-") and p.check in ("size", "sha256") for p in problems), \
        problems
    assert not (out / "index.parquet").exists() or problems == []
    rerun = run_fake(teacher_args(out, hidden))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    shards, rows = reference[hidden]
    assert_same_shards(shard_bytes(out), shards)
    assert pq.read_table(out / "index.parquet").to_pylist() == rows
    assert verify_outputs([out]).problems == []


@pytest.mark.parametrize("point,hidden", POINTS, ids=[p for p, _ in POINTS])
def test_sigkill_at_each_point_then_the_same_command_completes_identically(
        tmp_path, reference, point, hidden):
    out = tmp_path / "out"
    crashed = run_fake(teacher_args(out, hidden), KD_CRASH_AT=point)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    check_then_resume(out, hidden, reference)


@pytest.mark.parametrize("point,hidden", POINTS, ids=[p for p, _ in POINTS])
def test_no_space_at_each_point_is_one_line_then_resumes(tmp_path, reference, point, hidden):
    out = tmp_path / "out"
    failed = run_fake(teacher_args(out, hidden), KD_FAIL_AT=point)
    assert failed.returncode == 74, failed.stderr[-2000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("kd teacher-labels: no space left on device: ") and "Traceback" \
        not in failed.stderr
    assert last.endswith(f"Resume with: {shlex.join(['kd', *teacher_args(out, hidden)])}")
    check_then_resume(out, hidden, reference)


def test_the_fault_message_word_for_word(tmp_path, reference):
    out = tmp_path / "out"
    failed = run_fake(teacher_args(out, False), KD_FAIL_AT="written:shard-00002.h5")
    assert failed.returncode == 74
    expected = (f"kd teacher-labels: no space left on device: {out / 'shard-00002.h5'}. Committed: "
                f"2 shard(s), 8 samples in {out} (kd verify {out} checks them). Resume with: "
                f"{shlex.join(['kd', *teacher_args(out, False)])}")
    assert failed.stderr.strip().splitlines()[-1] == expected


def test_verbose_adds_the_traceback(tmp_path, reference):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", RUN_FAKE, "--verbose", *teacher_args(out, False)],
                          cwd=ROOT, text=True, capture_output=True, timeout=300,
                          env=os.environ | {"KD_FAIL_AT": "renamed:part-00000.parquet"})
    assert proc.returncode == 74 and "Traceback" in proc.stderr
    assert "OSError: [Errno 28] No space left on device" in proc.stderr


@pytest.mark.engine
def test_the_real_engine_killed_after_an_index_part_resumes_identically(tmp_path,
                                                                        engine_labels):
    """engine_labels ran this same command uninterrupted: the rerun must reproduce it."""
    from conftest import run_kd, teacher_args as engine_args

    out, log = tmp_path / "out", tmp_path / "crash.log"
    env = os.environ | {"KD_CRASH_AT": "renamed:part-00001.parquet"}
    # Its own session: SIGKILL of the main process orphans vLLM's engine core, which is then
    # killed with the group (as a scheduler killing the job would).
    crashed = subprocess.Popen(engine_args(out), cwd=ROOT, stdout=log.open("w"),
                               stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        assert crashed.wait(timeout=900) == -9, log.read_text()[-2000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(crashed.pid, signal.SIGKILL)
    # the index part of shard 1 is committed, the manifest does not name shard 1 yet
    assert verify_outputs([out]).problems == [] and len(read_manifest(out).shards) == 1
    assert run_kd(engine_args(out)).returncode == 0
    assert shard_bytes(out) == shard_bytes(engine_labels)
