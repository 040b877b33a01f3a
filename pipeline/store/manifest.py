"""The manifest: the commit point of an output directory.

`manifest.json` lists every committed shard with its sha256 and counts, the
resolved config, the tokenizer fingerprint and the reject counts. A shard
exists for readers only once the manifest names it; the manifest is rewritten
atomically after every shard, with `complete` false until the run ends, so a
killed run loses at most the shards it had in flight.

    >>> from pipeline.store.manifest import Manifest
    >>> m = Manifest(teacher="t", tokenizer_fingerprint="f", vocab_size=10, top_k=2)
    >>> m.totals()["samples"]
    0
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.store.atomic_commit import write_text_atomic
from pipeline.store.codecs import (UnknownFormat, hidden_format_named, label_format_named,
                                   label_kind_named)
from pipeline.store.shard_writer import ShardRecord
from pipeline.store.tokenizer_identity import TokenizerIdentity
from schemas import MANIFEST_NAME, MANIFEST_SCHEMA_NAME, SHARD_SCHEMA_VERSION, SHARD_SCHEMAS


class ManifestError(ValueError):
    """A manifest is missing, unreadable, or of another schema."""


@dataclass
class Manifest:
    """Everything a reader needs to trust and locate the shards of one output."""

    teacher: str
    tokenizer_fingerprint: str
    vocab_size: int
    top_k: int
    schema: str = MANIFEST_SCHEMA_NAME
    schema_version: int = SHARD_SCHEMA_VERSION
    """The schema of this output's shards (one version per output: a run never mixes them)."""
    mode: str = "generate"
    """How the samples were made: `generate` (the teacher wrote them) or `score` (given text)."""
    complete: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    prompts_sha256: str = ""
    hidden_layers: list[int] = field(default_factory=list)
    hidden_size: int = 0
    teacher_num_layers: int = 0
    """The teacher's decoder layers: hidden-state layer -1 is absolute layer `teacher_num_layers`."""
    input_records: int = 0
    accepted_prompts: int = 0
    rejected_prompts: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    label_format: str = "fp16"
    """How the shards store top-k logprobs: a name of `pipeline.store.codecs.LABEL_FORMATS`; absent in older manifests."""
    hidden_format: str = "fp16"
    """How the shards store hidden states: a name of `pipeline.store.codecs.HIDDEN_FORMATS`; absent in older manifests."""
    hidden_rank: int = 0
    """hidden_format pca: coefficients per token and layer (what the student's adapter targets)."""
    hidden_basis_sha256: str = ""
    """hidden_format pca: checksum of `hidden_basis.h5` (`pipeline.store.hidden_basis`)."""
    label_kind: str = "topk"
    """What a label row holds: a name of `pipeline.store.codecs.LABEL_KINDS`; absent in older manifests."""
    samples_per_position: int = 0
    """sampled: N, the draws per labelled position (0 for top-k labels)."""
    planned_samples: int = 0
    """Samples the accepted records make (generate: records x n; score: their windows); 0 in v1."""
    vocab_fingerprint: str = ""
    """`pipeline.store.tokenizer_identity`: every id's token bytes; "" in outputs written before it."""
    special_tokens_fingerprint: str = ""
    """`pipeline.store.tokenizer_identity`: the special tokens listed; "" in older outputs."""
    special_tokens: list[list[Any]] = field(default_factory=list)
    """The (special token, id) pairs that fingerprint covers, so a difference can be named."""
    tokenizer_files: dict[str, str] = field(default_factory=dict)
    """`pipeline.store.tokenizer_files`: {path in the output: sha256} of the stored tokenizer."""
    text_layout: bool = False
    """Every shard carries the text layout (`pipeline.store.text_layout_datasets`, schema v3);
    false in older manifests and in outputs written without it (`kd add-text-layout` adds it)."""
    teacher_context: dict[str, Any] = field(default_factory=dict)
    """The teacher saw a different context than the stored samples hold (docs/teacher-context.md):
    {"kind": "system_prompt" | "per_record", "sha256": of the context(s), "records": how many
    accepted records had one}; empty when the teacher saw the student's view."""
    shards: dict[int, ShardRecord] = field(default_factory=dict)

    @property
    def hidden_space(self) -> str:
        """What the stored hidden states are vectors of: `teacher` (fp16 and int8 decode to
        the teacher's states) or `pca:<basis sha256>` (coefficients on one basis)."""
        return hidden_format_named(self.hidden_format).space(self)

    @property
    def stored_hidden_size(self) -> int:
        """Width of a stored hidden row: the teacher's hidden size, or the pca rank."""
        return getattr(self, hidden_format_named(self.hidden_format).width_field)

    @property
    def tokenizer_identity(self) -> TokenizerIdentity | None:
        """The two-part tokenizer identity, or None in outputs written before it."""
        if not self.vocab_fingerprint:
            return None
        return TokenizerIdentity(self.vocab_fingerprint, self.special_tokens_fingerprint,
                                 tuple((t, i) for t, i in self.special_tokens))

    def set_tokenizer_identity(self, identity: TokenizerIdentity) -> None:
        self.vocab_fingerprint = identity.vocab_fingerprint
        self.special_tokens_fingerprint = identity.special_tokens_fingerprint
        self.special_tokens = [list(p) for p in identity.special_tokens]

    def totals(self) -> dict[str, int]:
        keys = ("samples", "tokens", "completion_tokens", "bytes", "generated")
        sums = {k: sum(getattr(r, k) for r in self.shards.values()) for k in keys}
        return sums | {"shards": len(self.shards), "dropped": sums["generated"] - sums["samples"]}

    def dropped_by_reason(self) -> dict[str, int]:
        """Dropped samples summed over shards, by reason."""
        counts: dict[str, int] = {}
        for rec in self.shards.values():
            for reason, n in rec.dropped.items():
                counts[reason] = counts.get(reason, 0) + n
        return dict(sorted(counts.items()))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["shards"] = [self.shards[i].to_json() | {"index": i} for i in sorted(self.shards)]
        data["totals"] = self.totals()
        data["dropped_by_reason"] = self.dropped_by_reason()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        if data.get("schema") != MANIFEST_SCHEMA_NAME:
            raise ManifestError(f"schema is {data.get('schema')!r}, expected {MANIFEST_SCHEMA_NAME!r}")
        if data.get("schema_version") not in SHARD_SCHEMAS:
            raise ManifestError(
                f"schema_version {data.get('schema_version')} is not supported "
                f"(this build reads versions {', '.join(map(str, SHARD_SCHEMAS))})")
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["shards"] = {int(s["index"]): ShardRecord.from_json(s) for s in data["shards"]}
        manifest = cls(**fields)
        try:
            label_format_named(manifest.label_format)
            label_kind_named(manifest.label_kind)
            hidden_format_named(manifest.hidden_format)
        except UnknownFormat as exc:
            raise ManifestError(str(exc)) from None
        return manifest


def manifest_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / MANIFEST_NAME


def write_manifest(out_dir: str | Path, manifest: Manifest) -> None:
    """Atomically replace the manifest of `out_dir`."""
    write_text_atomic(manifest_path(out_dir), json.dumps(manifest.to_json(), indent=1) + "\n")


def read_manifest(out_dir: str | Path) -> Manifest:
    """Load and check the manifest of `out_dir`; raise ManifestError naming the file."""
    path = manifest_path(out_dir)
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest (not an offline-kd output, or never committed)")
    try:
        return Manifest.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ManifestError(f"{path}: unreadable manifest: {exc}") from exc
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from exc
