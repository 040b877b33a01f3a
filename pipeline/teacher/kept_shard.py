"""Commit a shard all of whose samples are kept: the shard, its index part, its manifest record.

Outputs that are not filtered (a merge of teachers, an imported data set,
random outputs for tests) still carry the per-sample metrics of the index;
this writes both files the way the teacher stage does and records them.

    >>> import tempfile, pathlib, numpy as np
    >>> from pipeline.store.manifest import Manifest
    >>> from pipeline.store.shard_writer import ShardAttrs
    >>> from pipeline.store.sample import Sample
    >>> from pipeline.teacher.kept_shard import commit_kept_shard
    >>> m = Manifest(teacher="t", tokenizer_fingerprint="f", vocab_size=100, top_k=2)
    >>> s = Sample("p", 0, [1, 2], [5, 6], np.array([[5, 9], [6, 9]]),
    ...            np.log([[0.6, 0.3], [0.7, 0.2]]).astype(np.float32),
    ...            np.log([0.6, 0.7]).astype(np.float32), "stop")
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> commit_kept_shard(out, m, 0, [s], ShardAttrs("t", "f", 100, 2, {})).generated
    1
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.store.manifest import Manifest
from pipeline.store.sample import Sample
from pipeline.store.sample_index import write_index_part
from pipeline.store.shard_writer import ShardAttrs, ShardRecord, write_shard
from pipeline.teacher.sample_filter import filter_samples, index_table
from schemas import shard_name
from schemas.filter_thresholds import FilterThresholds

KEEP_ALL = FilterThresholds(drop_truncated=False, max_repetition=None, min_mean_logprob=None)


def commit_kept_shard(out: Path, manifest: Manifest, index: int, samples: Sequence[Sample],
                      attrs: ShardAttrs) -> ShardRecord:
    """Write shard `index` of `out` and its index part; add its record to `manifest`."""
    outcome = filter_samples(samples, KEEP_ALL)
    record = write_shard(out / shard_name(index), index, samples, attrs)
    record.index_sha256 = write_index_part(
        out, index, index_table(samples, outcome.metrics, outcome.reasons, record.name))
    record.generated = len(samples)
    manifest.shards[index] = record
    return record
