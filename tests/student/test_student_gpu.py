"""CUDA only: the student step under bf16 autocast agrees with float32 (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import fake_attrs, write_fake_output
from pipeline.student.batches import PlannedBatches, to_device
from pipeline.student.label_set import open_label_set
from schemas.student_config import StudentConfig
from stages.student.forward import batch_losses

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_bf16_autocast_losses_match_float32(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    write_fake_output(tmp_path, shards=1, per_shard=4, attrs=fake_attrs(vocab=1000, k=4))
    labels = open_label_set([tmp_path])
    device = torch.device("cuda")
    batch = to_device(PlannedBatches(labels, [np.arange(4)])[0], device)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=1)).to(device)
    cfg = StudentConfig()
    full = batch_losses(model, None, batch, 1000, cfg, {})
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = batch_losses(model, None, batch, 1000, cfg, {})
    assert half.soft.dtype == torch.float32   # losses are computed in float32 under autocast
    assert float(half.soft) == pytest.approx(float(full.soft), rel=0.02)
    assert float(half.hard) == pytest.approx(float(full.hard), rel=0.02)
