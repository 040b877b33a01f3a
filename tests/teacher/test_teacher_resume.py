"""Integration: a real teacher run killed with SIGKILL, damaged, preempted with SIGTERM, resumed.

The sequence, on the real vLLM CPU engine:
1. start a run, SIGKILL its whole process group once two shards are committed;
2. truncate one committed shard (a torn copy) and flip a byte in another;
3. rerun, SIGTERM the main process once a new shard is committed: it must exit
   143 after writing its manifest;
4. rerun to the end: every accepted prompt's samples present exactly once,
   every checksum verifies, no temporary file is left, damaged shards redone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.store.manifest import ManifestError, read_manifest
from pipeline.store.sample_index import read_index
from pipeline.store.verify import verify_outputs
from schemas import shard_name

pytestmark = pytest.mark.engine
pytest.importorskip("vllm")

from conftest import ROOT, TEACHER, flip_byte, require_teacher  # noqa: E402

PROMPTS = 40


def start_run(out: Path, log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "stages.cli.main", "teacher-labels", "--teacher", str(TEACHER),
            "--prompts", str(ROOT / "data/prompts/demo.jsonl"), "--limit", str(PROMPTS),
            "--out", str(out), "--max-tokens", "16", "--shard-size", "4", "--shards-in-flight", "1",
            "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
            "--no-drop-truncated"]
    return subprocess.Popen(args, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def committed(out: Path) -> int:
    try:
        return len(read_manifest(out).shards)
    except ManifestError:
        return 0


def wait_for_shards(proc: subprocess.Popen, out: Path, count: int, log: Path,
                    timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while committed(out) < count:
        assert proc.poll() is None, f"run ended early:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, "timed out waiting for shards"
        time.sleep(0.2)


def test_sigkill_damage_sigterm_then_resume_completes_exactly_once(tmp_path):
    require_teacher()
    out, log = tmp_path / "out", tmp_path / "run.log"

    proc = start_run(out, log)
    wait_for_shards(proc, out, 2, log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = read_manifest(out)
    assert not first.complete and len(first.shards) >= 2

    torn = out / shard_name(0)
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    flipped = out / shard_name(1)
    flip_byte(flipped)

    proc = start_run(out, log)
    wait_for_shards(proc, out, len(first.shards) + 1, log)
    proc.send_signal(signal.SIGTERM)   # the main process only, as a preemption notice
    assert proc.wait(timeout=300) == 143, log.read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    preempted = read_manifest(out)
    assert not preempted.complete
    assert verify_outputs([out]).problems == []
    text = log.read_text()
    assert f"regenerating {shard_name(0)}" in text and f"regenerating {shard_name(1)}" in text
    last = [line for line in text.splitlines() if line.strip()][-1]
    assert last.startswith("resume with: kd teacher-labels --teacher "), last
    # the SIGKILLed first run's lock was taken over, with a warning naming it
    assert "taking over the writer lock" in text

    proc = start_run(out, log)
    assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    m = read_manifest(out)
    assert m.complete and verify_outputs([out]).problems == []
    ids = read_index(out)["sample_id"].to_pylist()
    assert len(ids) == len(set(ids)) == m.accepted_prompts == PROMPTS
    assert not list(out.rglob("*.tmp"))
    assert sorted(p.name for p in out.glob("shard-*.h5")) == [shard_name(i) for i in range(10)]
