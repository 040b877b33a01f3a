"""`index.parquet`: one row per generated sample, kept or dropped.

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

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store.checksum import commit_file, sha256_file, temp_path_for

INDEX_NAME = "index.parquet"
INDEX_PARTS_DIR = "index"

INDEX_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("prompt_id", pa.string()), ("sample_index", pa.int32()),
    ("kept", pa.bool_()), ("drop_reason", pa.string()),
    ("shard", pa.string()), ("row", pa.int32()),
    ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()),
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
    commit_file(tmp, path)
    return sha256_file(path)


def write_index_part(out: str | Path, shard_index: int, table: pa.Table) -> str:
    return write_table_atomic(table, Path(out) / part_name(shard_index))


def merge_index(out: str | Path, shard_indices: Sequence[int]) -> pa.Table:
    """Concatenate the parts of `shard_indices`, in order, into `index.parquet`."""
    out = Path(out)
    parts = [pq.read_table(out / part_name(i), schema=INDEX_SCHEMA) for i in sorted(shard_indices)]
    table = pa.concat_tables(parts) if parts else INDEX_SCHEMA.empty_table()
    write_table_atomic(table, out / INDEX_NAME)
    return table


def read_index(out: str | Path) -> pa.Table:
    return pq.read_table(Path(out) / INDEX_NAME)
