"""`kd import --format distillkit`: a DistillKit compressed-logit dataset as an offline-kd output.

Reads every *.parquet file of `--in` (or the one file), with the compression
configuration beside it (`compression_config.yaml`, as DistillKit's capture
writes it) or given by `--distillkit-config`; decodes each row with
`pipeline.interop.distillkit_rows.labels_from_row` (any compression setting:
exact values, polynomial tail, residual bins, delta encoding) and writes an
ordinary output: shards, index, manifest with mode `imported` whose config
records the source files with their sha256 and the DistillKit configuration.
The teacher directory supplies the tokenizer fingerprint and vocabulary size
(and its tokenizer files, copied to `<out>/tokenizer/`);
ids outside that vocabulary are refused. Sample ids are `<file>-<row>/0`, so
the student's held-out split is by row. The output is built under a temporary
name and renamed when complete.

    PYTHONPATH=. python -m stages.cli.main import --format distillkit --in data/export/dk \
        --teacher data/models/smollm2-135m-instruct --out data/labels/imported
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.interop.distillkit_config import DistillKitConfig, DistillKitFormatError, parse_config
from pipeline.interop.distillkit_rows import labels_from_row
from pipeline.store.atomic_commit import commit_path, fresh_temp_dir, sha256_file
from pipeline.store.fingerprint import tokenizer_fingerprint
from pipeline.store.tokenizer_files import copy_tokenizer_files
from pipeline.store.tokenizer_identity import TokenizerIdentity, identity_of
from pipeline.store.manifest import Manifest, write_manifest
from pipeline.store.sample import Sample
from pipeline.store.sample_index import merge_index
from pipeline.store.shard_writer import ShardAttrs
from pipeline.teacher.kept_shard import commit_kept_shard
from schemas.interop_config import ImportConfig

COLUMNS = ("input_ids", "compressed_logprobs", "bytepacked_indices")
CONFIG_NAME = "compression_config.yaml"


@dataclass
class ImportSummary:
    out: str
    rows: int
    samples: int
    labelled_rows: int
    skipped_rows: int
    seconds: float

    def line(self) -> str:
        return (f"import: {self.rows} DistillKit rows -> {self.samples} samples, "
                f"{self.labelled_rows} labelled positions ({self.skipped_rows} rows without a "
                f"label skipped) in {self.seconds:.1f} s -> {self.out}")


def source_files(source: Path) -> list[Path]:
    files = [source] if source.is_file() else sorted(source.rglob("*.parquet"))
    if not files:
        raise DistillKitFormatError(f"--in {source}: no .parquet files")
    return files


def load_config(cfg: ImportConfig) -> tuple[DistillKitConfig, Path]:
    source = Path(cfg.source)
    path = Path(cfg.distillkit_config) if cfg.distillkit_config else (
        (source if source.is_dir() else source.parent) / CONFIG_NAME)
    if not path.is_file():
        raise DistillKitFormatError(f"--in {source}: no {CONFIG_NAME} beside the data; give the "
                                    "compression configuration with --distillkit-config")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DistillKitFormatError(f"{path}: unreadable YAML: {exc}") from exc
    return parse_config(data, str(path)), path


def matrix(rows: pa.Array, where: str, name: str) -> np.ndarray:
    """One row's list<list<uint8>> as a (rows, width) uint8 array; ragged rows are refused."""
    offsets = np.asarray(rows.offsets)
    widths = np.diff(offsets)
    if len(widths) and (widths != widths[0]).any():
        raise DistillKitFormatError(f"{where}: {name} rows have different byte lengths")
    flat = rows.values.to_numpy(zero_copy_only=False)[offsets[0]: offsets[-1]]
    return flat.astype(np.uint8).reshape(len(widths), int(widths[0]) if len(widths) else 0)


