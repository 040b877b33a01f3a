"""Verify output directories against their shard schema (v1, v2 or v3): checksums, schema, invariants, unique ids.

`verify_outputs` is the one verification path: `kd verify DIR...` runs it and
so does every reader before it trusts data (`pipeline.student.label_set`),
which keeps what it read (manifests, every shard's ids and lengths) so nothing
is read twice. Every problem names the file and the broken check; nothing is
trusted because it exists.

    python -m stages.cli.main verify data/labels/demo
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute is a submodule)

from pipeline.store.atomic_commit import sha256_file
from pipeline.store.codecs import (MUST_MATCH, UnknownFormat, hidden_format_name,
                                   hidden_format_named, label_format_name, label_format_named,
                                   label_kind_name, label_kind_named)
from pipeline.store.codecs.array_checks import blocks, check_offsets
from pipeline.store.codecs.base import Sidecar
from pipeline.store.manifest import Manifest, ManifestError, manifest_path, read_manifest
from pipeline.store.sample_index import CONTENT_COLUMNS, INDEX_NAME, kept_contents, part_name, read_index
from pipeline.store.shard_reader import ShardContents, ShardFormatError, ShardReader, read_root_attrs
from pipeline.store.text_layout_datasets import layout_errors, teacher_byte_lengths
from schemas import MANIFEST_NAME, SHARD_SCHEMA_NAME, SHARD_SCHEMAS, shard_name, topk_id_dtype

VERIFIER_VERSION = 3
"""Bumped with every new check: shards the verified-shard cache recorded under an older
version are verified again (`pipeline.store.verified_shards`). 2: the two-part tokenizer
identity and the stored tokenizer files; 3: the text layout (schema v3)."""


@dataclass(frozen=True)
class Problem:
    """One broken check: where (a file of the output, e.g. a shard), which check, what was found."""

    where: str
    """A path inside the output directory: `shard-00001.h5`, `manifest.json`, `index.parquet`."""
    check: str
    detail: str
    output: str = ""
    """The output directory `where` is in."""

    def __str__(self) -> str:
        path = Path(self.output) / self.where if self.output else Path(self.where)
        return f"{path}: {self.check}: {self.detail}"


@dataclass
class Verification:
    """The result of verifying one or several outputs read as one."""

    manifests: dict[str, Manifest] = field(default_factory=dict)
    """Every readable manifest, keyed by its directory as given."""
    problems: list[Problem] = field(default_factory=list)
    shards: list[ShardContents] = field(default_factory=list)
    """Every shard that passed, in the order of the directories, then of shard index."""
    notes: list[str] = field(default_factory=list)
    """What was not checked and why (e.g. text layout byte lengths without a tokenizer)."""


def check_attrs(a: dict[str, Any], manifest: Manifest, index: int) -> list[str]:
    """Root attributes against the manifest: the schema, the teacher, k, hidden layers."""
    errors = []
    expected = {"schema": SHARD_SCHEMA_NAME, "schema_version": manifest.schema_version,
                "teacher": manifest.teacher, "tokenizer_fingerprint": manifest.tokenizer_fingerprint,
                "vocab_size": manifest.vocab_size, "top_k": manifest.top_k, "shard_index": index}
    for key in ("vocab_fingerprint", "special_tokens_fingerprint"):
        if getattr(manifest, key):  # outputs written before the two-part identity have neither
            expected[key] = getattr(manifest, key)
    for key, want in expected.items():
        if a.get(key) != want:
            errors.append(f"attribute {key} is {a.get(key)!r}, manifest says {want!r}")
    for key in SHARD_SCHEMAS[manifest.schema_version]["root_attributes"]:
        if key not in a:
            errors.append(f"root attribute {key} is missing")
    errors += check_format_attrs(a, manifest)
    layers = json.loads(a.get("hidden_layers", "[]"))
    if layers != manifest.shards[index].hidden_layers:
        errors.append(f"hidden layers {layers}, manifest says {manifest.shards[index].hidden_layers}")
    return errors


def check_format_attrs(a: dict[str, Any], manifest: Manifest) -> list[str]:
    """The label format, label kind and hidden format a shard names: the manifest's, and
    each codec's own attributes valid (`pipeline.store.codecs`)."""
    errors = []
    fmt, kind, hidden = label_format_name(a), label_kind_name(a), hidden_format_name(a)
    if fmt != manifest.label_format:
        errors.append(f"label_format is {fmt!r}, manifest says {manifest.label_format!r}")
    errors += codec_errors(lambda: label_format_named(fmt).check_attrs(a))
    if kind != manifest.label_kind:
        errors.append(f"label_kind is {kind!r}, manifest says {manifest.label_kind!r}")
    else:
        errors += codec_errors(lambda: label_kind_named(kind).check_attrs(a, manifest))
    if hidden != manifest.hidden_format:
        errors.append(f"hidden_format is {hidden!r}, manifest says {manifest.hidden_format!r}")
    else:
        errors += codec_errors(lambda: hidden_format_named(hidden).check_attrs(a, manifest))
    return errors


