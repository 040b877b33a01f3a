"""Verify an output directory against schema v1: checksums, schema, invariants.

Used by `kd verify DIR` and by readers before they trust data. Every problem
names the shard and the broken check; nothing is trusted because it exists.

    python -m stages.cli verify data/labels/demo
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute is a submodule)

from pipeline.checksum import sha256_file
from pipeline.manifest import Manifest, ManifestError, read_manifest
from pipeline.sample_index import INDEX_NAME, part_name, read_index
from pipeline.shard_reader import ShardFormatError, ShardReader
from pipeline.soft_labels import topk_id_dtype
from schemas import SHARD_SCHEMA, SHARD_SCHEMA_NAME, SHARD_SCHEMA_VERSION, hidden_dataset_name, shard_name

# Rows checked per step: bounds memory on multi-GB shards.
BLOCK_ROWS = 1 << 18
# float16 rounding of logprobs near 0 can land a hair above 0.
LOGPROB_MAX = 1e-3


@dataclass(frozen=True)
class Problem:
    """One broken check: where (shard file or manifest), which check, and what was found."""

    where: str
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.check}: {self.detail}"


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


def check_attrs(reader: ShardReader, manifest: Manifest, index: int) -> list[str]:
    a, errors = reader.attrs, []
    expected = {"schema": SHARD_SCHEMA_NAME, "schema_version": SHARD_SCHEMA_VERSION,
                "teacher": manifest.teacher, "tokenizer_fingerprint": manifest.tokenizer_fingerprint,
                "vocab_size": manifest.vocab_size, "top_k": manifest.top_k, "shard_index": index}
    for key, want in expected.items():
        if a.get(key) != want:
            errors.append(f"attribute {key} is {a.get(key)!r}, manifest says {want!r}")
    for key in SHARD_SCHEMA["root_attributes"]:
        if key not in a:
            errors.append(f"root attribute {key} is missing")
    if reader.hidden_layers != manifest.shards[index].hidden_layers:
        errors.append(f"hidden layers {reader.hidden_layers}, manifest says "
                      f"{manifest.shards[index].hidden_layers}")
    return errors


def check_structure(r: ShardReader) -> list[str]:
    """Shapes and dtypes of every dataset, and the offsets that tie them together."""
    a, k, errors = r.arrays, r.top_k, []
    n, tokens = len(r), len(a["samples/token_ids"])
    comp = len(a["labels/sampled_logprobs"])
    for name, spec in SHARD_SCHEMA["datasets"].items():
        if name in a and a[name].dtype.name not in spec["dtype"]:
            errors.append(f"{name} has dtype {a[name].dtype}, schema allows {spec['dtype']}")
    want_id_dtype = topk_id_dtype(int(r.attrs["vocab_size"]))
    if a["labels/topk_ids"].dtype != want_id_dtype:
        errors.append(f"labels/topk_ids is {a['labels/topk_ids'].dtype}, expected {want_id_dtype}")
    for name in ("labels/topk_ids", "labels/topk_logprobs"):
        if a[name].shape != (comp, k):
            errors.append(f"{name} has shape {a[name].shape}, expected ({comp}, {k})")
    errors += check_offsets("samples/offsets", a["samples/offsets"], tokens, n)
    errors += check_offsets("labels/offsets", a["labels/offsets"], comp, n)
    if errors:
        return errors
    lengths = np.diff(a["samples/offsets"])
    prompt = a["samples/prompt_lengths"].astype(np.int64)
    if np.any(prompt < 1) or np.any(prompt >= lengths):
        i = int(np.argmax((prompt < 1) | (prompt >= lengths)))
        errors.append(f"sample {i}: prompt length {prompt[i]} not in [1, sample length {lengths[i]})")
    elif not np.array_equal(lengths - prompt, np.diff(a["labels/offsets"])):
        i = int(np.argmax(lengths - prompt != np.diff(a["labels/offsets"])))
        errors.append(f"sample {i}: label rows differ from its completion length")
    for layer in r.hidden_layers:
        h = a.get(hidden_dataset_name(layer))
        size = int(r.attrs.get("hidden_size", 0))
        if h is None or h.shape != (tokens, size):
            errors.append(f"{hidden_dataset_name(layer)}: expected shape ({tokens}, {size})")
    return errors


def check_values(r: ShardReader) -> list[str]:
    """Finite logprobs, rows sorted descending, every id below the vocabulary size."""
    a, vocab, errors = r.arrays, int(r.attrs["vocab_size"]), []
    for sl in blocks(len(a["samples/token_ids"])):
        if a["samples/token_ids"][sl].max(initial=0) >= vocab:
            errors.append(f"samples/token_ids has ids >= vocab_size {vocab}")
            break
    for sl in blocks(len(a["labels/sampled_logprobs"])):
        ids, lps = a["labels/topk_ids"][sl], a["labels/topk_logprobs"][sl].astype(np.float32)
        sampled = a["labels/sampled_logprobs"][sl]
        if ids.max(initial=0) >= vocab:
            errors.append(f"labels/topk_ids has ids >= vocab_size {vocab} (rows {sl.start}..)")
        if not (np.all(np.isfinite(lps)) and np.all(np.isfinite(sampled))):
            errors.append(f"non-finite logprobs in rows {sl.start}..{sl.stop}")
        elif lps.max(initial=-1) > LOGPROB_MAX or sampled.max(initial=-1) > LOGPROB_MAX:
            errors.append(f"positive logprobs in rows {sl.start}..{sl.stop}")
        if np.any(np.diff(lps, axis=1) > 0):
            row = sl.start + int(np.argmax(np.any(np.diff(lps, axis=1) > 0, axis=1)))
            errors.append(f"labels/topk_logprobs row {row} is not sorted descending")
        if errors:
            break
    for layer in r.hidden_layers:
        h = a[hidden_dataset_name(layer)]
        for sl in blocks(len(h)):
            if not np.all(np.isfinite(h[sl])):
                errors.append(f"{hidden_dataset_name(layer)} has non-finite values")
                break
    return errors


def verify_shard(path: Path, index: int, manifest: Manifest, checksum: bool = True) -> list[Problem]:
    """All checks of one shard listed in `manifest`."""
    rec, where = manifest.shards[index], path.name
    if not path.is_file():
        return [Problem(where, "present", "file listed in the manifest is missing")]
    if path.stat().st_size != rec.bytes:
        return [Problem(where, "size", f"{path.stat().st_size} bytes, manifest says {rec.bytes} "
                        "(truncated or rewritten)")]
    if checksum and sha256_file(path) != rec.sha256:
        return [Problem(where, "sha256", "checksum differs from the manifest (corrupt)")]
    try:
        reader = ShardReader(path)
    except (OSError, ShardFormatError, KeyError) as exc:
        return [Problem(where, "readable", str(exc))]
    errors = check_attrs(reader, manifest, index) + check_structure(reader)
    if not errors:
        errors = check_values(reader)
    counts = {"samples": len(reader), "tokens": len(reader.arrays["samples/token_ids"]),
              "completion_tokens": len(reader.arrays["labels/sampled_logprobs"])}
    errors += [f"{key} is {got}, manifest says {getattr(rec, key)}"
               for key, got in counts.items() if got != getattr(rec, key)]
    return [Problem(where, "invariant", e) for e in errors]


def verify_output(out_dir: str | Path, checksum: bool = True) -> tuple[Manifest | None, list[Problem]]:
    """Verify every shard of one output directory; returns (manifest, problems)."""
    out_dir = Path(out_dir)
    try:
        manifest = read_manifest(out_dir)
    except ManifestError as exc:
        return None, [Problem(str(out_dir), "manifest", str(exc))]
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for index, rec in sorted(manifest.shards.items()):
        if rec.name != shard_name(index):
            problems.append(Problem(rec.name, "name", f"shard {index} should be {shard_name(index)}"))
            continue
        shard_problems = verify_shard(out_dir / rec.name, index, manifest, checksum)
        shard_problems += check_index_part(out_dir, index, rec.index_sha256, checksum)
        problems += shard_problems
        if not shard_problems:
            for sid in ShardReader(out_dir / rec.name).strings("samples/ids"):
                if sid in seen:
                    problems.append(Problem(rec.name, "unique ids", f"{sid} also in {seen[sid]}"))
                seen[sid] = rec.name
    if manifest.complete:
        problems += check_complete(out_dir, manifest)
    return manifest, problems


def check_index_part(out_dir: Path, index: int, sha256: str, checksum: bool) -> list[Problem]:
    part = out_dir / part_name(index)
    if not part.is_file():
        return [Problem(part_name(index), "present", "index part listed in the manifest is missing")]
    if checksum and sha256_file(part) != sha256:
        return [Problem(part_name(index), "sha256", "checksum differs from the manifest (corrupt)")]
    return []


def check_complete(out_dir: Path, m: Manifest) -> list[Problem]:
    """A finished run accounts for every accepted prompt's samples and carries its full index."""
    problems, t = [], m.totals()
    n = int(m.config.get("n", 1))
    if t["generated"] != m.accepted_prompts * n:
        problems.append(Problem("manifest.json", "accounting",
                                f"{t['generated']} samples generated, expected {m.accepted_prompts} "
                                f"accepted prompts x n={n}"))
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
        index = read_index(out_dir)
    except (OSError, ValueError) as exc:
        return problems + [Problem(INDEX_NAME, "readable", str(exc))]
    kept = int(pa.compute.sum(index["kept"]).as_py() or 0)
    if index.num_rows != t["generated"] or kept != t["samples"]:
        problems.append(Problem(INDEX_NAME, "rows", f"{index.num_rows} rows ({kept} kept); manifest "
                                f"says {t['generated']} generated ({t['samples']} kept)"))
    return problems


