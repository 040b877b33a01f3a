"""kd export --format parquet: the plain view holds exactly the shards' values."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from conftest import fake_attrs, write_random_output
from pipeline.interop.parquet_view import VIEW_SCHEMA
from pipeline.store.shard_reader import ShardReader
from stages.cli.main import main


@pytest.fixture
def labels(tmp_path):
    write_random_output(tmp_path / "gen", fake_attrs(), 2, 3, seed=1, prefix="g")
    write_random_output(tmp_path / "scored", fake_attrs(), 1, 4, seed=2, prefix="s", scored=True)
    return [tmp_path / "gen", tmp_path / "scored"]


def export(labels, out, *extra):
    args = ["export", "--format", "parquet", "--out", str(out), *extra]
    for d in labels:
        args += ["--labels", str(d)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


def test_view_rows_equal_the_shards(labels, tmp_path):
    export(labels, tmp_path / "view", "--rows-per-file", "4")
    files = sorted((tmp_path / "view").glob("data-*.parquet"))
    assert len(files) == 3  # 10 samples, 4 rows per file
    table = pq.ParquetDataset([str(f) for f in files], schema=VIEW_SCHEMA).read()
    rows = {r["sample_id"]: r for r in table.to_pylist()}
    count = 0
    for d in labels:
        for shard in sorted(d.glob("shard-*.h5")):
            reader = ShardReader(shard)
            for i, sid in enumerate(reader.strings("samples/ids")):
                s, r = reader.sample(i), rows[sid]
                count += 1
                assert r["token_ids"] == s["token_ids"].tolist()
                assert r["prompt_length"] == s["prompt_length"]
                assert r["positions"] == s["positions"].tolist()
                assert r["topk_ids"] == s["topk_ids"].tolist()
                assert np.array_equal(np.array(r["topk_logprobs"], np.float32),
                                      s["topk_logprobs"].astype(np.float32))
                assert np.array_equal(np.array(r["token_logprobs"], np.float32),
                                      s["sampled_logprobs"].astype(np.float32))
    assert count == len(rows) == table.num_rows


def test_hugging_face_datasets_loads_the_view(labels, tmp_path):
    datasets = pytest.importorskip("datasets")
    export(labels, tmp_path / "view")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "view" / "data-*.parquet"),
                               split="train")
    assert len(ds) == 10 and len(ds[0]["topk_ids"][0]) == 4