def codec_errors(check) -> list[str]:
    """A codec's findings, or the one line saying no codec of this build reads the name."""
    try:
        return check()
    except UnknownFormat as exc:
        return [str(exc)]


def check_structure(r: ShardReader) -> list[str]:
    """Shapes and dtypes of every dataset, and the offsets that tie them together."""
    errors = (check_schema_dtypes(r) + check_label_layout(r) + check_row_fields(r)
              + check_offset_arrays(r))
    if errors:
        return errors
    return check_sample_spans(r) + check_hidden_layout(r) + check_sample_texts(r)


def check_schema_dtypes(r: ShardReader) -> list[str]:
    """Every dataset the schema lists has one of the dtypes it allows."""
    return [f"{name} has dtype {r.arrays[name].dtype}, schema allows {spec['dtype']}"
            for name, spec in SHARD_SCHEMAS[r.version]["datasets"].items()
            if name in r.arrays and r.arrays[name].dtype.name not in spec["dtype"]]


def check_label_layout(r: ShardReader) -> list[str]:
    """The label kind's datasets and the positions: one row per label row."""
    a, rows = r.arrays, len(r.arrays["labels/sampled_logprobs"])
    errors = r.kind_codec.check_structure(a, r.attrs, r.label_codec, rows,
                                          topk_id_dtype(int(r.attrs["vocab_size"])))
    if a["labels/positions"].shape != (rows,):
        errors.append(f"labels/positions has shape {a['labels/positions'].shape}, expected ({rows},)")
    return errors


def check_row_fields(r: ShardReader) -> list[str]:
    """The optional per-row datasets the shard holds: one value per token or label row."""
    rows = {"label_rows": len(r.arrays["labels/sampled_logprobs"]),
            "tokens": len(r.arrays["samples/token_ids"])}
    return [e for f in r.row_fields
            for e in f.check_structure(r.arrays[f.dataset], rows[f.rows])]


def check_offset_arrays(r: ShardReader) -> list[str]:
    """`samples/offsets` over the tokens, `labels/offsets` over the label rows."""
    a, n = r.arrays, len(r)
    return (check_offsets("samples/offsets", a["samples/offsets"], len(a["samples/token_ids"]), n)
            + check_offsets("labels/offsets", a["labels/offsets"],
                            len(a["labels/sampled_logprobs"]), n))


def check_sample_spans(r: ShardReader) -> list[str]:
    """Per sample: a prompt inside it, 1.. label rows after it, positions in order."""
    a = r.arrays
    lengths = np.diff(a["samples/offsets"])
    prompt = a["samples/prompt_lengths"].astype(np.int64)
    rows = np.diff(a["labels/offsets"])
    if np.any(prompt < 1) or np.any(prompt >= lengths):
        i = int(np.argmax((prompt < 1) | (prompt >= lengths)))
        return [f"sample {i}: prompt length {prompt[i]} not in [1, sample length {lengths[i]})"]
    if np.any(rows < 1) or np.any(rows > lengths - prompt):
        i = int(np.argmax((rows < 1) | (rows > lengths - prompt)))
        return [f"sample {i}: {rows[i]} label rows, expected 1..{lengths[i] - prompt[i]} "
                "(the tokens after its prompt)"]
    return check_positions(a["labels/positions"], a["labels/offsets"], prompt, lengths)


def check_hidden_layout(r: ShardReader) -> list[str]:
    """Every stored layer: one row per token, of the hidden format's width and dtype."""
    tokens = len(r.arrays["samples/token_ids"])
    return [e for layer in r.hidden_layers
            for e in r.hidden_codec.check_structure(r.arrays, layer, tokens, r.attrs)]


def check_sample_texts(r: ShardReader) -> list[str]:
    """The optional per-sample strings the shard holds: one per sample, each valid."""
    errors = []
    for text_field in r.sample_texts():
        texts = r.strings(text_field.dataset)
        errors += ([f"{text_field.dataset} holds {len(texts)} strings for {len(r)} samples"]
                   if len(texts) != len(r) else text_field.check_values(texts))
    return errors


