"""`kd export`: offline-kd labels for other trainers (Parquet: plain view, axolotl, DistillKit;
speculators' EAGLE-3 data: `stages.interop.export_speculators`).

Opens the label directories as the student stage does (`open_label_set`: full
verification, one teacher and tokenizer, no sample twice), streams every sample
through the format's row builder in `pipeline.interop`, and commits the output
directory whole (written under a temporary name, renamed at the end). Beside the
data files, `offline_kd_export.yaml` records the format, the sources (with their
manifest sha256) and the sample id of every row; `--format distillkit` also
writes DistillKit's `compression_config.yaml`. The labels' stored tokenizer
(`pipeline.store.tokenizer_files`) is copied to `<out>/tokenizer/`.

    PYTHONPATH=. python -m stages.cli.main export --labels data/labels/demo --format parquet \
        --out data/export/demo-parquet
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.interop.axolotl_rows import AXOLOTL_SCHEMA, axolotl_row, spans
from pipeline.interop.distillkit_config import exact_config
from pipeline.interop.distillkit_rows import DISTILLKIT_SCHEMA, distillkit_row
from pipeline.interop.parquet_view import VIEW_SCHEMA, view_row
from pipeline.interop.table_sink import TableSink
from pipeline.store.atomic_commit import commit_path, fresh_temp_dir, sha256_file
from pipeline.store.codecs import label_kind_named
from pipeline.store.manifest import manifest_path
from pipeline.store.tokenizer_files import TOKENIZER_DIR
from pipeline.student.label_set import LabelSet, LabelSetError, open_label_set
from schemas.interop_config import ExportConfig
from stages.interop.written_rows import Written, labelled_samples

SIDECAR = "offline_kd_export.yaml"
DISTILLKIT_CONFIG = "compression_config.yaml"


@dataclass
class ExportSummary:
    """What one export wrote."""

    out: str
    format: str
    samples: int
    rows: int
    labelled_rows: int
    split_samples: int
    files: int
    bytes: int
    seconds: float

    def line(self) -> str:
        split = f", {self.split_samples} samples split at --max-length" if self.split_samples else ""
        return (f"export: {self.samples} samples -> {self.rows} {self.format} rows "
                f"({self.labelled_rows} labelled positions{split}), {self.files} file(s), "
                f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s -> {self.out}")


def refuse_long(labels: LabelSet, max_length: int) -> None:
    """Name the samples longer than --max-length before anything is written."""
    long = [i for i in range(len(labels)) if labels.length[i] > max_length]
    if not long:
        return
    first = long[0]
    reader = labels.open_shard(int(labels.shard[first]))
    name = reader.strings("samples/ids")[int(labels.row[first])]
    raise LabelSetError(f"{len(long)} sample(s) longer than --max-length {max_length} "
                        f"(first: {name}, {int(labels.length[first])} tokens in "
                        f"{labels.shard_paths[labels.shard[first]]}); pass --long-samples split "
                        "to split them into windows, or raise --max-length")


def row_builder(cfg: ExportConfig, labels: LabelSet
                ) -> tuple[Any, Callable[[str, dict[str, Any]], list[tuple[str, dict]]]]:
    """The format's Arrow schema and a function from one sample to its (row id, row) pairs."""
    if cfg.format == "parquet":
        return VIEW_SCHEMA, lambda sid, s: [(sid, view_row(sid, s))]
    if cfg.format == "axolotl":
        def axolotl(sid: str, s: dict[str, Any]) -> list[tuple[str, dict]]:
            windows = spans(len(s["token_ids"]), cfg.max_length)
            return [(sid if len(windows) == 1 else f"{sid}#{w}", axolotl_row(s, span, cfg.kd_temperature))
                    for w, span in enumerate(windows)]
        return AXOLOTL_SCHEMA, axolotl
    config = exact_config(labels.vocab_size, labels.top_k, cfg.exact_dtype)
    return DISTILLKIT_SCHEMA, lambda sid, s: [(sid, distillkit_row(s, config))]


