"""Build the student: any Hugging Face causal LM, or one derived from the teacher.

- a model directory or hub id: loaded as is;
- `from-teacher`: the teacher with only `keep_layers` evenly spaced decoder
  layers (first and last included), weights and all. The teacher's weights are
  read once to build it; the other layers are dropped at once, so the teacher
  is never resident beside the student;
- `narrow`: the teacher's architecture with a smaller hidden size and
  `keep_layers` layers, freshly initialised (its width differs from the
  teacher's, which is what the hidden-state adapter is for).

    python -c "from stages.student.model import derive_from_teacher; \
m = derive_from_teacher('data/models/smollm2-135m-instruct', 6); print(m.config.num_hidden_layers)"
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.student.qat import is_quantized_dir, load_quantized
from schemas.config_base import ConfigError


def evenly_spaced_layers(total: int, keep: int) -> list[int]:
    """`keep` layer indices from 0..total-1, evenly spaced, first and last included."""
    if not 1 <= keep <= total:
        raise ConfigError(f"--keep-layers must be in 1..{total} (the teacher's layers), got {keep}")
    if keep == 1:
        return [total - 1]
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, keep)})


def keep_decoder_layers(model: Any, indices: list[int]) -> Any:
    """Drop every decoder layer not in `indices`, in place, keeping the config consistent."""
    decoder = model.get_decoder()
    decoder.layers = torch.nn.ModuleList([decoder.layers[i] for i in indices])
    for new_index, layer in enumerate(decoder.layers):
        # The KV cache is indexed by layer_idx: a kept layer must use its new position.
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_index
    config = model.config
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in indices]
    config.num_hidden_layers = len(indices)
    return model


def derive_from_teacher(teacher: str, keep_layers: int) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    indices = evenly_spaced_layers(model.config.num_hidden_layers, keep_layers)
    return keep_decoder_layers(model, indices)


def narrow_config(teacher_config: Any, hidden_size: int, layers: int) -> Any:
    """The teacher's config scaled to `hidden_size` wide and `layers` deep, same vocabulary."""
    config = copy.deepcopy(teacher_config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if hidden_size % head_dim:
        raise ConfigError(f"--narrow-hidden-size {hidden_size} must be a multiple of the head size "
                          f"{head_dim}")
    heads = hidden_size // head_dim
    groups = max(1, config.num_attention_heads // config.num_key_value_heads)
    kv_heads = max(1, heads // groups)
    while heads % kv_heads:
        kv_heads -= 1
    ratio = hidden_size / config.hidden_size
    config.hidden_size, config.num_attention_heads = hidden_size, heads
    config.num_key_value_heads, config.head_dim = kv_heads, head_dim
    config.intermediate_size = int(round(config.intermediate_size * ratio / 64)) * 64 or 64
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    return config


def build_student(student: str, teacher: str, keep_layers: int, narrow_hidden_size: int,
                  seed: int, tokenizer_from: str | None = None) -> tuple[Any, Any]:
    """(model in float32 on CPU, tokenizer) for any kind of --student.

    `tokenizer_from` is where the labels' tokenizer (and the teacher's config, for
    `narrow`) is read: the label set's stored copy, else the teacher path.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer_from = tokenizer_from or teacher
    if student == "from-teacher":
        require_teacher_weights(teacher)
        return derive_from_teacher(teacher, keep_layers), AutoTokenizer.from_pretrained(tokenizer_from)
    if student == "narrow":
        torch.manual_seed(seed)
        config = narrow_config(AutoConfig.from_pretrained(tokenizer_from), narrow_hidden_size,
                               keep_layers)
        return (AutoModelForCausalLM.from_config(config, dtype=torch.float32),
                AutoTokenizer.from_pretrained(tokenizer_from))
    if is_quantized_dir(student):  # <out>/model-quantized of kd train-student --qat
        return load_quantized(student), AutoTokenizer.from_pretrained(student)
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(student)


def require_teacher_weights(teacher: str) -> None:
    """A from-teacher student is cut from the teacher's weights, which a label set does not hold."""
    from stages.cli.model_files import looks_local

    if looks_local(teacher) and not Path(teacher).expanduser().exists():
        raise ConfigError(
            f"--student from-teacher needs the teacher's weights, and {teacher} does not exist "
            "(a label set carries only the teacher's tokenizer, in <labels>/tokenizer/): pass "
            "--teacher with where the checkpoint is now, or give --student a model directory")


def load_init_from(path: str, labels: Any) -> tuple[Any, Any]:
    """(model in float32 on CPU, tokenizer) of an exported student, for `--init-from`.

    Weights only: the optimizer and schedule start fresh. The tokenizer is checked
    against the labels before the weights are read, so a mismatch stops at once.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"--init-from {path}: no config.json (give the model/ directory of an "
                          "earlier kd train-student run)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    check_tokenizer(tokenizer, labels, f"--init-from {path}")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), tokenizer


def output_vocab_size(model: Any) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def check_vocabulary(model: Any, labels_vocab: int) -> int:
    """Rows of the student's logits that correspond to real tokens of the labels' vocabulary.

    Students often pad their embedding matrix beyond the tokenizer (to a multiple
    of 64, say); the padded rows never appear in the teacher's labels and are
    sliced off before any softmax, so they hold no probability mass.
    """
    rows = output_vocab_size(model)
    if rows < labels_vocab:
        raise ConfigError(f"the student's output layer has {rows} rows but the labels' vocabulary "
                          f"has {labels_vocab} tokens: the student cannot predict every teacher id")
    return labels_vocab


CROSS_TOKENIZER_HINT = "train with --cross-tokenizer alm (byte-aligned chunks, docs/cross-tokenizer.md)"


def check_tokenizer(tokenizer: Any, labels: Any, source: str) -> None:
    """The student must read the same token ids the teacher wrote: a different vocabulary stops
    naming the first differing ids; different special tokens only warn (stderr)."""
    from pipeline.store.tokenizer_identity import VocabularyMismatch, compare_identity

    identity = labels.tokenizer_identity or derive_identity(labels)
    if identity is None:
        return check_legacy_fingerprint(tokenizer, labels, source)
    try:
        warning = compare_identity(identity, lambda: stored_vocabulary(labels), tokenizer,
                                   f"student ({source})")
    except VocabularyMismatch as exc:
        raise ConfigError(f"{exc} ({labels.teacher}); {CROSS_TOKENIZER_HINT}") from exc
    if warning:
        print(warning, file=sys.stderr)


def shares_vocabulary(tokenizer: Any, labels: Any) -> bool:
    """Whether `tokenizer` reads the labels' ids as the teacher wrote them (special-token lists
    may differ); False sends a model to the cross-tokenizer path of `kd eval`."""
    from pipeline.store.fingerprint import tokenizer_fingerprint
    from pipeline.store.tokenizer_identity import identity_of

    identity = labels.tokenizer_identity or derive_identity(labels)
    if identity is None:
        return tokenizer_fingerprint(tokenizer) == labels.tokenizer_fingerprint
    return identity_of(tokenizer).vocab_fingerprint == identity.vocab_fingerprint


def labels_tokenizer(labels: Any) -> tuple[str, str]:
    """(where the labels' tokenizer is loaded from, which: `stored copy` or `teacher path`)."""
    if labels.tokenizer_dir:
        return labels.tokenizer_dir, "stored copy"
    return labels.teacher, "teacher path"


def stored_vocabulary(labels: Any) -> list[str] | None:
    """The labels' vocabulary by id, from the stored tokenizer (else the teacher path), or None."""
    from transformers import AutoTokenizer

    from pipeline.store.tokenizer_identity import vocabulary

    try:
        return vocabulary(AutoTokenizer.from_pretrained(labels_tokenizer(labels)[0]))
    except (OSError, ValueError):
        return None


def derive_identity(labels: Any) -> Any:
    """The two-part identity of an output written before it, computed from its stored tokenizer
    (else the teacher path), saying which on stderr; None when neither loads."""
    from transformers import AutoTokenizer

    from pipeline.store.fingerprint import tokenizer_fingerprint
    from pipeline.store.tokenizer_identity import identity_of

    path, which = labels_tokenizer(labels)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None
    agrees = ("matches" if tokenizer_fingerprint(tokenizer) == labels.tokenizer_fingerprint
              else "differs from (special tokens listed by another library version?)")
    print(f"note: these labels predate the vocabulary and special-token fingerprints; computed "
          f"them from the {which} {path}, whose combined fingerprint {agrees} the labels'",
          file=sys.stderr)
    return identity_of(tokenizer)


def check_legacy_fingerprint(tokenizer: Any, labels: Any, source: str) -> None:
    from pipeline.store.fingerprint import tokenizer_fingerprint

    mine = tokenizer_fingerprint(tokenizer)
    if mine != labels.tokenizer_fingerprint:
        raise ConfigError(
            f"tokenizer mismatch: the student ({source}) has fingerprint {mine[:16]}..., the labels "
            f"were written with {labels.tokenizer_fingerprint[:16]}... ({labels.teacher}); a student "
            "must share the teacher's tokenizer to learn from its token-level labels, or "
            f"{CROSS_TOKENIZER_HINT}")