def check_positions(positions: np.ndarray, label_offsets: np.ndarray, prompt: np.ndarray,
                    lengths: np.ndarray) -> list[str]:
    """Each sample's labelled positions: the first is its prompt length, then strictly
    increasing, all inside the sample. Checked in blocks of rows."""
    for sl in blocks(len(positions)):
        pos = np.asarray(positions[sl], np.int64)
        rows = np.arange(sl.start, sl.stop)
        sample = np.searchsorted(label_offsets, rows, side="right") - 1
        first = rows == label_offsets[sample]
        prev = np.concatenate([[positions[sl.start - 1] if sl.start else -1], pos[:-1]])
        bad = ((first & (pos != prompt[sample])) | (~first & (pos <= prev))
               | (pos >= lengths[sample]))
        if bad.any():
            j = int(np.argmax(bad))
            return [f"sample {int(sample[j])}: labels/positions row {sl.start + j} is {pos[j]}: "
                    f"positions must start at the prompt length {int(prompt[sample[j]])}, increase, "
                    f"and stay below the sample length {int(lengths[sample[j]])}"]
    return []


def check_values(r: ShardReader) -> list[str]:
    """Token ids below the vocabulary; the label kind's rows (finite logprobs, sorted,
    ids in range); the optional per-row datasets' values; hidden states finite."""
    a, vocab, errors = r.arrays, int(r.attrs["vocab_size"]), []
    for sl in blocks(len(a["samples/token_ids"])):
        if a["samples/token_ids"][sl].max(initial=0) >= vocab:
            errors.append(f"samples/token_ids has ids >= vocab_size {vocab}")
            break
    errors += r.kind_codec.check_values(r)
    for row_field in r.row_fields:
        errors += row_field.check_values(a[row_field.dataset])
    for layer in r.hidden_layers:
        errors += r.hidden_codec.check_values(a, layer)
    return errors


def check_header(path: Path, index: int, manifest: Manifest) -> list[Problem]:
    """What is cheap and decisive about a shard: present, its size, its root attributes."""
    rec, where = manifest.shards[index], path.name
    if not path.is_file():
        return [Problem(where, "present", "file listed in the manifest is missing")]
    if path.stat().st_size != rec.bytes:
        return [Problem(where, "size", f"{path.stat().st_size} bytes, manifest says {rec.bytes} "
                        "(truncated or rewritten)")]
    try:
        attrs = read_root_attrs(path)
    except OSError as exc:
        return [Problem(where, "readable", str(exc))]
    return [Problem(where, "invariant", e) for e in check_attrs(attrs, manifest, index)]


def verify_shard(path: Path, index: int, manifest: Manifest, checksum: bool = True,
                 values: bool = True, id_lengths: np.ndarray | None = None
                 ) -> tuple[list[Problem], ShardContents | None]:
    """Every check of one shard listed in `manifest`; its contents when they pass.

    `id_lengths` (every id's byte length in the teacher's tokenizer) adds the
    check of the text layout's byte lengths against the token ids.

    Without `checksum` and `values` (a shard already verified in full, see
    `pipeline.store.verified_shards`) only its header, offsets and ids are read.
    """
    rec, where = manifest.shards[index], path.name
    problems = check_header(path, index, manifest)
    if problems:
        return problems, None
    if checksum and sha256_file(path) != rec.sha256:
        return [Problem(where, "sha256", "checksum differs from the manifest (corrupt)")], None
    try:
        reader = ShardReader(path)
        contents = reader.contents()
    except (OSError, ShardFormatError, KeyError) as exc:
        return [Problem(where, "readable", str(exc))], None
    errors = check_structure(reader)
    if not errors and values:
        errors = check_values(reader)
    if not errors and values:
        errors = layout_errors(reader, contents.ids, manifest.text_layout, id_lengths)
    counts = {"samples": len(reader), "tokens": len(reader.arrays["samples/token_ids"]),
              "completion_tokens": len(reader.arrays["labels/sampled_logprobs"])}
    errors += [f"{key} is {got}, manifest says {getattr(rec, key)}"
               for key, got in counts.items() if got != getattr(rec, key)]
    if len(contents.ids) != len(reader):
        errors.append(f"samples/ids holds {len(contents.ids)} ids for {len(reader)} samples")
    if errors:
        return [Problem(where, "invariant", e) for e in errors], None
    return [], contents


