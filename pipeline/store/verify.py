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
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute is a submodule)

from pipeline.store.checksum import sha256_file
from pipeline.store.hidden_basis import BASIS_NAME
from pipeline.store.hidden_codec import hidden_format, scale_dataset_name
from pipeline.store.label_codec import label_format, logprob_dataset
from pipeline.store.q8poly_codec import row_bytes
from pipeline.store.sampled_codec import label_kind
from pipeline.store.manifest import Manifest, ManifestError, manifest_path, read_manifest
from pipeline.store.sample_index import CONTENT_COLUMNS, INDEX_NAME, kept_contents, part_name, read_index
from pipeline.store.shard_reader import ShardContents, ShardFormatError, ShardReader, read_root_attrs
from pipeline.store.text_layout_datasets import layout_errors, teacher_byte_lengths
from schemas import (MANIFEST_NAME, SHARD_SCHEMA_NAME, SHARD_SCHEMAS, STUDENT_LOGPROBS,
                     hidden_dataset_name, shard_name, topk_id_dtype)

# Rows checked per step: bounds memory on multi-GB shards.
BLOCK_ROWS = 1 << 18
# float16 rounding of logprobs near 0 can land a hair above 0.
LOGPROB_MAX = 1e-3


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


def blocks(n: int) -> Iterator[slice]:
    for start in range(0, n, BLOCK_ROWS):
        yield slice(start, min(n, start + BLOCK_ROWS))


def check_offsets(name: str, offsets: np.ndarray, total: int, count: int) -> list[str]:
    if offsets.shape != (count + 1,):
        return [f"{name} has shape {offsets.shape}, expected ({count + 1},)"]
    if offsets[0] != 0 or offsets[-1] != total:
        return [f"{name} runs {offsets[0]}..{offsets[-1]}, expected 0..{total}"]
    if np.any(np.diff(offsets) < 0):
        return [f"{name} decreases at sample {int(np.argmax(np.diff(offsets) < 0))}"]
    return []


def check_attrs(a: dict[str, Any], manifest: Manifest, index: int) -> list[str]:
    """Root attributes against the manifest: the schema, the teacher, k, hidden layers."""
    errors = []
    expected = {"schema": SHARD_SCHEMA_NAME, "schema_version": manifest.schema_version,
                "teacher": manifest.teacher, "tokenizer_fingerprint": manifest.tokenizer_fingerprint,
                "vocab_size": manifest.vocab_size, "top_k": manifest.top_k, "shard_index": index}
    for key, want in expected.items():
        if a.get(key) != want:
            errors.append(f"attribute {key} is {a.get(key)!r}, manifest says {want!r}")
    for key in SHARD_SCHEMAS[manifest.schema_version]["root_attributes"]:
        if key not in a:
            errors.append(f"root attribute {key} is missing")
    if label_format(a) != manifest.label_format:
        errors.append(f"label_format is {label_format(a)!r}, manifest says {manifest.label_format!r}")
    if label_format(a) in ("q8", "q8poly"):
        consts = [a.get("label_q8_max_nats"), a.get("label_q8_knee")]
        if not all(isinstance(c, (int, float)) and np.isfinite(c) and c > 0 for c in consts):
            errors.append(f"q8 constants label_q8_max_nats, label_q8_knee are {consts}, "
                          "expected finite and positive")
    if label_format(a) == "q8poly":
        head, terms = a.get("label_poly_head"), a.get("label_poly_terms")
        if not (isinstance(head, int) and isinstance(terms, int)
                and 1 <= head < int(a.get("top_k", 0)) and terms >= 1):
            errors.append(f"q8poly label_poly_head, label_poly_terms are {[head, terms]}, "
                          f"expected 1 <= head < top_k {a.get('top_k')!r} and terms >= 1")
    if label_kind(a) != manifest.label_kind:
        errors.append(f"label_kind is {label_kind(a)!r}, manifest says {manifest.label_kind!r}")
    elif label_kind(a) == "sampled" and a.get("samples_per_position") != manifest.samples_per_position:
        errors.append(f"samples_per_position is {a.get('samples_per_position')!r}, manifest says "
                      f"{manifest.samples_per_position!r}")
    if hidden_format(a) != manifest.hidden_format:
        errors.append(f"hidden_format is {hidden_format(a)!r}, manifest says {manifest.hidden_format!r}")
    elif hidden_format(a) == "pca" and json.loads(a.get("hidden_layers", "[]")):
        # (a shard still waiting for the hidden-state pass predates the basis)
        for key in ("hidden_rank", "hidden_basis_sha256"):
            if a.get(key) != getattr(manifest, key):
                errors.append(f"attribute {key} is {a.get(key)!r}, manifest says "
                              f"{getattr(manifest, key)!r}")
    layers = json.loads(a.get("hidden_layers", "[]"))
    if layers != manifest.shards[index].hidden_layers:
        errors.append(f"hidden layers {layers}, manifest says {manifest.shards[index].hidden_layers}")
    return errors


