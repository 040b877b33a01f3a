"""`kd export --format speculators`: a `--hidden-layers eagle3` output as vllm-project/speculators'
offline EAGLE-3 training data (layout: `pipeline.interop.speculators_rows`).

Rows follow the label set's order (shard by shard, row by row; the sample id of
row i is `row_sample_ids[i]` in offline_kd_export.yaml). An output without the
eagle3 states, or one storing pca coefficients instead of the teacher's states, is
refused before anything is written, naming what is missing.

    PYTHONPATH=. python -m stages.cli.main export --labels data/labels/eagle3 \
        --format speculators --hidden-dtype bf16 --out data/export/eagle3-speculators
"""

from __future__ import annotations

from pathlib import Path

from pipeline.interop.speculators_rows import missing_eagle3_layers
from pipeline.interop.speculators_sink import HS_DIR, SpeculatorsSink, hs_name
from pipeline.store.codecs import hidden_format_named
from pipeline.student.label_set import LabelSet, LabelSetError
from schemas.eagle3 import eagle3_layers
from schemas.interop_config import ExportConfig
from stages.interop.written_rows import Written, labelled_samples


def check_speculators_source(labels: LabelSet) -> None:
    """Refuse label directories that lack the eagle3 states (naming them) or hold pca coefficients."""
    source = Path(labels.sources[0].path).parent if labels.sources else "the labels"
    missing = missing_eagle3_layers(labels.hidden_layers, labels.teacher_num_layers)
    if missing:
        raise LabelSetError(
            f"{source}: --format speculators needs the EAGLE-3 hidden states, missing "
            f"{', '.join(missing)} (it holds layers {labels.hidden_layers}); "
            "rerun kd teacher-labels with --hidden-layers eagle3")
    pca = [src.path for src in labels.sources
           if hidden_format_named(src.manifest.hidden_format).needs_basis]
    if pca:
        raise LabelSetError(f"{Path(pca[0]).parent}: --hidden-format pca stores coefficients, not "
                            "the teacher's states speculators trains on; use int8 or fp16")


def write_speculators(cfg: ExportConfig, labels: LabelSet, tmp: Path) -> Written:
    """Every sample as one dataset row and its `hidden_states/hs_{i}.safetensors`."""
    written = Written()
    with SpeculatorsSink(tmp, eagle3_layers(labels.teacher_num_layers), cfg.hidden_dtype) as sink:
        for sample_id, s in labelled_samples(labels):
            written.count(s)
            written.row_ids.append(sample_id)
            sink.add(s)
    written.files = sorted(str(p.relative_to(tmp)) for p in tmp.iterdir() if p.is_file()) + \
        [f"{HS_DIR}/{hs_name(i)}" for i in range(sink.rows)]
    return written