Depth = Literal["full", "no-checksum", "cheap"]
"""How much of each shard to read: `full` (every byte hashed and every value scanned),
`no-checksum` (no sha256), `cheap` (no dataset read: size, attributes, and the samples'
ids and lengths from index.parquet; the content is left to `verify_shard` at first read)."""


def verify_output(out_dir: str | Path, depth: Depth = "full") -> Verification:
    """Verify every shard of one output directory (sample ids are checked by `verify_outputs`)."""
    out_dir = Path(out_dir)
    found = Verification()
    try:
        manifest = read_manifest(out_dir)
    except ManifestError as exc:
        detail = str(exc).removeprefix(f"{manifest_path(out_dir)}: ")  # the Problem names the file
        found.problems.append(Problem(MANIFEST_NAME, "manifest", detail, output=str(out_dir)))
        return found
    found.manifests[str(out_dir)] = manifest
    id_lengths = None
    if manifest.text_layout and depth != "cheap":
        id_lengths, source = teacher_byte_lengths(out_dir, manifest.teacher)
        if id_lengths is None:
            found.notes.append(f"{out_dir}: text layout: {source}")
    for index, rec in sorted(manifest.shards.items()):
        if rec.name != shard_name(index):
            found.problems.append(Problem(rec.name, "name", f"shard {index} should be {shard_name(index)}"))
            continue
        if depth == "cheap":
            found.problems += check_header(out_dir / rec.name, index, manifest)
        else:
            problems, contents = verify_shard(out_dir / rec.name, index, manifest,
                                              checksum=depth == "full", id_lengths=id_lengths)
            found.problems += problems
            found.shards += [contents] if contents is not None else []
        found.problems += check_index_part(out_dir, index, rec.index_sha256, depth == "full")
    for sidecar in hidden_format_named(manifest.hidden_format).sidecars(manifest):
        found.problems += check_sidecar(out_dir, sidecar, depth == "full")
    found.problems += check_tokenizer_files(out_dir, manifest, depth == "full")
    if manifest.complete:
        found.problems += check_complete(out_dir, manifest, found if depth == "cheap" else None)
    found.problems = [replace(p, output=str(out_dir)) for p in found.problems]
    return found


def check_sidecar(out_dir: Path, sidecar: Sidecar, checksum: bool) -> list[Problem]:
    """A file a format keeps beside the shards (pca's basis): present, and the manifest's."""
    if not (out_dir / sidecar.name).is_file():
        return [Problem(sidecar.name, "present", sidecar.missing)]
    if checksum and sha256_file(out_dir / sidecar.name) != sidecar.sha256:
        return [Problem(sidecar.name, "sha256", sidecar.corrupt)]
    return []


def check_tokenizer_files(out_dir: Path, m: Manifest, checksum: bool) -> list[Problem]:
    """The stored tokenizer files (`pipeline.store.tokenizer_files`): present and the manifest's."""
    problems = []
    for name, sha256 in sorted(m.tokenizer_files.items()):
        if not (out_dir / name).is_file():
            problems.append(Problem(name, "present", "tokenizer file listed in the manifest is missing"))
        elif checksum and sha256_file(out_dir / name) != sha256:
            problems.append(Problem(name, "sha256", "checksum differs from the manifest (corrupt)"))
    return problems


def check_index_part(out_dir: Path, index: int, sha256: str, checksum: bool = True) -> list[Problem]:
    """The index part of shard `index` is present and, with `checksum`, the manifest's."""
    part = out_dir / part_name(index)
    if not part.is_file():
        return [Problem(part_name(index), "present", "index part listed in the manifest is missing")]
    if checksum and sha256_file(part) != sha256:
        return [Problem(part_name(index), "sha256", "checksum differs from the manifest (corrupt)")]
    return []


def planned_samples(m: Manifest) -> tuple[int, str]:
    """How many samples a complete output must account for, and why."""
    if m.schema_version >= 2:
        return m.planned_samples, f"the plan of {m.accepted_prompts} accepted records, mode {m.mode}"
    n = int(m.config.get("n", 1))
    return m.accepted_prompts * n, f"{m.accepted_prompts} accepted prompts x n={n}"


