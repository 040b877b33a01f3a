"""Teacher hidden states for kept samples: a teacher-forced transformers pass after vLLM.

vLLM's own extraction (speculative method `extract_hidden_states`) fails on
the CPU build, so once generation is done and the vLLM engine has been shut
down (never both resident), the teacher is loaded with transformers and run
over each committed shard's samples; the shard is rewritten, atomically, with
`hidden/layer_NN` datasets added and its manifest record replaced.

Layer numbering is transformers' `output_hidden_states`: 0 is the embedding
output, i the output of block i, and the last index (-1) is the final hidden
state *after* the model's last norm, i.e. exactly what the LM head sees.

    kd teacher-labels --prompts data/prompts/demo.jsonl --out data/labels/tiny \
        --limit 8 --max-tokens 16 --hidden-layers 8,-1 --enforce-eager
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from pipeline.store.atomic_commit import sha256_file
from pipeline.store.codecs import hidden_format_named
from pipeline.store.hidden_basis import BASIS_NAME, FIT_TOKENS, fit_basis, read_basis, write_basis
from pipeline.store.manifest import Manifest, write_manifest
from pipeline.store.sample import Sample
from pipeline.store.shard_reader import ShardReader, read_samples
from pipeline.store.shard_writer import ShardAttrs, write_shard
from schemas import shard_name
from schemas.eagle3 import EAGLE3, PRE_NORM_LAST, eagle3_layers, is_pre_norm
from schemas.teacher_config import ConfigError, TeacherConfig


def resolve_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    """Absolute indices into the (num_layers + 1) hidden states; -1 is the final one."""
    resolved = []
    for layer in layers:
        absolute = layer if layer >= 0 else num_layers + 1 + layer
        if not 0 <= absolute <= num_layers:
            raise ConfigError(f"--hidden-layers: layer {layer} is out of range for a teacher with "
                              f"{num_layers} layers (valid: 0..{num_layers} or -1..-{num_layers + 1})")
        resolved.append(absolute)
    return sorted(set(resolved))


def wanted_layers(cfg: TeacherConfig, num_layers: int) -> list[int]:
    """The absolute layer keys --hidden-layers asks for (`eagle3`: `schemas.eagle3`)."""
    if cfg.hidden_layers == EAGLE3:
        return eagle3_layers(num_layers)
    return resolve_layers(cfg.parsed_hidden_layers(), num_layers)


def final_norm(model: Any) -> torch.nn.Module:
    """The teacher's final norm (what the pre-norm hook attaches to), named in the error if absent."""
    norm = getattr(model.base_model, "norm", None)
    if not isinstance(norm, torch.nn.Module):
        raise ConfigError(f"--hidden-layers eagle3: {type(model).__name__} has no final norm at "
                          "base_model.norm to capture the pre-norm last state from")
    return norm


@contextmanager
def pre_norm_capture(model: Any, wanted: bool) -> Iterator[list[torch.Tensor]]:
    """A list that each forward appends the final norm's input to (when `wanted`)."""
    inputs: list[torch.Tensor] = []
    if not wanted:
        yield inputs
        return
    handle = final_norm(model).register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    try:
        yield inputs
    finally:
        handle.remove()


def token_batches(samples: Sequence[Sample], budget: int) -> Iterator[list[int]]:
    """Consecutive sample indices whose padded size stays within `budget` tokens (at least one)."""
    batch: list[int] = []
    longest = 0
    for i, s in enumerate(samples):
        length = len(s.prompt_token_ids) + s.completion_length
        if batch and max(longest, length) * (len(batch) + 1) > budget:
            yield batch
            batch, longest = [], 0
        batch.append(i)
        longest = max(longest, length)
    if batch:
        yield batch


def load_forward_model(cfg: TeacherConfig) -> tuple[Any, torch.device]:
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # CPU bf16 matmuls are slow and lossy here; GPUs take the configured dtype.
    dtype = torch.float32 if device.type == "cpu" or cfg.dtype in ("auto", "float32") else \
        getattr(torch, cfg.dtype)
    if device.type == "cuda" and cfg.dtype == "auto":
        dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(cfg.teacher, dtype=dtype).to(device).eval()
    return model, device


