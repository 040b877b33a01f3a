"""Write exported rows as Parquet files, each committed atomically, batch by batch.

Rows arrive as dicts of numpy arrays (1-D: a list column; 2-D: a list of
lists). A batch becomes one Arrow record batch built from the arrays' buffers
(no Python lists); every `rows_per_file` rows close a file `data-NNNNN.parquet`,
written under a temporary name and renamed, so a crash leaves whole files only.

    >>> import numpy as np, pyarrow as pa, tempfile, pathlib
    >>> from pipeline.interop.table_sink import TableSink
    >>> schema = pa.schema([("ids", pa.list_(pa.int32())), ("rows", pa.list_(pa.list_(pa.float32())))])
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> with TableSink(out, schema, rows_per_file=2) as sink:
    ...     for n in (1, 2, 3):
    ...         sink.add({"ids": np.arange(n), "rows": np.zeros((n, 2))})
    >>> sink.files, sink.rows
    (['data-00000.parquet', 'data-00001.parquet'], 3)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store.atomic_commit import commit_path, temp_path_for


def list_column(arrays: list[np.ndarray], field_type: pa.DataType) -> pa.Array:
    """Arrow list (1-D arrays) or list-of-lists (2-D arrays) column from numpy arrays."""
    lengths = np.array([len(a) for a in arrays], np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    inner = field_type.value_type
    if pa.types.is_list(inner):
        # every row of a column has the same width (k ids, or a codec's bytes per row)
        flat = np.concatenate([np.asarray(a).reshape(len(a), -1) for a in arrays])
        width = flat.shape[1] if flat.ndim == 2 else 0
        inner_offsets = pa.array((np.arange(len(flat) + 1) * width).astype(np.int32))
        leaves = pa.array(flat.ravel().astype(inner.value_type.to_pandas_dtype()), inner.value_type)
        values = pa.ListArray.from_arrays(inner_offsets, leaves, type=inner)
    else:
        flat = np.concatenate(arrays) if arrays else np.zeros(0)
        values = pa.array(np.asarray(flat).astype(inner.to_pandas_dtype()), inner)
    return pa.ListArray.from_arrays(offsets, values, type=field_type)


def record_batch(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.RecordBatch:
    columns = []
    for field in schema:
        values = [row[field.name] for row in rows]
        columns.append(list_column(values, field.type) if pa.types.is_list(field.type)
                       else pa.array(values, field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class TableSink:
    """Parquet files of `rows_per_file` rows in `out`, appended `batch_rows` at a time."""

    def __init__(self, out: str | Path, schema: pa.Schema, rows_per_file: int = 10_000,
                 batch_rows: int = 64):
        self.out, self.schema = Path(out), schema
        self.rows_per_file, self.batch_rows = rows_per_file, batch_rows
        self.out.mkdir(parents=True, exist_ok=True)
        self.files: list[str] = []
        self.rows = 0
        self._pending: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_file = 0

    def add(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        self.rows += 1
        if len(self._pending) >= min(self.batch_rows, self.rows_per_file - self._in_file):
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            self.files.append(f"data-{len(self.files):05d}.parquet")
            self._writer = pq.ParquetWriter(temp_path_for(self.out / self.files[-1]), self.schema)
        self._writer.write_batch(record_batch(self._pending, self.schema))
        self._in_file += len(self._pending)
        self._pending = []
        if self._in_file >= self.rows_per_file:
            self._commit()

    def _commit(self) -> None:
        self._writer.close()
        self._writer, self._in_file = None, 0
        final = self.out / self.files[-1]
        commit_path(temp_path_for(final), final)

    def close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._commit()

    def __enter__(self) -> "TableSink":
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.close()
        elif self._writer is not None:  # keep committed files, drop the torn one
            self._writer.close()
            temp_path_for(self.out / self.files.pop()).unlink(missing_ok=True)