def read_rows(path: Path, root: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(row name, columns) of every row of one DistillKit Parquet file."""
    names = pq.ParquetFile(path).schema_arrow.names
    if "packed_indices" in names and "compressed_logprobs" not in names:
        raise DistillKitFormatError(f"{path}: legacy DistillKit rows (packed_indices, exact_values, "
                                    "coeffs) are not supported")
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise DistillKitFormatError(f"{path}: missing column(s) {', '.join(missing)}")
    wanted = list(COLUMNS) + [c for c in ("labels",) if c in names]
    stem = path.relative_to(root).with_suffix("").as_posix().replace("/", "_") if root.is_dir() \
        else path.stem
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=64, columns=wanted):
        for i in range(batch.num_rows):
            where = f"{path} row {row}"
            cols = {"input_ids": batch.column("input_ids")[i].values.to_numpy(),
                    "labels": (batch.column("labels")[i].values.to_numpy()
                               if "labels" in wanted else None)}
            for name in COLUMNS[1:]:
                cols[name] = matrix(batch.column(name)[i].values, where, name)
            yield f"{stem}-{row}", cols | {"where": where}
            row += 1


def to_sample(name: str, cols: dict[str, Any], config: DistillKitConfig, vocab: int) -> Sample | None:
    got = labels_from_row(cols["input_ids"], cols["compressed_logprobs"],
                          cols["bytepacked_indices"], cols["labels"], config, cols["where"])
    if got is None:
        return None
    for field in ("token_ids", "topk_ids"):
        if got[field].max(initial=0) >= vocab:
            raise DistillKitFormatError(f"{cols['where']}: {field} holds id {got[field].max()} "
                                        f">= the teacher's vocabulary size {vocab}")
    tokens, p0 = got["token_ids"].tolist(), int(got["positions"][0])
    return Sample(name, 0, tokens[:p0], tokens[p0:], got["topk_ids"], got["topk_logprobs"],
                  got["sampled_logprobs"], "imported", label_positions=got["positions"])


def teacher_identity(teacher: str) -> tuple[str, TokenizerIdentity, int]:
    """(tokenizer fingerprint, two-part identity, vocabulary size) of the teacher directory or id."""
    from transformers import AutoTokenizer

    from stages.teacher.labels import teacher_shape

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    return tokenizer_fingerprint(tokenizer), identity_of(tokenizer), teacher_shape(teacher)[0]


def run_import(cfg: ImportConfig) -> ImportSummary:
    """Decode the DistillKit dataset into a new offline-kd output at `cfg.out`."""
    cfg.validate()
    start = time.perf_counter()
    source, out = Path(cfg.source), Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise DistillKitFormatError(f"--out {out}: exists and is not empty; choose a new directory")
    files = source_files(source)
    config, config_path = load_config(cfg)
    fingerprint, identity, vocab = teacher_identity(cfg.teacher)
    attrs = ShardAttrs(cfg.teacher, fingerprint, vocab, config.k, {"mode": "imported"},
                       vocab_fingerprint=identity.vocab_fingerprint,
                       special_tokens_fingerprint=identity.special_tokens_fingerprint)
    manifest = Manifest(
        teacher=cfg.teacher, tokenizer_fingerprint=fingerprint, vocab_size=vocab, top_k=config.k,
        mode="imported",
        config={"format": cfg.format, "source": str(source), "config_file": str(config_path),
                "source_files": [{"path": str(f), "sha256": sha256_file(f)} for f in files],
                "distillkit_config": config.to_yaml_dict()})
    manifest.set_tokenizer_identity(identity)
    tmp = fresh_temp_dir(out)
    manifest.tokenizer_files = copy_tokenizer_files(cfg.teacher, tmp)
    rows = skipped = 0
    pending: list[Sample] = []
    for f in files:
        for name, cols in read_rows(f, source):
            rows += 1
            sample = to_sample(name, cols, config, vocab)
            skipped += sample is None
            pending += [sample] if sample is not None else []
            if len(pending) == cfg.shard_size:
                write_imported_shard(tmp, manifest, attrs, pending)
                pending = []
    if pending:
        write_imported_shard(tmp, manifest, attrs, pending)
    samples = manifest.totals()["samples"]
    manifest.input_records, manifest.accepted_prompts = rows, samples
    manifest.rejected_prompts, manifest.planned_samples = skipped, samples
    manifest.rejects_by_reason = {"no_labelled_rows": skipped} if skipped else {}
    manifest.complete = True
    merge_index(tmp, sorted(manifest.shards))
    write_manifest(tmp, manifest)
    commit_path(tmp, out)
    return ImportSummary(str(out), rows, samples, manifest.totals()["completion_tokens"], skipped,
                         time.perf_counter() - start)


def write_imported_shard(out: Path, manifest: Manifest, attrs: ShardAttrs,
                         samples: list[Sample]) -> None:
    commit_kept_shard(out, manifest, len(manifest.shards), samples, attrs)
