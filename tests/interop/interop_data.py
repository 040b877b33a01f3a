"""Label outputs whose top-k rows come from real distributions (softmax of random logits).

`write_random_output`'s rows are sorted but need not sum to <= 1; the interop
tests compare losses with closed forms, so their teacher must be a distribution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.store.manifest import Manifest, write_manifest
from pipeline.store.sample_index import merge_index
from pipeline.store.shard_writer import ShardAttrs
from pipeline.teacher.kept_shard import commit_kept_shard
from bench.synthetic_output import random_sample


def write_distribution_output(out: Path, attrs: ShardAttrs, shards: int, per_shard: int,
                              seed: int, prefix: str, prompt_len: int, comp_len: int,
                              scored: bool = False) -> Manifest:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    n = shards * per_shard
    manifest = Manifest(teacher=attrs.teacher, tokenizer_fingerprint=attrs.tokenizer_fingerprint,
                        vocab_size=attrs.vocab_size, top_k=attrs.top_k, complete=True,
                        config={"n": 1}, input_records=n, accepted_prompts=n, planned_samples=n,
                        mode="score" if scored else "generate")
    for i in range(shards):
        samples = []
        for j in range(per_shard):
            s = random_sample(rng, f"{prefix}{i}-{j}", vocab=attrs.vocab_size, k=attrs.top_k,
                              prompt_len=prompt_len, comp_len=comp_len, scored=scored)
            logits = rng.normal(0, 3, (len(s.topk_ids), attrs.vocab_size))
            lps = logits - np.log(np.exp(logits).sum(1, keepdims=True))
            s.topk_ids = np.argsort(-lps, axis=1)[:, : attrs.top_k]
            s.topk_logprobs = np.take_along_axis(lps, s.topk_ids, 1).astype(np.float32)
            s.sampled_logprobs = s.topk_logprobs[:, 0].copy()
            tokens = np.array(s.token_ids)  # each labelled token is the teacher's top 1
            tokens[s.positions] = s.topk_ids[:, 0]
            cut = len(s.prompt_token_ids)
            s.prompt_token_ids, s.completion_token_ids = tokens[:cut].tolist(), tokens[cut:].tolist()
            samples.append(s)
        commit_kept_shard(out, manifest, i, samples, attrs)
    merge_index(out, range(shards))
    write_manifest(out, manifest)
    return manifest


def originals(dirs) -> dict[str, dict]:
    """Every sample of the outputs by sample id, as the reader gives it (arrays copied)."""
    from pipeline.store.shard_reader import ShardReader

    out = {}
    for d in dirs:
        for shard in sorted(Path(d).glob("shard-*.h5")):
            reader = ShardReader(shard)
            for i, sid in enumerate(reader.strings("samples/ids")):
                out[sid] = {k: np.array(v) for k, v in reader.sample(i).items()}
    return out
