"""Integration: the real vLLM CPU engine and the embedded teacher, checked against transformers.

One `kd teacher-labels` run (float32, n = 2, hidden layers 3 and -1, a prompt
file with bad records) is shared by every test here; the oracle is a float32
transformers forward pass of the same teacher over the same tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from conftest import TEACHER, run_kd, teacher_args
from pipeline.store.manifest import read_manifest
from pipeline.store.sample_index import read_index
from pipeline.store.shard_reader import ShardReader
from pipeline.store.verify import verify_outputs
from pipeline.teacher.confidence import confidence_metrics
from schemas import shard_name

pytestmark = pytest.mark.engine
pytest.importorskip("vllm")

# fp16 storage of logprobs around -10 rounds by up to ~4e-3; the bound is 1e-2.
LOGPROB_TOL = 1e-2


@pytest.fixture(scope="session")
def labels(engine_labels) -> Path:
    return engine_labels


@pytest.fixture(scope="session")
def teacher_model():
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32).eval()


def all_samples(out: Path):
    m = read_manifest(out)
    for index in sorted(m.shards):
        reader = ShardReader(out / shard_name(index))
        ids = reader.strings("samples/ids")
        for row in range(len(reader)):
            yield ids[row], reader.sample(row)


def forward(model, token_ids: np.ndarray):
    import torch

    with torch.no_grad():
        out = model(torch.as_tensor(token_ids.astype(np.int64))[None], output_hidden_states=True)
    return out.logits[0].log_softmax(-1).numpy(), [h[0].numpy() for h in out.hidden_states]


def test_every_input_record_is_accepted_or_rejected(labels):
    m = read_manifest(labels)
    rejects = [json.loads(line) for line in (labels / "rejects.jsonl").read_text().splitlines()]
    assert (m.input_records, m.accepted_prompts, m.rejected_prompts) == (18, 13, 5)
    assert sorted((r["line"], r["reason"]) for r in rejects) == [
        (4, "malformed_json"), (7, "missing_prompt"), (10, "empty_prompt"),
        (12, "duplicate_id"), (15, "too_long")]
    assert m.complete and m.totals()["generated"] == 13 * 2


def test_output_verifies(labels):
    assert verify_outputs([labels]).problems == [] and read_manifest(labels).hidden_layers == [3, 30]


def test_soft_labels_match_a_transformers_forward(labels, teacher_model):
    rows = 0
    for sid, s in all_samples(labels):
        logp, _ = forward(teacher_model, s["token_ids"])
        p = s["prompt_length"]
        # Row j predicts the token at position p + j from the logits at p + j - 1.
        true = logp[p - 1:len(s["token_ids"]) - 1]
        ids = s["topk_ids"].astype(np.int64)
        stored = s["topk_logprobs"].astype(np.float32)
        np.testing.assert_allclose(np.take_along_axis(true, ids, 1), stored, atol=LOGPROB_TOL,
                                   err_msg=sid)
        sampled = true[np.arange(len(true)), s["token_ids"][p:].astype(np.int64)]
        np.testing.assert_allclose(sampled, s["sampled_logprobs"], atol=LOGPROB_TOL, err_msg=sid)
        k = ids.shape[1]
        kth_best = -np.sort(-true, axis=1)[:, k]   # the best token *outside* a true top-k
        assert np.all(stored[:, -1] >= kth_best - LOGPROB_TOL), sid
        rows += len(true)
    assert rows == read_manifest(labels).totals()["completion_tokens"]


def test_hidden_states_match_and_last_layer_is_after_the_final_norm(labels, teacher_model):
    import torch

    for sid, s in list(all_samples(labels))[:6]:
        logp, hidden = forward(teacher_model, s["token_ids"])
        for layer in (3, 30):
            np.testing.assert_allclose(s[f"hidden_{layer}"].astype(np.float32), hidden[layer],
                                       rtol=2e-3, atol=2e-3, err_msg=f"{sid} layer {layer}")
        # The LM head applied to stored layer -1 reproduces the teacher's distribution:
        # layer -1 is after the final norm, as documented.
        with torch.no_grad():
            head = teacher_model.lm_head(torch.as_tensor(s["hidden_30"].astype(np.float32)))
        p = s["prompt_length"]
        top1 = head.log_softmax(-1).numpy()[p - 1:-1].max(axis=1)
        np.testing.assert_allclose(top1, s["topk_logprobs"][:, 0], atol=0.05, err_msg=sid)


def test_index_has_a_row_per_sample_with_metrics_that_match_the_shards(labels):
    index = read_index(labels).to_pylist()
    assert len(index) == 26 and len({r["sample_id"] for r in index}) == 26
    by_id = {r["sample_id"]: r for r in index}
    m = read_manifest(labels)
    for index_no in sorted(m.shards):
        reader = ShardReader(labels / shard_name(index_no))
        for row, sid in enumerate(reader.strings("samples/ids")):
            r, s = by_id[sid], reader.sample(row)
            assert (r["kept"], r["shard"], r["row"]) == (True, shard_name(index_no), row)
            again = confidence_metrics(s["topk_logprobs"].astype(np.float32), s["sampled_logprobs"],
                                       s["token_ids"][s["prompt_length"]:].tolist(),
                                       r["finish_reason"])
            assert again.completion_tokens == r["completion_tokens"]
            assert again.mean_logprob == pytest.approx(r["mean_logprob"], abs=1e-6)
            assert again.mean_entropy == pytest.approx(r["mean_entropy"], abs=5e-3)


def test_rerun_generates_nothing_and_leaves_shards_byte_identical(labels):
    before = {p.name: p.read_bytes() for p in labels.glob("shard-*.h5")}
    proc = run_kd(teacher_args(labels))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 shard(s) written, 4 reused" in proc.stdout
    assert {p.name: p.read_bytes() for p in labels.glob("shard-*.h5")} == before


def test_rerun_with_another_k_is_refused_naming_the_field(labels):
    proc = run_kd(teacher_args(labels, "--top-k", "5"))
    assert proc.returncode != 0 and "top_k" in proc.stderr


def test_filtering_drops_by_reason_and_indexes_the_dropped(labels, tmp_path):
    """Refilter the same samples strictly (a rerun into a new dir with the same seed)."""
    out = tmp_path / "strict"
    args = [a for a in teacher_args(out) if a != "--no-drop-truncated"]
    args = args[:args.index("--hidden-layers")] + args[args.index("--hidden-layers") + 2:]
    proc = run_kd(args + ["--limit", "6", "--max-mean-entropy", "1.0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = read_manifest(out)
    index = read_index(out)
    dropped = index.filter(pc.invert(index["kept"]))
    reasons = dict(zip(*np.unique(dropped["drop_reason"].to_numpy(zero_copy_only=False),
                                  return_counts=True)))
    assert {k: int(v) for k, v in reasons.items()} == m.dropped_by_reason()
    assert m.totals()["samples"] + sum(reasons.values()) == m.totals()["generated"]
    kept = index.filter(index["kept"])
    assert all(r == "stop" for r in kept["finish_reason"].to_pylist())
    assert all(e <= 1.0 for e in kept["mean_entropy"].to_pylist())
    assert verify_outputs([out]).problems == []
