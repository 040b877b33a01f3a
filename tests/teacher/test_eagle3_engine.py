"""Integration: the real vLLM CPU engine with `--hidden-layers eagle3` (float32, stored fp16).

The stored pre-norm last state, passed through the teacher's own final norm and LM head,
must give back the engine's distribution: its log-softmax matches the stored top-k
logprobs at every labelled position, within the fp32 oracle tolerance of the engine tests.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TEACHER
from pipeline.store.manifest import read_manifest
from pipeline.store.shard_reader import ShardReader
from pipeline.store.verify import verify_outputs
from schemas import shard_name
from schemas.eagle3 import PRE_NORM_LAST, eagle3_layers

pytestmark = pytest.mark.engine
pytest.importorskip("vllm")

LOGPROB_TOL = 1e-2  # as test_teacher_engine: fp16 logprob storage, float32 engine vs transformers


def test_pre_norm_last_through_norm_and_head_gives_the_stored_labels(engine_eagle3_labels):
    import torch
    from transformers import AutoModelForCausalLM

    out = engine_eagle3_labels
    m = read_manifest(out)
    assert m.hidden_layers == eagle3_layers(30) and not verify_outputs([out]).problems
    model = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32).eval()
    rows = 0
    for index in sorted(m.shards):
        reader = ShardReader(out / shard_name(index))
        for i in range(len(reader)):
            s = reader.sample(i)
            pre = torch.as_tensor(np.asarray(s[f"hidden_{PRE_NORM_LAST}"], np.float32))
            with torch.no_grad():
                logp = model.lm_head(model.model.norm(pre)).log_softmax(-1).numpy()
            at = logp[s["positions"].astype(np.int64) - 1]  # row j is for token positions[j]
            got = np.take_along_axis(at, s["topk_ids"].astype(np.int64), 1)
            np.testing.assert_allclose(got, s["topk_logprobs"], atol=LOGPROB_TOL,
                                       err_msg=f"shard {index} sample {i}")
            rows += len(at)
    assert rows == m.totals()["completion_tokens"] > 0