def prepare_out(out: Path) -> Path:
    """A fresh temporary directory for `out`; refuse to replace a directory that is not an export."""
    if out.exists() and any(out.iterdir()) and not (out / SIDECAR).is_file():
        raise LabelSetError(f"--out {out}: exists and is not a kd export; choose another directory")
    return fresh_temp_dir(out)


def run_export(cfg: ExportConfig) -> ExportSummary:
    """Export the label directories in `cfg.format`; the output appears whole or not at all."""
    cfg.validate()
    start = time.perf_counter()
    labels = open_label_set(list(cfg.labels), verify="full")
    sampled = [src.path for src in labels.sources
               if not label_kind_named(src.manifest.label_kind).holds_topk_rows]
    if sampled:  # the other trainers' formats hold top-k rows, not draw counts
        raise LabelSetError(f"{Path(sampled[0]).parent}: --label-kind sampled labels cannot be "
                            "exported (the export formats hold top-k rows); export a top-k output")
    if cfg.format == "axolotl" and cfg.max_length and cfg.long_samples == "refuse":
        refuse_long(labels, cfg.max_length)
    from stages.interop.export_speculators import check_speculators_source, write_speculators

    if cfg.format == "speculators":
        check_speculators_source(labels)
    out = Path(cfg.out)
    tmp = prepare_out(out)
    written = (write_speculators if cfg.format == "speculators" else write_rows)(cfg, labels, tmp)
    write_sidecars(tmp, cfg, labels, written.row_ids, written.files)
    size = sum(f.stat().st_size for f in tmp.rglob("*")
               if f.is_file() and f.name not in (SIDECAR, DISTILLKIT_CONFIG))
    if labels.tokenizer_dir:  # the labels' tokenizer travels with the export, as with the labels
        shutil.copytree(labels.tokenizer_dir, tmp / TOKENIZER_DIR)
    commit_path(tmp, out)
    return ExportSummary(str(out), cfg.format, written.samples, len(written.row_ids),
                         written.labelled, written.split, len(written.files), size,
                         time.perf_counter() - start)


def write_rows(cfg: ExportConfig, labels: LabelSet, tmp: Path) -> Written:
    """The Parquet formats: every sample through the format's row builder into `tmp`."""
    schema, build = row_builder(cfg, labels)
    written = Written()
    with TableSink(tmp, schema, cfg.rows_per_file) as sink:
        for sample_id, s in labelled_samples(labels):
            rows = build(sample_id, s)
            written.count(s, split=len(rows) > 1)
            for row_id, row in rows:
                written.row_ids.append(row_id)
                sink.add(row)
    written.files = sink.files
    return written


def write_sidecars(tmp: Path, cfg: ExportConfig, labels: LabelSet, row_ids: list[str],
                   files: list[str]) -> None:
    meta = {
        "format": cfg.format, "files": files, "teacher": labels.teacher,
        "tokenizer_fingerprint": labels.tokenizer_fingerprint, "vocab_size": labels.vocab_size,
        "top_k": labels.top_k,
        "sources": [{"labels": d, "manifest_sha256": sha256_file(manifest_path(d))} for d in cfg.labels],
        "settings": {"max_length": cfg.max_length, "long_samples": cfg.long_samples,
                     "kd_temperature": cfg.kd_temperature, "exact_dtype": cfg.exact_dtype,
                     "hidden_dtype": cfg.hidden_dtype},
        "row_sample_ids": row_ids,
    }
    if cfg.format == "distillkit":
        config = exact_config(labels.vocab_size, labels.top_k, cfg.exact_dtype).to_yaml_dict()
        (tmp / DISTILLKIT_CONFIG).write_text(yaml.safe_dump(config, sort_keys=True))
    (tmp / SIDECAR).write_text(yaml.safe_dump(meta, sort_keys=False))
