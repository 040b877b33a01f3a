"""The codec registry: every stored label format, label kind and hidden-state format, by name.

The writer, the reader, `kd verify`, `kd inspect`, `kd export` and the manifest
ask this registry for the object of a name and call its methods; none of them
compares format names. `ROW_FIELDS` lists the optional datasets of one value per
token or label row (`RowField`), `SAMPLE_TEXTS` the optional strings per sample
(`SampleText`); the writer stores them when the samples carry them. Adding a format is one module (a subclass of
`LabelFormat`, `LabelKind` or `HiddenFormat` from `pipeline.store.codecs.base`,
and its instance) and one line below; docs/codecs.md walks through it. The
names a user may choose are also listed in `schemas.teacher_config` (schemas
import nothing of ours); `tests/store/test_codec_registry.py` keeps both lists
equal.

A shard's root attributes name its formats; an absent attribute means the
default (fp16 labels, top-k rows, fp16 hidden states), which is what every
output written before the attribute existed holds.

    >>> sorted(LABEL_FORMATS), sorted(LABEL_KINDS), sorted(HIDDEN_FORMATS)
    (['fp16', 'q8', 'q8poly'], ['sampled', 'topk'], ['fp16', 'int8', 'pca'])
    >>> label_format_of({"label_format": "q8"}).dataset
    'labels/topk_logprobs_q8'
    >>> label_kind_of({}).name, hidden_format_of({}).name
    ('topk', 'fp16')
    >>> hidden_format_named("bf16")
    Traceback (most recent call last):
    ...
    pipeline.store.codecs.UnknownFormat: hidden_format 'bf16' is not one this build knows (fp16, int8, pca)
"""

from __future__ import annotations

from typing import Any, Mapping, TypeVar

from pipeline.store.codecs.base import HiddenFormat, LabelFormat, LabelKind, RowField, SampleText
from pipeline.store.codecs.field_student_logprobs import STUDENT_LOGPROBS_FIELD
from pipeline.store.codecs.hidden_fp16 import FP16_HIDDEN
from pipeline.store.codecs.hidden_int8 import INT8
from pipeline.store.codecs.hidden_pca import PCA
from pipeline.store.codecs.kind_sampled import SAMPLED
from pipeline.store.codecs.kind_topk import TOPK
from pipeline.store.codecs.label_fp16 import FP16
from pipeline.store.codecs.label_q8 import Q8
from pipeline.store.codecs.label_q8poly import Q8POLY
from pipeline.store.codecs.text_teacher_context import TEACHER_CONTEXT

LABEL_FORMATS: dict[str, LabelFormat] = {c.name: c for c in (FP16, Q8, Q8POLY)}
"""How top-k logprobs are stored (`--label-format`); the first is the default."""
LABEL_KINDS: dict[str, LabelKind] = {c.name: c for c in (TOPK, SAMPLED)}
"""What a label row holds (`--label-kind`); the first is the default."""
HIDDEN_FORMATS: dict[str, HiddenFormat] = {c.name: c for c in (FP16_HIDDEN, INT8, PCA)}
"""How hidden states are stored (`--hidden-format`); the first is the default."""

ROW_FIELDS: dict[str, RowField] = {c.name: c for c in (STUDENT_LOGPROBS_FIELD,)}
"""Optional per-token or per-label-row datasets, by their `Sample` attribute."""
SAMPLE_TEXTS: dict[str, SampleText] = {c.name: c for c in (TEACHER_CONTEXT,)}
"""Optional per-sample strings, by their `Sample` attribute."""

MUST_MATCH: tuple[str, ...] = LabelFormat.must_match + LabelKind.must_match + HiddenFormat.must_match
"""Manifest fields, beyond teacher, tokenizer, vocabulary and k, that outputs read together
must share: each family's compatibility rule (`must_match` in `pipeline.store.codecs.base`)."""


class UnknownFormat(ValueError):
    """A format or kind name that no codec of this build handles; the message names the field."""


Codec = TypeVar("Codec")


def named(field: str, registry: dict[str, Codec], name: str) -> Codec:
    """The codec of `name` in `registry` (whose names `field` takes), or UnknownFormat."""
    try:
        return registry[name]
    except KeyError:
        raise UnknownFormat(f"{field} {name!r} is not one this build knows "
                            f"({', '.join(registry)})") from None


def label_format_named(name: str) -> LabelFormat:
    return named("label_format", LABEL_FORMATS, name)


def label_kind_named(name: str) -> LabelKind:
    return named("label_kind", LABEL_KINDS, name)


def hidden_format_named(name: str) -> HiddenFormat:
    return named("hidden_format", HIDDEN_FORMATS, name)


def label_format_name(attrs: Mapping[str, Any]) -> str:
    """A shard's label format from its root attributes (absent: the default)."""
    return str(attrs.get("label_format", next(iter(LABEL_FORMATS))))


def label_kind_name(attrs: Mapping[str, Any]) -> str:
    """A shard's label kind from its root attributes (absent: the default)."""
    return str(attrs.get("label_kind", next(iter(LABEL_KINDS))))


def hidden_format_name(attrs: Mapping[str, Any]) -> str:
    """A shard's hidden format from its root attributes (absent: the default)."""
    return str(attrs.get("hidden_format", next(iter(HIDDEN_FORMATS))))


def label_format_of(attrs: Mapping[str, Any]) -> LabelFormat:
    return label_format_named(label_format_name(attrs))


def label_kind_of(attrs: Mapping[str, Any]) -> LabelKind:
    return label_kind_named(label_kind_name(attrs))


def hidden_format_of(attrs: Mapping[str, Any]) -> HiddenFormat:
    return hidden_format_named(hidden_format_name(attrs))