def check_complete(out_dir: Path, m: Manifest, contents_into: Verification | None = None
                   ) -> list[Problem]:
    """A finished run accounts for every accepted prompt's samples and carries its full index.

    With `contents_into`, the kept samples' ids and lengths are read from the
    index in the same pass and added to its shards (the `cheap` depth).
    """
    problems, t = [], m.totals()
    planned, how = planned_samples(m)
    if t["generated"] != planned:
        problems.append(Problem("manifest.json", "accounting",
                                f"{t['generated']} samples made, expected {planned} ({how})"))
    if m.input_records != m.accepted_prompts + m.rejected_prompts:
        problems.append(Problem("manifest.json", "accounting",
                                f"{m.input_records} records read != {m.accepted_prompts} accepted + "
                                f"{m.rejected_prompts} rejected"))
    lagging = [i for i, r in m.shards.items() if r.hidden_layers != m.hidden_layers]
    if lagging:
        problems.append(Problem(shard_name(lagging[0]), "hidden states",
                                f"holds layers {m.shards[lagging[0]].hidden_layers}, the output "
                                f"promises {m.hidden_layers}"))
    try:
        index = read_index(out_dir, CONTENT_COLUMNS)
    except (OSError, ValueError) as exc:
        return problems + [Problem(INDEX_NAME, "readable", str(exc))]
    if contents_into is not None:
        shards = [(m.shards[i].name, m.shards[i].samples) for i in sorted(m.shards)]
        contents, error = kept_contents(index, out_dir, shards)
        contents_into.shards += contents
        problems += [Problem(INDEX_NAME, "rows", error)] if error else []
    kept = int(pa.compute.sum(index["kept"]).as_py() or 0)
    if index.num_rows != t["generated"] or kept != t["samples"]:
        problems.append(Problem(INDEX_NAME, "rows", f"{index.num_rows} rows ({kept} kept); manifest "
                                f"says {t['generated']} generated ({t['samples']} kept)"))
    return problems


def check_compatible(manifests: dict[str, Manifest]) -> list[Problem]:
    """Outputs read together must share teacher, tokenizer, vocabulary, k and hidden layers."""
    # every codec family says which fields must agree (`pipeline.store.codecs.MUST_MATCH`).
    # The vocabulary decides what label ids mean; special-token lists may differ (library
    # versions list them differently). Outputs written before the two-part identity have only
    # the fingerprint that covers both.
    two_part = all(m.vocab_fingerprint for m in manifests.values())
    fields = ("teacher", "vocab_fingerprint" if two_part else "tokenizer_fingerprint", "vocab_size",
              "top_k") + MUST_MATCH
    problems = []
    (first, ref), *rest = manifests.items()
    for where, m in rest:
        for f in fields:
            if getattr(m, f) != getattr(ref, f):
                problems.append(Problem(MANIFEST_NAME, "compatible", f"{f} is {getattr(m, f)!r} "
                                        f"but {first} has {getattr(ref, f)!r}", output=where))
    return problems


def check_unique_ids(shards: Sequence[ShardContents]) -> list[Problem]:
    """No sample id may be held twice: in one shard, two shards or two outputs (workers own
    disjoint prompts). One problem per pair of files, naming the first repeated id."""
    owner: dict[str, Path] = {}
    repeats: dict[tuple[Path, Path], list[str]] = {}
    for shard in shards:
        for sid in shard.ids:
            if sid in owner:
                repeats.setdefault((shard.path, owner[sid]), []).append(sid)
            else:
                owner[sid] = shard.path
    return [Problem(path.name, "unique ids", f"{len(ids)} sample id(s) also in {other}, "
                    f"first {ids[0]!r}", output=str(path.parent))
            for (path, other), ids in repeats.items()]


def verify_outputs(dirs: Sequence[str | Path], depth: Depth = "full") -> Verification:
    """Verify several outputs read as one (e.g. one per teacher worker): each, and their union.

    This is `kd verify`, and what every reader runs before it trusts a label set.
    """
    union = Verification()
    for d in dirs:
        found = verify_output(d, depth)
        union.manifests |= found.manifests
        union.problems += found.problems
        union.shards += found.shards
        union.notes += found.notes
    if len(union.manifests) > 1:
        union.problems += check_compatible(union.manifests)
    union.problems += check_unique_ids(union.shards)
    return union


def orphan_files(out_dir: str | Path, manifest: Manifest) -> list[str]:
    """Shard files on disk that the manifest does not list (left by an interrupted run)."""
    listed = {rec.name for rec in manifest.shards.values()}
    return sorted(p.name for p in Path(out_dir).glob("shard-*.h5") if p.name not in listed)


def describe(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems)