@torch.no_grad()
def capture_hidden(model: Any, device: torch.device, samples: list[Sample], layers: list[int],
                   budget: int) -> None:
    """Fill `sample.hidden[layer]` (tokens, hidden) float32 for every sample, in place
    (`PRE_NORM_LAST`: the final norm's input, from a hook)."""
    with pre_norm_capture(model, PRE_NORM_LAST in layers) as pre_norm:
        for idx in token_batches(samples, budget):
            pre_norm.clear()
            capture_batch(model, device, samples, idx, layers, pre_norm)


def capture_batch(model: Any, device: torch.device, samples: list[Sample], idx: list[int],
                  layers: list[int], pre_norm: list[torch.Tensor]) -> None:
    """Run one padded batch and fill its samples' wanted states."""
    seqs = [samples[i].token_ids for i in idx]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    # Right padding with a mask: causal attention never lets a real token see a pad.
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                output_hidden_states=True)
    for layer in layers:
        if is_pre_norm(layer) and len(pre_norm) != 1:
            raise RuntimeError(f"the final norm ran {len(pre_norm)} times in one forward; "
                               "the pre-norm hook expects once")
        states = pre_norm[0] if is_pre_norm(layer) else out.hidden_states[layer]
        states = states.float().cpu().numpy()
        for row, i in enumerate(idx):
            samples[i].hidden[layer] = states[row, :len(seqs[row])]


def with_basis(out: Path, manifest: Manifest, attrs: ShardAttrs, samples: Sequence[Sample],
               rank: int) -> ShardAttrs:
    """`attrs` carrying the output's pca basis: the one in `hidden_basis.h5` when the
    manifest names it (a resumed run), else fitted now on these (the first) samples."""
    if attrs.hidden_basis is not None:
        return attrs
    if manifest.hidden_basis_sha256:
        if sha256_file(out / BASIS_NAME) != manifest.hidden_basis_sha256:
            raise ConfigError(f"{out / BASIS_NAME}: checksum differs from the manifest; "
                              "pass --overwrite to start the output again")
        bases = read_basis(out)
    else:
        bases, explained = {}, {}
        for layer in attrs.hidden_layers:
            states = np.concatenate([s.hidden[layer] for s in samples])[:FIT_TOKENS]
            if rank > min(states.shape):
                raise ConfigError(f"--hidden-rank {rank} exceeds what the first shard's "
                                  f"{len(states)} tokens x {states.shape[1]} dimensions can fit")
            mean, basis, explained[layer] = fit_basis(states, rank)
            bases[layer] = (mean, basis)
        manifest.hidden_basis_sha256 = write_basis(out, bases, explained)
        write_manifest(out, manifest)
    return replace(attrs, hidden_basis=bases, hidden_rank=rank,
                   hidden_basis_sha256=manifest.hidden_basis_sha256)


def add_hidden_states(out: Path, cfg: TeacherConfig, manifest: Manifest, attrs: ShardAttrs,
                      stop_requested: Callable[[], bool]) -> int:
    """Rewrite every shard lacking the wanted layers; returns how many were rewritten."""
    layers = list(attrs.hidden_layers)
    todo = [i for i, rec in sorted(manifest.shards.items()) if rec.hidden_layers != layers]
    if not todo:
        return 0
    model, device = load_forward_model(cfg)
    done = 0
    for index in tqdm(todo, desc="hidden states", unit="shard", dynamic_ncols=True):
        if stop_requested():
            break
        path = out / shard_name(index)
        samples = read_samples(ShardReader(path))
        capture_hidden(model, device, samples, layers, cfg.hidden_batch_tokens)
        if hidden_format_named(cfg.hidden_format).needs_basis:
            attrs = with_basis(out, manifest, attrs, samples, cfg.hidden_rank)
        old = manifest.shards[index]
        record = write_shard(path, index, samples, attrs)
        record.generated, record.dropped, record.index_sha256 = \
            old.generated, old.dropped, old.index_sha256
        record.hidden_layers = layers
        manifest.shards[index] = record
        write_manifest(out, manifest)
        done += 1
    del model
    return done