def check_compatible(manifests: dict[str, Manifest]) -> list[Problem]:
    """Outputs read together must share teacher, tokenizer, vocabulary, k and hidden layers."""
    fields = ("teacher", "tokenizer_fingerprint", "vocab_size", "top_k", "hidden_layers",
              "hidden_size")
    problems = []
    (first, ref), *rest = manifests.items()
    for where, m in rest:
        for f in fields:
            if getattr(m, f) != getattr(ref, f):
                problems.append(Problem(where, "compatible",
                                        f"{f} is {getattr(m, f)!r} but {first} has {getattr(ref, f)!r}"))
    return problems


def verify_outputs(dirs: Sequence[str | Path], checksum: bool = True
                   ) -> tuple[dict[str, Manifest], list[Problem]]:
    """Verify several outputs read as one (e.g. one per teacher worker): each, and their union."""
    manifests: dict[str, Manifest] = {}
    problems: list[Problem] = []
    for d in dirs:
        manifest, found = verify_output(d, checksum)
        problems += [Problem(f"{d}/{p.where}", p.check, p.detail) for p in found]
        if manifest is not None:
            manifests[str(d)] = manifest
    if len(manifests) > 1:
        problems += check_compatible(manifests)
        problems += check_disjoint(manifests)
    return manifests, problems


def check_disjoint(manifests: dict[str, Manifest]) -> list[Problem]:
    """No sample id may appear in two outputs (workers own disjoint prompts)."""
    owner: dict[str, str] = {}
    problems = []
    for d, m in manifests.items():
        for rec in m.shards.values():
            path = Path(d) / rec.name
            if not path.is_file():
                continue
            for sid in ShardReader(path).strings("samples/ids"):
                if sid in owner:
                    problems.append(Problem(str(path), "disjoint", f"{sid} is also in {owner[sid]}"))
                    return problems
                owner[sid] = str(path)
    return problems


def orphan_files(out_dir: str | Path, manifest: Manifest) -> list[str]:
    """Shard files on disk that the manifest does not list (left by an interrupted run)."""
    listed = {rec.name for rec in manifest.shards.values()}
    return sorted(p.name for p in Path(out_dir).glob("shard-*.h5") if p.name not in listed)


def describe(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems)


