"""The trained student as a Hugging Face directory (`model/` of `kd train-student`), committed whole.

Under FSDP the gathered full state is loaded into a plain copy first. Written
beside its final path and renamed into place, so a crash never leaves half a
model. Called by `stages.student.train` at the end of a run:

    kd train-student --labels data/labels/demo --out /tmp/s --steps 2 --keep-layers 2
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from pipeline.store.atomic_commit import commit_path


def exportable(model: Any, module_state: dict[str, Any], sharded: bool) -> Any:
    """The student as a plain module: under FSDP a fresh copy loaded with the gathered weights."""
    if not sharded:
        return model
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    prefix = "student."
    plain.load_state_dict({k[len(prefix):]: v for k, v in module_state.items()
                           if k.startswith(prefix)})
    plain.generation_config = model.generation_config
    return plain


def export_model(model: Any, tokenizer: Any, path: Path) -> None:
    """Hugging Face directory (config, safetensors, tokenizer, generation config), committed whole:
    written beside `path` and renamed into place, so a crash never leaves half a model."""
    from transformers import GenerationConfig

    model.config.use_cache = True
    if getattr(model, "generation_config", None) is None:
        model.generation_config = GenerationConfig.from_model_config(model.config)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    commit_path(tmp, path)
