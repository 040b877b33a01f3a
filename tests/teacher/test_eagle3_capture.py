"""`--hidden-layers eagle3` end to end with the fake engine (hidden states from the real
transformers teacher): the layers stored, the pre-norm last state against an oracle that
never uses the hook (the teacher with its final norm replaced by the identity), the int8
default within its bound, and resume, verify and two workers as for any output."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TEACHER, require_teacher
from fake_engine import run_fake
from pipeline.store.codecs.hidden_int8 import int8_error_bound
from pipeline.store.manifest import read_manifest
from pipeline.store.shard_reader import ShardReader
from pipeline.store.verify import verify_outputs
from schemas import shard_name
from schemas.eagle3 import PRE_NORM_DATASET, PRE_NORM_LAST, eagle3_layers
from schemas.teacher_config import ConfigError, TeacherConfig

LAYERS = eagle3_layers(30)  # SmolLM2-135M: 30 blocks


def args(out, *extra):
    return ["teacher-labels", "--teacher", str(TEACHER), "--prompts", "data/prompts/demo.jsonl",
            "--limit", "6", "--shard-size", "4", "--top-k", "5", "--max-tokens", "16",
            "--max-model-len", "256", "--min-mean-logprob", "none", "--dtype", "float32",
            "--hidden-layers", "eagle3", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    require_teacher()
    root = tmp_path_factory.mktemp("eagle3")
    for name, extra in (("int8", ()), ("fp16", ("--hidden-format", "fp16")),
                        ("w0", ("--num-workers", "2", "--worker-index", "0")),
                        ("w1", ("--num-workers", "2", "--worker-index", "1")),
                        ("filtered", ("--min-completion-tokens", "7"))):
        proc = run_fake(args(root / name, *extra))
        assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def samples(out, with_ids: bool = False):
    for index in sorted(read_manifest(out).shards):
        reader = ShardReader(out / shard_name(index))
        ids = reader.strings("samples/ids")
        for row in range(len(reader)):
            yield (ids[row], reader.sample(row)) if with_ids else reader.sample(row)


def codes_apart_at_most_one(got: np.ndarray, want: np.ndarray) -> bool:
    """Two int8-decoded recomputations of the same states: each value within the codec's bound
    of the other's plus one code step there, (2 |q| + 1) x the row scale."""
    scale = np.abs(want).max(axis=1, keepdims=True) / 127**2
    step = (2 * np.sqrt(np.abs(want) / scale) + 1) * scale
    return bool(np.all(np.abs(got - want) <= 2 * int8_error_bound(want) + step))


