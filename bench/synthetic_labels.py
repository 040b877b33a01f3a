"""Synthetic label sets shaped like a real one, for memory-scaling benchmarks.

Takes teacher, tokenizer fingerprint, vocabulary and k from a real output so
that `kd train-student` accepts the synthetic one with the real student, and
fills shards with random tokens and labels of realistic lengths.

    python -c "from bench.synthetic_labels import write_synthetic_labels as w; \
w('/tmp/syn', 'data/labels/demo', 8)"
"""

from __future__ import annotations

from pathlib import Path

from pipeline.store.manifest import read_manifest
from pipeline.store.shard_writer import ShardAttrs
from bench.synthetic_output import write_random_output


def write_synthetic_labels(out: str | Path, like: str | Path, shards: int, per_shard: int = 64,
                           prompt_len: int = 60, comp_len: int = 200) -> Path:
    m = read_manifest(like)
    attrs = ShardAttrs(m.teacher, m.tokenizer_fingerprint, m.vocab_size, m.top_k, {"n": 1})
    write_random_output(Path(out), attrs, shards, per_shard, prompt_len=prompt_len,
                        comp_len=comp_len)
    return Path(out)