def check_structure(r: ShardReader) -> list[str]:
    """Shapes and dtypes of every dataset, and the offsets that tie them together."""
    a, k, errors = r.arrays, r.top_k, []
    n, tokens = len(r), len(a["samples/token_ids"])
    comp = len(a["labels/sampled_logprobs"])
    for name, spec in SHARD_SCHEMAS[r.version]["datasets"].items():
        if name in a and a[name].dtype.name not in spec["dtype"]:
            errors.append(f"{name} has dtype {a[name].dtype}, schema allows {spec['dtype']}")
    want_id_dtype = topk_id_dtype(int(r.attrs["vocab_size"]))
    if r.label_kind == "sampled":
        errors += check_sampled_structure(a, comp, want_id_dtype)
    else:
        if a["labels/topk_ids"].dtype != want_id_dtype:
            errors.append(f"labels/topk_ids is {a['labels/topk_ids'].dtype}, expected {want_id_dtype}")
        lp_name = logprob_dataset(r.attrs)
        if r.label_format != "fp16" and a[lp_name].dtype != np.uint8:
            errors.append(f"{lp_name} has dtype {a[lp_name].dtype}, expected uint8")
        width = (row_bytes(int(r.attrs["label_poly_head"]), int(r.attrs["label_poly_terms"]))
                 if r.label_format == "q8poly" else k)
        for name, cols in (("labels/topk_ids", k), (lp_name, width)):
            if a[name].shape != (comp, cols):
                errors.append(f"{name} has shape {a[name].shape}, expected ({comp}, {cols})")
    if a["labels/positions"].shape != (comp,):
        errors.append(f"labels/positions has shape {a['labels/positions'].shape}, expected ({comp},)")
    student = a.get(STUDENT_LOGPROBS)
    if student is not None and (student.shape != (comp,) or student.dtype != np.float32):
        errors.append(f"{STUDENT_LOGPROBS} has shape {student.shape}, dtype {student.dtype}; "
                      f"expected ({comp},) float32, one per label row")
    errors += check_offsets("samples/offsets", a["samples/offsets"], tokens, n)
    errors += check_offsets("labels/offsets", a["labels/offsets"], comp, n)
    if errors:
        return errors
    lengths = np.diff(a["samples/offsets"])
    prompt = a["samples/prompt_lengths"].astype(np.int64)
    rows = np.diff(a["labels/offsets"])
    if np.any(prompt < 1) or np.any(prompt >= lengths):
        i = int(np.argmax((prompt < 1) | (prompt >= lengths)))
        errors.append(f"sample {i}: prompt length {prompt[i]} not in [1, sample length {lengths[i]})")
    elif np.any(rows < 1) or np.any(rows > lengths - prompt):
        i = int(np.argmax((rows < 1) | (rows > lengths - prompt)))
        errors.append(f"sample {i}: {rows[i]} label rows, expected 1..{lengths[i] - prompt[i]} "
                      "(the tokens after its prompt)")
    else:
        errors += check_positions(a["labels/positions"], a["labels/offsets"], prompt, lengths)
    for layer in r.hidden_layers:
        h = a.get(hidden_dataset_name(layer))
        size = int(r.attrs.get("hidden_rank" if r.hidden_format == "pca" else "hidden_size", 0))
        if h is None or h.shape != (tokens, size):
            errors.append(f"{hidden_dataset_name(layer)}: expected shape ({tokens}, {size})")
        want = np.int8 if r.hidden_format in ("int8", "pca") else np.float16
        if h is not None and h.dtype != want:
            errors.append(f"{hidden_dataset_name(layer)} has dtype {h.dtype}, expected {np.dtype(want)} "
                          f"(hidden_format {r.hidden_format})")
        scale = a.get(scale_dataset_name(layer))
        if r.hidden_format in ("int8", "pca") and (scale is None or scale.shape != (tokens,)
                                          or scale.dtype != np.float32):
            errors.append(f"{scale_dataset_name(layer)}: expected float32 shape ({tokens},)")
    return errors


def check_sampled_structure(a: dict[str, np.ndarray], rows: int, id_dtype: np.dtype) -> list[str]:
    """Dtypes and offsets of sampled labels (`pipeline.store.sampled_codec`)."""
    entries = len(a["labels/sample_ids"])
    errors = check_offsets("labels/sample_offsets", a["labels/sample_offsets"], entries, rows)
    want = {"labels/sample_ids": id_dtype, "labels/sample_counts": np.dtype(np.uint8),
            "labels/sample_tail_counts": np.dtype(np.uint8)}
    for name, dtype in want.items():
        if a[name].dtype != dtype:
            errors.append(f"{name} has dtype {a[name].dtype}, expected {dtype}")
    if a["labels/sample_counts"].shape != (entries,):
        errors.append(f"labels/sample_counts has shape {a['labels/sample_counts'].shape}, "
                      f"expected ({entries},) like labels/sample_ids")
    if a["labels/sample_tail_counts"].shape != (rows,):
        errors.append(f"labels/sample_tail_counts has shape {a['labels/sample_tail_counts'].shape}, "
                      f"expected ({rows},)")
    return errors


