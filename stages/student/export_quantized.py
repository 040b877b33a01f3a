"""The --qat student converted to real quantized weights (`<out>/model-quantized` of `kd train-student --qat`).

The float `model/` (weights trained through the quantizer) is what
`kd export-model` reads; this directory is the torchao-converted copy, which
computes exactly what the fake-quantized student computed at the end of
training, and loads back for `kd eval` (`stages.student.model.build_student`
recognises it by its qat.json). Written beside its final path and renamed
into place, like model/.

    kd train-student --labels data/labels/demo --out /tmp/q --steps 4 --keep-layers 2 --qat int8w
    kd eval --labels data/labels/demo --model /tmp/q/model-quantized
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

from pipeline.store.atomic_commit import commit_path
from pipeline.student.qat import convert_qat, save_quantized
from schemas.student_config import StudentConfig


def export_quantized(model: Any, tokenizer: Any, path: Path, cfg: StudentConfig) -> None:
    """Convert a copy of the (fake-quantized or plain) student and commit it whole at `path`."""
    converted = copy.deepcopy(model).cpu()
    convert_qat(converted, cfg.qat, cfg.qat_group_size)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_quantized(converted, tokenizer, tmp, cfg.qat, cfg.qat_group_size)
    commit_path(tmp, path)
