"""Quantization-aware training of the student (`kd train-student --qat SCHEME`) through torchao's QAT API.

`prepare_qat` swaps every torch.nn.Linear of the decoder layers for torchao's
FakeQuantizedLinear (the weight Parameter object is kept, so an optimizer built
before or after sees the same tensors; the state dict's keys do not change,
so checkpoints and the float export are as for any run). The output head is
left in float: it is tied to the input embeddings in SmolLM2 and the fused
loss head reads its weight directly. `set_fake_quant` switches the quantizers
on and off (a `qat` phase switches them on at its first step), and
`convert_qat` replaces the fake quantization with real quantized weights
(torchao tensor subclasses), which `save_quantized`/`load_quantized` write and
read for `kd eval`.

Schemes (schemas.deploy_config.QAT_SCHEMES): `int8da-int4w` (int8 dynamic
per-token activations, int4 weights in groups) and `int8w` (int8 weights in
groups, weight-only: with groups of 32 the layout of GGUF's Q8_0 blocks).

    >>> import torch
    >>> from pipeline.student.qat import prepare_qat, fake_quantized_layers, convert_qat
    >>> model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    >>> prepare_qat(model, "int8w", 32, layers=model)
    >>> len(fake_quantized_layers(model))
    1
    >>> convert_qat(model, "int8w", 32, layers=model)
    >>> len(fake_quantized_layers(model)), type(model[0].weight).__name__
    (0, 'IntxUnpackedToInt8Tensor')
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from schemas.config_base import ConfigError

QUANTIZED_MARK = "qat.json"
"""Beside config.json in a converted model directory: the scheme, group size and weights file."""
QUANTIZED_WEIGHTS = "quantized_state.pt"


def base_config(scheme: str, group_size: int) -> Any:
    """torchao's post-training config of a scheme: what QAT simulates and conversion applies."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    if scheme == "int8da-int4w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                     weight_granularity=PerGroup(group_size))
    if scheme == "int8w":
        return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerGroup(group_size))
    raise ConfigError(f"--qat {scheme!r} is not a scheme (int8da-int4w, int8w)")


def quantized_linears(layers: torch.nn.Module, scheme: str, group_size: int) -> set[int]:
    """ids of the Linear modules under `layers` to quantize; refuse a weight layer torchao
    cannot handle (not a torch.nn.Linear, e.g. GPT-2's Conv1D) or whose width the groups do
    not divide, naming it."""
    chosen = set()
    for name, module in layers.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear):
            if module.in_features % group_size:
                raise ConfigError(f"--qat {scheme}: layer {name} has {module.in_features} inputs, "
                                  f"not a multiple of --qat-group-size {group_size}")
            chosen.add(id(module))
        elif (isinstance(weight, torch.Tensor) and weight.dim() >= 2
              and not isinstance(module, torch.nn.Embedding)):
            raise ConfigError(f"--qat {scheme}: layer {name} is a {type(module).__name__} "
                              f"({type(module).__module__}), which torchao's QAT cannot "
                              "fake-quantize: it handles torch.nn.Linear layers only")
    return chosen


def decoder_layers(model: torch.nn.Module) -> torch.nn.Module:
    """The model's list of decoder layers (`model.layers` of Llama, `transformer.h` of GPT-2)."""
    found = next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)), None)
    if found is None:
        raise ConfigError(f"--qat: no list of decoder layers in {type(model).__name__}")
    return found


def apply_step(model: torch.nn.Module, scheme: str, group_size: int, step: str,
               layers: torch.nn.Module | None) -> None:
    """QAT's prepare or convert step on the chosen Linear layers; convert on a model that was
    never prepared is post-training quantization with the same scheme (what QAT's convert
    does after dropping the fake quantizers)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    layers = decoder_layers(model) if layers is None else layers
    chosen = quantized_linears(layers, scheme, group_size)
    config = base_config(scheme, group_size)
    if step == "convert" and not fake_quantized_layers(model):
        quantize_(model, config, filter_fn=lambda module, fqn: id(module) in chosen)
        return
    quantize_(model, QATConfig(config, step=step),
              filter_fn=lambda module, fqn: id(module) in chosen)


def prepare_qat(model: torch.nn.Module, scheme: str, group_size: int,
                layers: torch.nn.Module | None = None) -> None:
    """Fake-quantize the Linear layers under `layers` (default: the decoder layers), in place."""
    apply_step(model, scheme, group_size, "prepare", layers)


def convert_qat(model: torch.nn.Module, scheme: str, group_size: int,
                layers: torch.nn.Module | None = None) -> None:
    """Replace fake quantization by real quantized weights, in place; a plain float model is
    quantized after training (PTQ) the same way."""
    apply_step(model, scheme, group_size, "convert", layers)


def fake_quant_on(cfg: Any, phase: Any) -> bool:
    """Whether a step of `phase` trains fake-quantized: every step of --qat without a qat
    phase, else the qat phase's steps only."""
    if cfg.qat is None:
        return False
    has_qat_phase = any(kind == "qat" for kind, _ in cfg.parsed_phases())
    return phase.kind == "qat" or not has_qat_phase


def fake_quantized_layers(model: torch.nn.Module) -> list[str]:
    from torchao.quantization.qat import FakeQuantizedLinear

    return [n for n, m in model.named_modules() if isinstance(m, FakeQuantizedLinear)]


def set_fake_quant(model: torch.nn.Module, enabled: bool) -> None:
    """Switch every fake quantizer of the model on or off (off: the layer is plain float)."""
    if not enabled and sys.modules.get("torchao") is None:
        return  # no fake quantizer exists before torchao is imported; a GPU box may lack it
    from torchao.quantization.qat.linear import enable_linear_fake_quant

    model.apply(lambda module: enable_linear_fake_quant(module, enabled))


def save_quantized(model: torch.nn.Module, tokenizer: Any, path: Path, scheme: str,
                   group_size: int) -> None:
    """A converted model as config, tokenizer, torch-saved quantized state and qat.json (not
    safetensors: torchao's tensor subclasses do not fit it)."""
    path.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    torch.save(model.state_dict(), path / QUANTIZED_WEIGHTS)
    (path / QUANTIZED_MARK).write_text(json.dumps(
        {"scheme": scheme, "group_size": group_size, "weights": QUANTIZED_WEIGHTS}) + "\n")


def is_quantized_dir(path: str | Path) -> bool:
    return (Path(path) / QUANTIZED_MARK).is_file()


def load_quantized(path: str | Path) -> torch.nn.Module:
    """The model `save_quantized` wrote, with its quantized weights, on CPU, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    meta = json.loads((path / QUANTIZED_MARK).read_text())
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
    # weights_only=False: torchao's tensor subclasses are not on torch's safe list; the file
    # is one kd train-student wrote.
    state = torch.load(path / meta["weights"], map_location="cpu", weights_only=False)
    model.load_state_dict(state, assign=True)
    model.tie_weights()
    return model.eval()
