"""Teacher stage: vLLM generates completions and top-k soft labels into HDF5 shards.

Wiring only: prompts come from `pipeline.prompts`, soft labels from
`pipeline.soft_labels`, scheduling from `pipeline.shard_scheduler`, files from
`pipeline.shard_writer` and `pipeline.manifest`. This module (with the CLI) is
the only place that imports vLLM.

CPU-sized example (the embedded teacher, a few prompts, float32):

    kd teacher-labels --prompts data/prompts/demo.jsonl --out data/labels/tiny \
        --max-tokens 32 --top-k 20 --dtype float32 --shard-size 8 --limit 16 --enforce-eager

A rerun of the same command reuses every committed shard whose checksum
verifies and generates only what is missing.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.background_writer import BackgroundWriter
from pipeline.checksum import remove_stale_temps, sha256_file, write_text_atomic
from pipeline.fingerprint import tokenizer_fingerprint
from pipeline.manifest import Manifest, ManifestError, read_manifest, write_manifest
from pipeline.prompts import Prompt, PromptBatch, load_prompts, write_rejects
from pipeline.sample import Sample
from pipeline.seeding import seed_for_prompt
from pipeline.shard_scheduler import ShardPlan, run_shards
from pipeline.shard_writer import ShardAttrs, write_shard
from pipeline.soft_labels import split_flat_logprobs
from pipeline.verify import verify_shard
from schemas import CONFIG_NAME, REJECTS_NAME, shard_name
from schemas.teacher_config import ConfigError, TeacherConfig

# vLLM's CPU backend sizes its KV cache from this fraction of *system* memory
# by default and refuses to start when the machine has less free; a fixed
# size is predictable on a shared 2-core box.
CPU_KV_CACHE_GIB = 2.0


@dataclass
class RunSummary:
    """What one `kd teacher-labels` run did."""

    out: Path
    shards_total: int
    shards_reused: int
    shards_written: int
    samples: int
    completion_tokens: int
    seconds: float
    manifest: Manifest

    def line(self) -> str:
        m, t = self.manifest, self.manifest.totals()
        rate = self.completion_tokens / self.seconds if self.seconds else 0.0
        return (f"teacher-labels: {m.accepted_prompts} prompts accepted, {m.rejected_prompts} rejected; "
                f"{self.shards_written} shard(s) written, {self.shards_reused} reused; "
                f"{t['samples']} samples, {t['completion_tokens']} completion tokens, "
                f"{t['bytes'] / max(t['completion_tokens'], 1):.0f} B/token; "
                f"{rate:.0f} generated tok/s -> {self.out}")


def render_prompt_tokens(tokenizer: Any):
    """Chat template + tokenization as a pure `messages -> ids` function."""
    def tokenize(messages: list[dict[str, str]]) -> list[int]:
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
        else:  # base models: plain concatenation, documented in the README
            text = "\n\n".join(m["content"] for m in messages)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenize


def plan_shards(prompts: list[Prompt], cfg: TeacherConfig) -> list[ShardPlan]:
    """Deterministic shard membership: consecutive runs of whole prompts, in input order."""
    per = cfg.prompts_per_shard
    return [ShardPlan(i // per, [(p.id, p.token_ids, seed_for_prompt(cfg.seed, p.id))
                                 for p in prompts[i:i + per]])
            for i in range(0, len(prompts), per)]


def samples_from_output(prompt_ids: list[int], prompt_id: str, output: Any, k: int) -> list[Sample]:
    """Convert one vLLM RequestOutput (n completions) into Samples."""
    samples = []
    for c in sorted(output.outputs, key=lambda c: c.index):
        lp = c.logprobs
        top_ids, top_lps, sampled = split_flat_logprobs(
            lp.token_ids, lp.logprobs, lp.start_indices, lp.end_indices, c.token_ids, k)
        samples.append(Sample(prompt_id, c.index, list(prompt_ids), list(c.token_ids),
                              top_ids, top_lps, sampled, str(c.finish_reason)))
    return samples


class VllmEngine:
    """Adapter from vLLM's `LLM` to the scheduler's add/step/has_unfinished engine."""

    def __init__(self, llm: Any, cfg: TeacherConfig):
        from vllm import SamplingParams

        self._llm, self._cfg, self._params = llm, cfg, SamplingParams
        self._keys: dict[str, str] = {}

    def add(self, key: str, prompt_token_ids: list[int], seed: int) -> None:
        cfg = self._cfg
        params = self._params(
            n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
            seed=seed, logprobs=cfg.top_k, detokenize=False, flat_logprobs=True)
        (rid,) = self._llm.enqueue([{"prompt_token_ids": prompt_token_ids}], params,
                                   use_tqdm=False)
        # enqueue() returns the internal id "<counter>-<8 random chars>"; the
        # outputs carry the external "<counter>" part only.
        self._keys[rid.split("-", 1)[0]] = key

    def step(self) -> list[tuple[str, Any]]:
        return [(self._keys.pop(o.request_id), o)
                for o in self._llm.llm_engine.step() if o.finished]

    def has_unfinished(self) -> bool:
        return self._llm.llm_engine.has_unfinished_requests()


def build_llm(cfg: TeacherConfig) -> Any:
    import torch
    from vllm import LLM

    kv_gib = cfg.kv_cache_gib
    if kv_gib is None and not torch.cuda.is_available():
        kv_gib = CPU_KV_CACHE_GIB
    extra = {"kv_cache_memory_bytes": int(kv_gib * 2**30)} if kv_gib else {}
    return LLM(
        model=cfg.teacher, dtype=cfg.dtype, max_model_len=cfg.max_model_len, seed=cfg.seed,
        tensor_parallel_size=cfg.tensor_parallel_size,
        pipeline_parallel_size=cfg.pipeline_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        max_logprobs=max(cfg.top_k, 20), logprobs_mode="raw_logprobs",
        enforce_eager=cfg.enforce_eager,
        # Per-request seeds crash the CPU build once a prefill is split across
        # steps ("CPU Generator does not use offset"); whole prefills avoid it.
        enable_chunked_prefill=False, **extra)


def open_output(cfg: TeacherConfig, fresh: Manifest) -> Manifest:
    """Return the manifest to extend: the existing one if its settings match, else a fresh one."""
    out = Path(cfg.out)
    try:
        old = read_manifest(out)
    except ManifestError:
        return fresh
    mismatch = [k for k, v in cfg.identity().items() if old.config.get(k) != v]
    if old.tokenizer_fingerprint != fresh.tokenizer_fingerprint:
        mismatch.append("tokenizer")
    if old.prompts_sha256 != fresh.prompts_sha256:
        mismatch.append("prompts (file content)")
    if mismatch and not cfg.overwrite:
        raise ConfigError(
            f"{out} was generated with different {', '.join(mismatch)}; pass --overwrite to "
            "replace it, or choose another --out")
    if mismatch:
        shutil.rmtree(out)
        out.mkdir(parents=True)
        return fresh
    fresh.shards = old.shards
    return fresh


def reusable_shards(out: Path, manifest: Manifest) -> set[int]:
    """Shards of a previous run whose files pass every check; the rest are regenerated."""
    good = set()
    for index in sorted(manifest.shards):
        problems = verify_shard(out / shard_name(index), index, manifest)
        if problems:
            tqdm.write(f"regenerating {shard_name(index)}: {problems[0]}")
        else:
            good.add(index)
    return good


def run_teacher_labels(cfg: TeacherConfig) -> RunSummary:
    """Run the teacher stage end to end; returns its summary."""
    from transformers import AutoConfig, AutoTokenizer

    cfg.validate()
    start = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tokenizer = AutoTokenizer.from_pretrained(cfg.teacher)
    vocab_size = int(AutoConfig.from_pretrained(cfg.teacher).vocab_size)
    batch: PromptBatch = load_prompts(cfg.prompts, render_prompt_tokens(tokenizer),
                                      cfg.max_model_len - cfg.max_tokens, cfg.system_prompt, cfg.limit)
    fresh = Manifest(
        teacher=cfg.teacher, tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        vocab_size=vocab_size, top_k=cfg.top_k, config=cfg.to_dict() | cfg.identity(),
        prompts_sha256=sha256_file(cfg.prompts), input_records=batch.records_read,
        accepted_prompts=len(batch.accepted), rejected_prompts=len(batch.rejects),
        rejects_by_reason=batch.rejects_by_reason())
    manifest = open_output(cfg, fresh)
    plans = plan_shards(batch.accepted, cfg)
    keep = reusable_shards(out, manifest)
    manifest.shards = {i: r for i, r in manifest.shards.items() if i in keep}
    manifest.complete = False
    write_rejects(out / REJECTS_NAME, batch.rejects)
    write_text_atomic(out / CONFIG_NAME, json.dumps(manifest.config, indent=1) + "\n")
    write_manifest(out, manifest)
    todo = [p for p in plans if p.index not in keep]
    written, tokens = generate_into(out, cfg, manifest, todo, batch, vocab_size)
    manifest.complete = True
    write_manifest(out, manifest)
    return RunSummary(out, len(plans), len(keep), written, manifest.totals()["samples"],
                      tokens, time.time() - start, manifest)


def generate_into(out: Path, cfg: TeacherConfig, manifest: Manifest, todo: list[ShardPlan],
                  batch: PromptBatch, vocab_size: int) -> tuple[int, int]:
    """Generate the shards in `todo` and commit each into `manifest`; returns (shards, tokens)."""
    if not todo:
        return 0, 0
    prompt_ids = {p.id: p.token_ids for p in batch.accepted}
    attrs = ShardAttrs(cfg.teacher, manifest.tokenizer_fingerprint, vocab_size, cfg.top_k,
                       cfg.sampling())
    llm = build_llm(cfg)
    gen_bar = tqdm(total=sum(len(p.requests) for p in todo) * cfg.n, desc="generate",
                   unit="sample", dynamic_ncols=True)
    write_bar = tqdm(total=len(todo), desc="write", unit="shard", dynamic_ncols=True)

    def write(job: tuple[int, list[Sample]]) -> tuple[int, Any]:
        index, samples = job
        return index, write_shard(out / shard_name(index), index, samples, attrs)

    def commit(result: tuple[int, Any]) -> None:
        index, record = result
        manifest.shards[index] = record
        write_manifest(out, manifest)
        write_bar.update(1)

    tokens = 0
    try:
        with BackgroundWriter(write, commit) as writer:
            for plan, outputs in run_shards(VllmEngine(llm, cfg), todo, cfg.shards_in_flight):
                samples = [s for pid, _, _ in plan.requests
                           for s in samples_from_output(prompt_ids[pid], pid, outputs[pid],
                                                        cfg.top_k)]
                tokens += sum(s.completion_length for s in samples)
                gen_bar.update(len(samples))
                writer.submit((plan.index, samples))
    finally:
        gen_bar.close()
        write_bar.close()
        shutdown_llm(llm)
    return len(todo), tokens


def shutdown_llm(llm: Any) -> None:
    """Stop vLLM's engine core process and free its memory before anything else loads."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception as exc:  # shutdown is best effort; the process exit reaps the core
        print(f"warning: vLLM shutdown: {exc}", file=sys.stderr)
    del llm
    import gc

    gc.collect()

