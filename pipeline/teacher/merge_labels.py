"""The mixture of several teachers' labels for one shard (`kd merge-labels`).

The sources must label the same samples (see `pipeline.store.output_alignment`);
each position's label is mixed by `pipeline.store.label_mixture` (rule `mean` or
`geometric`); hidden states are not carried (they are one teacher's).
`stages.teacher.merge_labels` runs the command shard by shard.
"""

from __future__ import annotations

import numpy as np

from pipeline.store.label_mixture import mix_labels
from pipeline.store.output_alignment import MisalignedOutputs, SampleLocator, sample_difference
from pipeline.store.sample import Sample
from pipeline.store.shard_reader import read_samples
from schemas.merge_config import MergeConfig


def merged_shard(index: int, locators: list[SampleLocator], cfg: MergeConfig, vocab: int,
                 k: int) -> list[Sample]:
    """The first source's samples of shard `index`, labelled with the teachers' mixture."""
    ref = locators[0]
    samples = read_samples(ref.reader(index))
    for row, s in enumerate(samples):
        s.hidden = {}
        rows = [loc.sample_like(s.sample_id, index, row) for loc in locators]
        for loc, other in zip(locators[1:], rows[1:]):
            problem = sample_difference(s.sample_id, rows[0], other, ref.out, loc.out)
            if problem:
                raise MisalignedOutputs(f"kd merge-labels: {problem}")
        s.topk_ids, lps, sampled = mix_labels(
            [np.asarray(r["topk_ids"]) for r in rows],
            [np.asarray(r["topk_logprobs"], np.float32) for r in rows], cfg.weight_values,
            vocab, k, cfg.mix_rule, [np.asarray(r["sampled_logprobs"]) for r in rows])
        # float16 storage of a logprob that rounds above 0 would fail kd verify
        s.topk_logprobs = np.minimum(lps, 0.0).astype(np.float32)
        s.sampled_logprobs = np.minimum(sampled, 0.0).astype(np.float32)
    return samples
