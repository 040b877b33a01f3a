"""`index.parquet`: one row per sample made (generated or scored), kept or dropped.

Each shard's rows are committed as `index/part-NNNNN.parquet` next to the
shard (atomically, checksummed in the manifest), so a crash never leaves the
index out of step with the shards; when the run completes the parts are
concatenated, in shard order, into `index.parquet` at the output root.

    python -c "import pyarrow.parquet as pq; \
print(pq.read_table('data/labels/demo/index.parquet').to_pandas().head())"
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store.atomic_commit import commit_path, sha256_file, temp_path_for
from pipeline.store.shard_reader import ShardContents

INDEX_NAME = "index.parquet"
INDEX_PARTS_DIR = "index"

INDEX_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("prompt_id", pa.string()), ("sample_index", pa.int32()),
    ("kept", pa.bool_()), ("drop_reason", pa.string()),
    ("shard", pa.string()), ("row", pa.int32()),
    ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()), ("tokens", pa.int32()),
    ("finish_reason", pa.string()), ("mean_logprob", pa.float64()),
    ("min_logprob", pa.float64()), ("mean_entropy", pa.float64()),
    ("mean_tail_mass", pa.float64()), ("repetition_rate", pa.float64()),
    ("non_finite", pa.bool_()),
])


def part_name(shard_index: int) -> str:
    return f"{INDEX_PARTS_DIR}/part-{shard_index:05d}.parquet"


def write_table_atomic(table: pa.Table, path: Path) -> str:
    """Write a parquet file crash-safely; return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    pq.write_table(table, tmp)
    commit_path(tmp, path)
    return sha256_file(path)


def write_index_part(out: str | Path, shard_index: int, table: pa.Table) -> str:
    return write_table_atomic(table, Path(out) / part_name(shard_index))


def merge_index(out: str | Path, shard_indices: Sequence[int]) -> None:
    """Concatenate the parts of `shard_indices`, in order, into `index.parquet`, crash-safely,
    holding one part in memory at a time (memory flat in the number of shards)."""
    out = Path(out)
    tmp = temp_path_for(out / INDEX_NAME)
    with pq.ParquetWriter(tmp, INDEX_SCHEMA) as writer:
        for i in sorted(shard_indices):
            writer.write_table(pq.read_table(out / part_name(i), schema=INDEX_SCHEMA))
    commit_path(tmp, out / INDEX_NAME)


def read_index(out: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """`index.parquet`, or the listed columns of it that exist (a v1 index has no `tokens`)."""
    path = Path(out) / INDEX_NAME
    if columns:
        present = set(pq.read_schema(path).names)
        columns = [c for c in columns if c in present]
    return pq.read_table(path, columns=list(columns) if columns else None)


CONTENT_COLUMNS = ("sample_id", "kept", "shard", "row", "prompt_tokens", "completion_tokens",
                   "tokens")
"""What `kept_contents` reads: enough to index every kept sample without opening its shard."""


def kept_contents(index: pa.Table, out: Path, shards: Sequence[tuple[str, int]]
                  ) -> tuple[list[ShardContents], str | None]:
    """The kept samples of each (shard name, sample count), in row order, from the index alone.

    Returns the contents and None, or what it had and an error naming the first
    shard whose rows the index does not list exactly once each.
    """
    kept = index.filter(index["kept"]).sort_by([("shard", "ascending"), ("row", "ascending")])
    names = np.asarray(kept["shard"].to_numpy(zero_copy_only=False), dtype=object)
    rows = kept["row"].to_numpy()
    prompt = kept["prompt_tokens"].to_numpy().astype(np.int32)
    labelled = kept["completion_tokens"].to_numpy().astype(np.int32)
    # v1 indexes have no `tokens`: their samples are prompt + completion exactly.
    total = (kept["tokens"].to_numpy().astype(np.int32) if "tokens" in kept.column_names
             else prompt + labelled)
    ids = kept["sample_id"].to_pylist()
    contents: list[ShardContents] = []
    for name, count in shards:
        lo, hi = np.searchsorted(names, name, "left"), np.searchsorted(names, name, "right")
        if hi - lo != count or not np.array_equal(rows[lo:hi], np.arange(count)):
            return contents, (f"{name}: the index lists rows {rows[lo:hi][:5].tolist()}... "
                              f"({hi - lo} kept), the manifest says {count} samples")
        contents.append(ShardContents(out / name, ids[lo:hi], total[lo:hi], prompt[lo:hi],
                                      labelled[lo:hi]))
    if len(names) != sum(count for _, count in shards):
        return contents, f"{len(names)} kept samples listed, the manifest's shards hold fewer"
    return contents, None
