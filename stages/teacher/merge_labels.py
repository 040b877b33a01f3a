"""`kd merge-labels`: one output whose labels are the weighted mixture of several teachers'.

The sources must label the same samples (see `pipeline.store.output_alignment`);
each position's label is mixed by `pipeline.store.label_mixture` (rule `mean` or
`geometric`). The first source's sharding and sample order are kept; hidden
states are not carried (they are one teacher's). The output is built under a
temporary name and renamed when complete; its manifest (mode `merged`) records
every source directory, its teacher, weight and manifest sha256, and the
`teacher` field names the first source's teacher (the model `--student
from-teacher` derives from). CPU-sized example on two synthetic outputs:

    PYTHONPATH=. python -m stages.cli.main merge-labels --labels data/labels/a \
        --labels data/labels/b --weights 0.7,0.3 --out data/labels/merged
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.store.atomic_commit import commit_path, fresh_temp_dir, sha256_file
from pipeline.store.manifest import Manifest, manifest_path, read_manifest, write_manifest
from pipeline.store.output_alignment import (MisalignedOutputs, SampleLocator,
                                             first_id_difference, first_manifest_difference)
from pipeline.store.sample_index import merge_index
from pipeline.store.shard_writer import ShardAttrs
from pipeline.store.tokenizer_files import copy_tokenizer_files, stored_tokenizer_dir
from pipeline.teacher.kept_shard import commit_kept_shard
from pipeline.teacher.merge_labels import merged_shard
from schemas.merge_config import MergeConfig


@dataclass
class MergeSummary:
    out: str
    sources: int
    samples: int
    labelled: int
    seconds: float

    def line(self) -> str:
        return (f"merge-labels: {self.sources} teachers, {self.samples} samples, {self.labelled} "
                f"labelled positions mixed in {self.seconds:.1f} s -> {self.out}")


def open_sources(cfg: MergeConfig) -> tuple[dict[str, Manifest], list[SampleLocator]]:
    """Manifests and sample locations of the sources; MisalignedOutputs at the first difference."""
    manifests = {d: read_manifest(d) for d in cfg.labels}
    problem = first_manifest_difference(manifests)
    if problem:
        raise MisalignedOutputs(f"kd merge-labels: {problem}")
    locators = [SampleLocator(d, m) for d, m in manifests.items()]
    for other in locators[1:]:
        problem = first_id_difference(locators[0], other)
        if problem:
            raise MisalignedOutputs(f"kd merge-labels: {problem}")
    return manifests, locators


def run_merge(cfg: MergeConfig) -> MergeSummary:
    """Write the mixture of `cfg.labels` to `cfg.out`."""
    cfg.validate()
    start = time.perf_counter()
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise MisalignedOutputs(f"--out {out}: exists and is not empty; choose a new directory")
    manifests, locators = open_sources(cfg)
    ref = next(iter(manifests.values()))
    k = cfg.top_k or max(m.top_k for m in manifests.values())
    if k > sum(m.top_k for m in manifests.values()):
        raise MisalignedOutputs(f"--top-k {k} is more than the {sum(m.top_k for m in manifests.values())} "
                                "ids the sources store together")
    sources = [{"labels": d, "teacher": m.teacher, "weight": w, "top_k": m.top_k,
                "manifest_sha256": sha256_file(manifest_path(d))}
               for (d, m), w in zip(manifests.items(), cfg.weight_values)]
    sampling = {"mode": "merged", "mix_rule": cfg.mix_rule,
                "sources": [{"teacher": s["teacher"], "weight": s["weight"]} for s in sources]}
    attrs = ShardAttrs(ref.teacher, ref.tokenizer_fingerprint, ref.vocab_size, k, sampling,
                       vocab_fingerprint=ref.vocab_fingerprint,
                       special_tokens_fingerprint=ref.special_tokens_fingerprint)
    manifest = Manifest(teacher=ref.teacher, tokenizer_fingerprint=ref.tokenizer_fingerprint,
                        vocab_size=ref.vocab_size, top_k=k, mode="merged",
                        teacher_num_layers=ref.teacher_num_layers, text_layout=ref.text_layout,
                        vocab_fingerprint=ref.vocab_fingerprint,
                        special_tokens_fingerprint=ref.special_tokens_fingerprint,
                        special_tokens=ref.special_tokens,
                        config={"mix_rule": cfg.mix_rule, "top_k": k, "sources": sources})
    tmp = fresh_temp_dir(out)
    stored = stored_tokenizer_dir(next(iter(manifests)))
    manifest.tokenizer_files = copy_tokenizer_files(stored, tmp) if stored else {}
    for index in range(len(locators[0].paths)):  # shard by shard: memory flat in their number
        commit_kept_shard(tmp, manifest, index,
                          merged_shard(index, locators, cfg, ref.vocab_size, k), attrs)
    samples = manifest.totals()["samples"]
    manifest.input_records = manifest.accepted_prompts = manifest.planned_samples = samples
    manifest.complete = True
    merge_index(tmp, sorted(manifest.shards))
    write_manifest(tmp, manifest)
    commit_path(tmp, out)
    return MergeSummary(str(out), len(sources), samples, manifest.totals()["completion_tokens"],
                        time.perf_counter() - start)
