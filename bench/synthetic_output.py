"""Random but schema-valid teacher outputs, for tests and benchmarks (never for training; not shipped in the package).

Samples have random tokens, sorted top-k rows with logprobs <= 0 and, when
asked, random hidden states; outputs are complete (shards, index parts,
index.parquet, manifest), so `kd verify` and every reader accept them.

    >>> import tempfile, pathlib
    >>> from pipeline.store.shard_writer import ShardAttrs
    >>> from bench.synthetic_output import write_random_output
    >>> attrs = ShardAttrs("fake", "f" * 64, 1000, 4, {"n": 1})
    >>> write_random_output(pathlib.Path(tempfile.mkdtemp()), attrs, 2, 3).totals()["samples"]
    6
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.store.codecs import hidden_format_named, label_kind_named
from pipeline.store.hidden_basis import fit_basis, write_basis
from pipeline.store.manifest import Manifest, write_manifest
from pipeline.store.sample import Sample
from pipeline.store.sample_index import merge_index, write_index_part
from pipeline.store.text_layout import TextRegion
from pipeline.store.shard_writer import ShardAttrs, write_shard
from pipeline.teacher.label_sampling import sampled_sample
from pipeline.teacher.kept_shard import KEEP_ALL
from pipeline.teacher.sample_filter import filter_samples, index_table
from pipeline.teacher.text_layouts import TokenBytes, generated_layout
from schemas import shard_name



def random_sample(rng: np.random.Generator, prompt_id: str, index: int = 0, vocab: int = 1000,
                  k: int = 4, prompt_len: int | None = None, comp_len: int | None = None,
                  hidden: dict[int, int] | None = None, scored: bool = False) -> Sample:
    """A random sample: sorted top-k rows, logprobs <= 0, hidden states of the given sizes;
    `scored`: labels on the first token after the prompt and a random subset of the rest."""
    p = prompt_len or int(rng.integers(1, 8))
    c = comp_len or int(rng.integers(1, 10))
    positions = None
    if scored:
        rest = np.flatnonzero(rng.random(c - 1) < 0.5) + p + 1
        positions = np.concatenate([[p], rest]).astype(np.int64)
    rows = c if positions is None else len(positions)
    topk_ids, lps = random_topk(rng, rows, vocab, k)
    completion = rng.integers(0, vocab, c)
    if positions is None:
        completion = topk_ids[:, 0]
    else:
        completion[positions - p] = topk_ids[:, 0]
    sample = Sample(prompt_id, index, rng.integers(0, vocab, p).tolist(), completion.tolist(),
                    topk_ids, lps, lps[:, 0].copy(),
                    "scored" if scored else ("stop" if rng.random() < 0.5 else "length"),
                    label_positions=positions, id_prefix="w" if scored else "")
    for layer, size in (hidden or {}).items():
        sample.hidden[layer] = rng.standard_normal((p + c, size)).astype(np.float32)
    return sample


def random_topk(rng: np.random.Generator, rows: int, vocab: int, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, k) distinct ids per row and descending logprobs <= 0."""
    # k distinct ids per row without a per-row permutation of the vocabulary.
    ids = (rng.integers(0, vocab, (rows, 1)) + np.arange(k) * (vocab // k)) % vocab
    return ids, -np.sort(rng.exponential(2.0, size=(rows, k)), axis=1).astype(np.float32)


def relabelled(sample: Sample, rng: np.random.Generator, vocab: int, k: int) -> Sample:
    """`sample` with new random top-k rows at the same positions (tokens kept)."""
    sample.topk_ids, sample.topk_logprobs = random_topk(rng, len(sample.topk_ids), vocab, k)
    sample.sampled_logprobs = sample.topk_logprobs[:, 0].copy()
    return sample


def fitted_attrs(out: Path, attrs: ShardAttrs, samples: list[Sample], manifest: Manifest
                 ) -> ShardAttrs:
    """`attrs` with a pca basis fitted on `samples`, written to the output as the teacher
    stage does (`stages.teacher.hidden.with_basis`)."""
    bases, explained = {}, {}
    for layer in attrs.hidden_layers:
        mean, basis, explained[layer] = fit_basis(
            np.concatenate([s.hidden[layer] for s in samples]), attrs.hidden_rank)
        bases[layer] = (mean, basis)
    manifest.hidden_basis_sha256 = write_basis(out, bases, explained)
    return replace(attrs, hidden_basis=bases, hidden_basis_sha256=manifest.hidden_basis_sha256)


def write_random_output(out: Path, attrs: ShardAttrs, shards: int, per_shard: int, seed: int = 0,
                        prefix: str = "p", prompt_len: int | None = None,
                        comp_len: int | None = None, scored: bool = False,
                        label_seed: int | None = None,
                        student_logprobs: bool = False,
                        token_bytes: TokenBytes | None = None) -> Manifest:
    """Write a complete output directory of random shards and return its manifest
    (`scored`: samples labelled at scattered positions, as score mode writes chats;
    `label_seed`: the same samples as `seed` gives, their labels drawn anew from this
    seed, as a second teacher scoring the same text would label them;
    `student_logprobs`: each label row also gets a random sampling-student logprob;
    `token_bytes` (generated samples): each sample's text layout from these byte strings,
    its prompt one `user` region, its completion the labelled one)."""
    if token_bytes is not None and scored:
        raise ValueError("a random text layout is made for generated samples only")
    rng = np.random.default_rng(seed)
    relabel = None if label_seed is None else np.random.default_rng(label_seed)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(teacher=attrs.teacher, tokenizer_fingerprint=attrs.tokenizer_fingerprint,
                        vocab_size=attrs.vocab_size, top_k=attrs.top_k, complete=True,
                        hidden_layers=list(attrs.hidden_layers), hidden_size=attrs.hidden_size,
                        label_format=attrs.label_format, hidden_format=attrs.hidden_format,
                        label_kind=attrs.label_kind, samples_per_position=attrs.samples_per_position,
                        hidden_rank=attrs.hidden_rank,
                        config={"n": 1}, input_records=shards * per_shard,
                        accepted_prompts=shards * per_shard, planned_samples=shards * per_shard,
                        mode="score" if scored else "generate",
                        text_layout=token_bytes is not None)
    sizes = dict.fromkeys(attrs.hidden_layers, attrs.hidden_size)
    for i in range(shards):
        samples = [random_sample(rng, f"{prefix}{i}-{j}", vocab=attrs.vocab_size, k=attrs.top_k,
                                 prompt_len=prompt_len, comp_len=comp_len, hidden=sizes,
                                 scored=scored)
                   for j in range(per_shard)]
        if relabel is not None:
            samples = [relabelled(s, relabel, attrs.vocab_size, attrs.top_k) for s in samples]
        for s in samples if student_logprobs else ():
            s.student_logprobs = -rng.exponential(1.0, s.label_count).astype(np.float32)
        for s in samples if token_bytes is not None else ():
            s.token_byte_lengths, s.text_regions = generated_layout(
                token_bytes, [], s.prompt_token_ids, s.completion_token_ids)
            s.text_regions.insert(0, TextRegion("user", 0, s.text_regions[0].start, False))
        outcome = filter_samples(samples, KEEP_ALL)
        if hidden_format_named(attrs.hidden_format).needs_basis and attrs.hidden_basis is None:
            attrs = fitted_attrs(out, attrs, samples, manifest)  # fitted on the first shard
        if label_kind_named(attrs.label_kind).drawn:  # as the teacher stage does: filter, then draw
            samples = [sampled_sample(s, attrs.samples_per_position, seed) for s in samples]
        record = write_shard(out / shard_name(i), i, samples, attrs)
        record.index_sha256 = write_index_part(
            out, i, index_table(samples, outcome.metrics, outcome.reasons, record.name))
        record.generated, record.hidden_layers = len(samples), list(attrs.hidden_layers)
        manifest.shards[i] = record
    merge_index(out, range(shards))
    write_manifest(out, manifest)
    return manifest
