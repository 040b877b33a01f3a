"""Environment faults end in one line, exit status 74, no traceback (`kd --verbose` shows it).

Triggered for real: a --teacher folder that is not there, a truncated safetensors
file, an HDF5 file cut short (h5py's OSError has no errno), and, with the real
engine, a KV cache larger than the machine's memory. The fake engine stands in
for vLLM where the fault comes before it.
"""

from __future__ import annotations

import json
import logging.config
import multiprocessing
import shutil
import struct
import sys

import pytest

from conftest import ROOT, TEACHER, require_teacher, run_kd, write_fake_output

sys.path.insert(0, str(ROOT / "tests/teacher"))
from fake_engine import run_fake  # noqa: E402

EXIT_ENVIRONMENT = 74


def teacher_args(teacher, out, *extra):
    return ["teacher-labels", "--teacher", str(teacher), "--prompts",
            str(ROOT / "data/prompts/demo.jsonl"), "--out", str(out), "--limit", "2", *extra]


def assert_one_line(proc, *fragments):
    assert proc.returncode == EXIT_ENVIRONMENT, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("kd teacher-labels:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_teacher_folder(tmp_path):
    gone = tmp_path / "moved-away"
    proc = run_fake(teacher_args(gone, tmp_path / "out"))
    assert_one_line(proc, "no model folder there", f"--teacher the checkpoint's current path: {gone}")
    verbose = run_fake(["--verbose", *teacher_args(gone, tmp_path / "out")])
    assert verbose.returncode == EXIT_ENVIRONMENT and "Traceback" in verbose.stderr


def test_truncated_safetensors(tmp_path):
    require_teacher()
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TEACHER / name, teacher / name)
    header = json.dumps({"w": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}}).encode()
    whole = struct.pack("<Q", len(header)) + header + bytes(256)
    (teacher / "model.safetensors").write_bytes(whole[:-100])
    proc = run_fake(teacher_args(teacher, tmp_path / "out"))
    assert_one_line(proc, "corrupt safetensors file: 156 bytes of tensor data, its header promises 256",
                    str(teacher / "model.safetensors"))


def test_h5py_error_without_errno_is_an_environment_fault(tmp_path):
    from pipeline.store.shard_reader import ShardReader
    from stages.cli.faults import HDF5, environment_cause, fault_path

    write_fake_output(tmp_path / "out", shards=1)
    shard = tmp_path / "out/shard-00000.h5"
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(OSError) as caught:
        ShardReader(shard)
    assert caught.value.errno is None
    assert environment_cause(caught.value) == HDF5
    assert fault_path(caught.value, "fallback") == str(shard)


def test_engine_start_cause_is_read_from_the_engine_log(tmp_path):
    from stages.cli.faults import KV_CACHE, environment_error

    log = tmp_path / "engine.log"
    log.write_text("INFO ...\nValueError: 4.0 GiB KV cache is needed, which is larger than the "
                   "available KV cache memory (0.5 GiB)\n")
    exc = RuntimeError("Engine core initialization failed. See root cause above.")
    assert environment_error(exc, log)[1] == f"the vLLM engine did not start: {KV_CACHE}"
    assert environment_error(exc, tmp_path / "none.log")[1].endswith("(its log: "
                                                                    f"{tmp_path / 'none.log'})")
    assert environment_error(RuntimeError("a bug of ours"), log) is None


def log_warnings(config, lines):
    """In a fresh process: configure logging as an engine process does, log `lines`."""
    logging.config.dictConfig(config)
    for line in lines:
        logging.getLogger("vllm.test").warning(line)


def test_each_warning_reaches_the_terminal_once_across_processes(tmp_path, capfd):
    from stages.cli.engine_logs import HARMLESS_WARNINGS, logging_config

    seen = tmp_path / "seen"
    config = logging_config(tmp_path / "engine.log", str(seen), "cpu")
    harmless = HARMLESS_WARNINGS["cpu"][0]
    lines = ["disk almost full", f"{harmless} (harmless here)", "disk almost full", "another"]
    for _ in range(3):  # three engine processes, each with its own copy of every warning
        p = multiprocessing.get_context("spawn").Process(target=log_warnings, args=(config, lines))
        p.start()
        p.join()
        assert p.exitcode == 0
    shown = [line for line in capfd.readouterr().err.splitlines() if line.startswith("vLLM")]
    assert shown == ["vLLM WARNING: disk almost full", "vLLM WARNING: another"]
    assert (tmp_path / "engine.log").read_text().count("disk almost full") == 6
    assert (tmp_path / "engine.log").read_text().count(harmless) == 3


@pytest.mark.engine
def test_kv_cache_larger_than_memory(tmp_path):
    """The real engine: a KV cache of 200 GiB on a machine with less memory."""
    pytest.importorskip("vllm")
    require_teacher()
    proc = run_kd([sys.executable, "-m", "stages.cli.main",
                   *teacher_args(TEACHER, tmp_path / "out", "--max-tokens", "8", "--dtype",
                                 "float32", "--enforce-eager", "--kv-cache-gib", "200")])
    assert_one_line(proc, "the vLLM engine did not start")