def oracle(token_ids: np.ndarray) -> dict[int, np.ndarray]:
    """The eagle3 states by another route: block inputs from `output_hidden_states`, and the
    last block's output as the final state of the same teacher without its final norm."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32).eval()
    ids = torch.as_tensor(token_ids.astype(np.int64))[None]
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states
        model.model.norm = torch.nn.Identity()
        pre_norm = model(ids, output_hidden_states=True).hidden_states[-1]
    return {**{layer: states[layer][0].numpy() for layer in LAYERS[:3]},
            PRE_NORM_LAST: pre_norm[0].numpy()}


def test_the_preset_stores_the_eagle3_layers_int8_by_default_and_verifies(runs):
    m = read_manifest(runs / "int8")
    assert m.hidden_layers == LAYERS == [2, 15, 27, PRE_NORM_LAST]
    assert m.hidden_format == "int8" and m.config["hidden_layers"] == "eagle3"
    assert all(rec.hidden_layers == LAYERS for rec in m.shards.values())
    assert not verify_outputs([runs / "int8"]).problems
    reader = ShardReader(runs / "int8" / shard_name(min(m.shards)))
    assert PRE_NORM_DATASET in reader.arrays and f"{PRE_NORM_DATASET}_scale" in reader.arrays


def test_stored_states_match_an_oracle_without_the_hook(runs):
    checked = 0
    for s in list(samples(runs / "fp16"))[:3]:
        want = oracle(s["token_ids"])
        for layer in LAYERS:
            got = s[f"hidden_{layer}"].astype(np.float32)
            scale = np.abs(want[layer]).max(axis=1, keepdims=True)
            # fp16 storage plus batched-vs-single float32 sums
            assert np.all(np.abs(got - want[layer]) <= 2e-3 * np.abs(want[layer]) + 1e-4 * scale), layer
            checked += 1
        # the pre-norm state is not the post-norm one (the hook caught the norm's input)
        assert not np.allclose(s[f"hidden_{PRE_NORM_LAST}"], want[LAYERS[2]], rtol=0.1)
    assert checked == 3 * len(LAYERS)


def test_int8_rows_are_within_the_codec_bound_of_the_fp16_rows(runs):
    for a, b in zip(samples(runs / "int8"), samples(runs / "fp16"), strict=True):
        assert np.array_equal(a["token_ids"], b["token_ids"])
        for layer in LAYERS:
            exact = b[f"hidden_{layer}"].astype(np.float32)
            slack = np.abs(exact) * 2.0**-10 + 1e-6 * np.abs(exact).max(axis=1, keepdims=True)
            assert np.all(np.abs(a[f"hidden_{layer}"] - exact) <= int8_error_bound(exact) + slack)


def test_a_rerun_resumes_with_nothing_to_do_and_identical_shards(runs):
    out = runs / "int8"
    before = {p.name: p.read_bytes() for p in out.glob("shard-*.h5")}
    proc = run_fake(args(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 shard(s) written" in proc.stderr + proc.stdout
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.h5")} == before


def test_two_workers_outputs_read_together(runs):
    report = verify_outputs([runs / "w0", runs / "w1"])
    assert not report.problems
    ids = [set(read_manifest(runs / w).shards) for w in ("w0", "w1")]
    assert all(ids) and read_manifest(runs / "w1").hidden_layers == LAYERS


def test_filtered_samples_keep_their_own_states(runs):
    m = read_manifest(runs / "filtered")
    assert m.totals()["dropped"] > 0 and m.totals()["samples"] > 0
    assert not verify_outputs([runs / "filtered"]).problems
    everything = dict(samples(runs / "int8", with_ids=True))
    for sid, got in samples(runs / "filtered", with_ids=True):
        want = everything[sid]
        assert len(got["positions"]) >= 7 and np.array_equal(got["token_ids"], want["token_ids"])
        for layer in LAYERS:  # other batch neighbours: CPU float32 sums may round a code apart
            assert codes_apart_at_most_one(got[f"hidden_{layer}"], want[f"hidden_{layer}"]), layer


def test_the_preset_in_the_config():
    base = dict(prompts="p.jsonl", out="o")
    assert TeacherConfig(hidden_layers="eagle3", **base).validate().hidden_format == "int8"
    assert TeacherConfig(hidden_layers="3,-1", **base).validate().hidden_format == "fp16"
    assert TeacherConfig(**base).validate().hidden_format == "fp16"
    with pytest.raises(ConfigError, match="--hidden-layers must be comma-separated integers .*'eagle3'"):
        TeacherConfig(hidden_layers="eagle4", **base).validate()
    with pytest.raises(ConfigError, match="at least 7 layers"):
        eagle3_layers(6)


@pytest.mark.parametrize("point", ["fsynced:shard-00000.h5@2", "renamed:shard-00001.h5@2"])
def test_killed_in_the_hidden_state_pass_then_resumed_like_an_uninterrupted_run(runs, tmp_path, point):
    out = tmp_path / "out"
    crashed = run_fake(args(out), KD_CRASH_AT=point)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    assert not read_manifest(out).complete
    # what is committed verifies; a shard rewritten but not re-sealed is named, never trusted
    assert all(p.check in ("size", "sha256") for p in verify_outputs([out]).problems)
    rerun = run_fake(args(out))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert not verify_outputs([out]).problems
    for got, want in zip(samples(out), samples(runs / "int8"), strict=True):
        for key in ("token_ids", "positions", "topk_ids", "topk_logprobs"):
            assert np.array_equal(got[key], want[key]), key
        for layer in LAYERS:  # recomputed on resume: CPU float32 sums may round one code apart
            assert codes_apart_at_most_one(got[f"hidden_{layer}"], want[f"hidden_{layer}"]), layer


def test_a_second_writer_of_an_eagle3_output_is_refused_naming_the_holder(runs):
    import subprocess
    import sys

    from conftest import ROOT

    out = runs / "int8"
    before = {p.name: p.read_bytes() for p in out.glob("shard-*.h5")}
    hold = ("import sys, time; from pipeline.store.output_lock import OutputLock; "
            "lock = OutputLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run_fake(args(out))
        assert proc.returncode == 75 and f"pid {holder.pid}" in proc.stderr, proc.stderr[-2000:]
    finally:
        holder.kill()
        holder.wait()
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.h5")} == before