def check_sampled_values(r: ShardReader) -> list[str]:
    """Every sampled row: ids below the vocabulary, counts >= 1, counts + tail = N."""
    a, n, vocab = r.arrays, r.samples_per_position, int(r.attrs["vocab_size"])
    if a["labels/sample_ids"].max(initial=0) >= vocab:
        return [f"labels/sample_ids has ids >= vocab_size {vocab}"]
    counts = np.asarray(a["labels/sample_counts"], np.int64)
    if counts.size and counts.min() < 1:
        return ["labels/sample_counts holds a zero count (only drawn ids are stored)"]
    offsets = np.asarray(a["labels/sample_offsets"], np.int64)
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    sums = cumulative[offsets[1:]] - cumulative[offsets[:-1]] + a["labels/sample_tail_counts"]
    if np.any(sums != n):
        row = int(np.argmax(sums != n))
        return [f"label row {row}: sample counts plus tail sum to {int(sums[row])}, "
                f"expected samples_per_position {n}"]
    return []


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
    """Finite logprobs, rows sorted descending, every id below the vocabulary size."""
    a, vocab, errors = r.arrays, int(r.attrs["vocab_size"]), []
    for sl in blocks(len(a["samples/token_ids"])):
        if a["samples/token_ids"][sl].max(initial=0) >= vocab:
            errors.append(f"samples/token_ids has ids >= vocab_size {vocab}")
            break
    if r.label_kind == "sampled":
        errors += check_sampled_values(r)
        sampled = a["labels/sampled_logprobs"]
        if not np.all(np.isfinite(sampled)) or sampled.max(initial=-1) > LOGPROB_MAX:
            errors.append("labels/sampled_logprobs not finite and <= 0")
    student = a.get(STUDENT_LOGPROBS)
    if student is not None and not (np.all(np.isfinite(student))
                                    and student.max(initial=-1) <= LOGPROB_MAX):
        errors.append(f"{STUDENT_LOGPROBS} not finite and <= 0")
    for sl in blocks(len(a["labels/sampled_logprobs"]) if r.label_kind == "topk" else 0):
        ids, lps = a["labels/topk_ids"][sl], r.logprobs(sl).astype(np.float32)
        sampled = a["labels/sampled_logprobs"][sl]
        if ids.max(initial=0) >= vocab:
            errors.append(f"labels/topk_ids has ids >= vocab_size {vocab} (rows {sl.start}..)")
        if not (np.all(np.isfinite(lps)) and np.all(np.isfinite(sampled))):
            errors.append(f"non-finite logprobs in rows {sl.start}..{sl.stop}")
        elif lps.max(initial=-1) > LOGPROB_MAX or sampled.max(initial=-1) > LOGPROB_MAX:
            errors.append(f"positive logprobs in rows {sl.start}..{sl.stop}")
        if np.any(np.diff(lps, axis=1) > 0):
            row = sl.start + int(np.argmax(np.any(np.diff(lps, axis=1) > 0, axis=1)))
            errors.append(f"{logprob_dataset(r.attrs)} row {row} is not sorted descending")
        if errors:
            break
    for layer in r.hidden_layers:
        h = a[hidden_dataset_name(layer)]
        for sl in blocks(len(h)):
            if r.hidden_format in ("int8", "pca"):
                scale = a[scale_dataset_name(layer)][sl]
                if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
                    errors.append(f"{scale_dataset_name(layer)} has scales that are not finite "
                                  "and positive")
                    break
            elif not np.all(np.isfinite(h[sl])):
                errors.append(f"{hidden_dataset_name(layer)} has non-finite values")
                break
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
    if manifest.hidden_format == "pca":
        found.problems += check_basis(out_dir, manifest, depth == "full")
    if manifest.complete:
        found.problems += check_complete(out_dir, manifest, found if depth == "cheap" else None)
    found.problems = [replace(p, output=str(out_dir)) for p in found.problems]
    return found


def check_basis(out_dir: Path, m: Manifest, checksum: bool) -> list[Problem]:
    """A pca output's `hidden_basis.h5`: present once a shard uses it, and the manifest's."""
    path = out_dir / BASIS_NAME
    if not m.hidden_basis_sha256:
        return []  # the hidden-state pass has not fitted it yet
    if not path.is_file():
        return [Problem(BASIS_NAME, "present", "pca basis named by the manifest is missing")]
    if checksum and sha256_file(path) != m.hidden_basis_sha256:
        return [Problem(BASIS_NAME, "sha256", "basis checksum differs from the manifest (corrupt)")]
    return []


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
    # label_format and hidden_format may differ: fp16, q8 and q8poly labels, int8 and fp16 states
    # decode to the same float32 rows. label_kind may not: top-k rows and draw counts are
    # different targets.
    # hidden_space may not: pca coefficients (or two bases) are not the teacher's states.
    fields = ("teacher", "tokenizer_fingerprint", "vocab_size", "top_k", "label_kind",
              "samples_per_position", "hidden_layers", "hidden_size", "hidden_space")
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


