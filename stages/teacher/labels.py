"""Teacher stage: vLLM writes top-k soft labels, of its own completions or of given text, into HDF5 shards.

Wiring only: prompts come from `pipeline.teacher.prompts`, soft labels from
`pipeline.teacher.soft_labels`, scheduling from `pipeline.teacher.shard_scheduler`, files from
`pipeline.store.shard_writer` and `pipeline.store.manifest`. This module (with the CLI) is
the only place that imports vLLM.

CPU-sized example (the embedded teacher, a few prompts, float32):

    kd teacher-labels --prompts data/prompts/demo.jsonl --out data/labels/tiny \
        --max-tokens 32 --top-k 20 --dtype float32 --shard-size 8 --limit 16 --enforce-eager

A rerun of the same command reuses every committed shard whose checksum
verifies and generates only what is missing. `--mode score` labels given text
instead (`stages.teacher.scoring`); everything else is shared.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from pipeline.store.atomic_commit import remove_stale_temps, sha256_file, write_text_atomic
from pipeline.store.codecs import hidden_format_named, label_kind_named
from pipeline.store.fingerprint import tokenizer_fingerprint
from pipeline.store.tokenizer_files import copy_tokenizer_files
from stages.cli.model_files import require_model_dir
from pipeline.store.tokenizer_identity import TokenizerIdentity, identity_of
from pipeline.store.manifest import Manifest, ManifestError, read_manifest, write_manifest
from pipeline.store.output_lock import LOCK_NAME, OutputLock
from pipeline.store.sample import Sample
from pipeline.store.sample_index import INDEX_PARTS_DIR, merge_index, write_index_part
from pipeline.store.shard_writer import ShardAttrs, ShardRecord, write_shard
from pipeline.store.verify import check_index_part, verify_shard
from pipeline.teacher.background_writer import BackgroundWriter
from pipeline.teacher.label_sampling import sampled_sample
from pipeline.teacher.partition import owned_by
from pipeline.teacher.prompts import Prompt, load_prompts, require_accepted, write_rejects
from pipeline.teacher.sample_filter import FilterOutcome, filter_samples, index_table
from pipeline.teacher.seeding import seed_for_prompt
from pipeline.teacher.shard_scheduler import ShardPlan, run_shards
from pipeline.teacher.teacher_context import context_summary
from pipeline.teacher.text_layouts import TokenBytes, generated_layout, locate_messages
from pipeline.teacher.soft_labels import split_flat_logprobs
from schemas import CONFIG_NAME, REJECTS_NAME, shard_name
from schemas.teacher_config import ConfigError, TeacherConfig
from stages.cli.preemption import Preempted, PreemptionGuard
from stages.teacher.hidden import add_hidden_states, wanted_layers
from stages.teacher.label_job import LabelJob
from stages.teacher.scoring import score_engine_args, score_job

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
    generation: "GenerationStats"
    hidden_seconds: float
    seconds: float
    manifest: Manifest

    def line(self) -> str:
        m, t, g = self.manifest, self.manifest.totals(), self.generation
        dropped = ", ".join(f"{k} {v}" for k, v in m.dropped_by_reason().items()) or "none"
        made, tokens = ("generated", "completion") if m.mode == "generate" else ("scored", "labelled")
        return (f"teacher-labels: {m.accepted_prompts} records accepted, {m.rejected_prompts} rejected; "
                f"{self.shards_written} shard(s) written, {self.shards_reused} reused; "
                f"{t['samples']} of {t['generated']} samples kept (dropped: {dropped}); "
                f"{t['completion_tokens']} {tokens} tokens, "
                f"{t['bytes'] / max(t['completion_tokens'], 1):.0f} B/token; "
                f"{g.tokens_per_second:.0f} {made} tok/s -> {self.out}")


@dataclass
class GenerationStats:
    """Throughput of the generation (or scoring) loop alone (engine start excluded)."""

    samples: int = 0
    completion_tokens: int = 0
    """Labelled tokens: generated completions, or the scored positions."""
    non_finite: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0


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
    return [ShardPlan(i // per, [(p.id, p.engine_token_ids, seed_for_prompt(cfg.seed, p.id))
                                 for p in prompts[i:i + per]])
            for i in range(0, len(prompts), per)]


def located_prompt_tokens(tokenizer: Any, tb: TokenBytes):
    """`render_prompt_tokens`, refusing a prompt whose messages its text layout cannot locate."""
    render = render_prompt_tokens(tokenizer)

    def tokenize(messages: list[dict[str, str]]) -> list[int]:
        ids = render(messages)
        locate_messages(tb.text(ids), messages)  # RecordError: the record is rejected, named
        return ids
    return tokenize


def generate_job(cfg: TeacherConfig, tokenizer: Any) -> LabelJob:
    """Generate mode's prompts, shard plans, sampling and sample conversion."""
    tb = TokenBytes.of(tokenizer)
    batch = load_prompts(cfg.prompts, located_prompt_tokens(tokenizer, tb),
                         cfg.max_model_len - cfg.max_tokens, cfg.system_prompt, cfg.limit,
                         owns=owned_by(cfg.worker_index, cfg.num_workers),
                         teacher_system_prompt=cfg.teacher_system_prompt)
    prompts = {p.id: p for p in batch.accepted}
    contexts = {p.id: json.dumps(p.teacher_messages, ensure_ascii=False)
                for p in batch.accepted if p.teacher_messages is not None}

    def params(seed: int) -> Any:
        from vllm import SamplingParams

        return SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                              max_tokens=cfg.max_tokens, seed=seed, logprobs=cfg.engine_k,
                              detokenize=False, flat_logprobs=True)

    def to_samples(plan: ShardPlan, outputs: dict[str, Any]) -> list[Sample]:
        samples = [s for pid, _, _ in plan.requests
                   for s in samples_from_output(prompts[pid].token_ids, pid, outputs[pid],
                                                cfg.engine_k)]
        for s in samples:
            prompt = prompts[s.prompt_id]
            s.token_byte_lengths, s.text_regions = generated_layout(
                tb, prompt.messages, s.prompt_token_ids, s.completion_token_ids)
            s.teacher_context = contexts.get(s.prompt_id)
        return samples

    return LabelJob(batch, plan_shards(batch.accepted, cfg), len(batch.accepted) * cfg.n,
                    params, to_samples, contexts)


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

    def __init__(self, llm: Any, sampling_params: Callable[[int], Any]):
        self._llm, self._params = llm, sampling_params
        self._keys: dict[str, str] = {}

    def add(self, key: str, prompt_token_ids: list[int], seed: int) -> None:
        (rid,) = self._llm.enqueue([{"prompt_token_ids": prompt_token_ids}], self._params(seed),
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
    dtype = cfg.dtype
    if dtype == "auto" and not torch.cuda.is_available():
        # Measured here: bf16 on a CPU without AMX falls back from oneDNN to
        # plain torch matmuls, ~10x slower than float32 for the 135M teacher.
        dtype = "float32"
    if cfg.mode == "score":
        extra |= score_engine_args(cfg, teacher_shape(cfg.teacher)[0], 4 if dtype == "float32" else 2)
    else:
        # Per-request seeds crash the CPU build once a prefill is split across
        # steps ("CPU Generator does not use offset"); whole prefills avoid it.
        extra["enable_chunked_prefill"] = False
    return LLM(
        model=cfg.teacher, dtype=dtype, max_model_len=cfg.max_model_len, seed=cfg.seed,
        tensor_parallel_size=cfg.tensor_parallel_size,
        pipeline_parallel_size=cfg.pipeline_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        max_logprobs=max(cfg.engine_k, 20), logprobs_mode="raw_logprobs",
        enforce_eager=cfg.enforce_eager, **extra)


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
    if old.schema_version != fresh.schema_version:
        mismatch.append(f"schema version (v{old.schema_version}; this build writes "
                        f"v{fresh.schema_version}: kd add-text-layout upgrades a complete v2 output)")
    if mismatch and not cfg.overwrite:
        raise ConfigError(
            f"{out} was generated with different {', '.join(mismatch)}; pass --overwrite to "
            "replace it, or choose another --out")
    if mismatch:
        clear_output(out)
        return fresh
    fresh.shards = old.shards
    if not old.vocab_fingerprint:
        # Shards of an earlier build carry no two-part identity: resuming keeps them valid;
        # readers derive the identity from the stored tokenizer files instead.
        fresh.set_tokenizer_identity(TokenizerIdentity("", "", ()))
    # The pca basis the kept shards' coefficients are on (a refit would differ).
    fresh.hidden_basis_sha256 = old.hidden_basis_sha256
    return fresh


def clear_output(out: Path) -> None:
    """Delete an output's contents for --overwrite, keeping the writer lock this run holds."""
    for entry in out.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def reusable_shards(out: Path, manifest: Manifest) -> set[int]:
    """Shards of a previous run whose shard and index files pass every check; the rest are redone."""
    good = set()
    for index in sorted(manifest.shards):
        problems = verify_shard(out / shard_name(index), index, manifest)[0]
        problems += check_index_part(out, index, manifest.shards[index].index_sha256)
        if problems:
            tqdm.write(f"regenerating {shard_name(index)}: {problems[0]}")
        else:
            good.add(index)
    return good


def teacher_shape(teacher: str) -> tuple[int, int, int]:
    """(vocab size, layers, hidden size) of the teacher, from its config alone."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(teacher)
    text = getattr(config, "text_config", None) or config
    return int(text.vocab_size), int(text.num_hidden_layers), int(text.hidden_size)


class EngineSource:
    """Builds the vLLM engine when generation first needs it and shuts it down right after.

    The benchmark subclasses it to hand one warm engine to several runs.
    """

    def __init__(self, cfg: TeacherConfig):
        self.cfg, self.llm = cfg, None

    def get(self) -> Any:
        if self.llm is None:
            self.llm = build_llm(self.cfg)
        return self.llm

    def release(self) -> None:
        if self.llm is not None:
            shutdown_llm(self.llm)
            self.llm = None


def fresh_manifest(cfg: TeacherConfig, tokenizer: Any, job: LabelJob,
                   layers: list[int]) -> Manifest:
    """The manifest this run would start from: teacher, tokenizer, config and record accounting."""
    vocab_size, num_layers, hidden_size = teacher_shape(cfg.teacher)
    batch = job.batch
    manifest = Manifest(
        mode=cfg.mode, planned_samples=job.planned_samples,
        teacher=cfg.teacher, tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        vocab_size=vocab_size, top_k=cfg.top_k, config=cfg.to_dict() | cfg.identity(),
        prompts_sha256=sha256_file(cfg.prompts), input_records=batch.records_read,
        accepted_prompts=len(batch.accepted), rejected_prompts=len(batch.rejects),
        rejects_by_reason=batch.rejects_by_reason(), hidden_layers=layers,
        hidden_size=hidden_size if layers else 0, teacher_num_layers=num_layers,
        label_format=cfg.label_format, hidden_format=cfg.hidden_format,
        label_kind=cfg.label_kind,
        hidden_rank=cfg.hidden_rank if hidden_format_named(cfg.hidden_format).needs_basis else 0,
        samples_per_position=(cfg.samples_per_position
                              if label_kind_named(cfg.label_kind).drawn else 0),
        text_layout=True,
        teacher_context=context_summary(cfg.teacher_system_prompt, job.teacher_contexts))
    manifest.set_tokenizer_identity(identity_of(tokenizer))
    return manifest


def run_teacher_labels(cfg: TeacherConfig, engine: EngineSource | None = None) -> RunSummary:
    """Run the teacher stage end to end, holding the output's writer lock; returns its summary."""
    cfg.validate()
    if not Path(cfg.prompts).is_file():
        raise ConfigError(f"--prompts {cfg.prompts}: no such file")
    require_model_dir(cfg.teacher, "--teacher")
    with OutputLock(cfg.out):
        return label_output(cfg, engine or EngineSource(cfg))


def label_output(cfg: TeacherConfig, engine: EngineSource) -> RunSummary:
    """Generate what the output lacks, add hidden states, and complete the manifest."""
    from transformers import AutoTokenizer

    start = time.time()
    out = Path(cfg.out)
    remove_stale_temps(out)
    remove_stale_temps(out / INDEX_PARTS_DIR)
    tokenizer = AutoTokenizer.from_pretrained(cfg.teacher)
    layers = wanted_layers(cfg, teacher_shape(cfg.teacher)[1])
    job = (score_job if cfg.mode == "score" else generate_job)(cfg, tokenizer)
    manifest = open_output(cfg, fresh_manifest(cfg, tokenizer, job, layers))
    manifest.tokenizer_files = copy_tokenizer_files(cfg.teacher, out)
    plans = job.plans
    keep = reusable_shards(out, manifest)
    manifest.shards = {i: r for i, r in manifest.shards.items() if i in keep}
    manifest.complete = False
    write_rejects(out / REJECTS_NAME, job.batch.rejects)
    require_accepted(job.batch, cfg.prompts, out / REJECTS_NAME)
    write_text_atomic(out / CONFIG_NAME, json.dumps(manifest.config, indent=1) + "\n")
    write_manifest(out, manifest)
    attrs = ShardAttrs(cfg.teacher, manifest.tokenizer_fingerprint, manifest.vocab_size, cfg.top_k,
                       cfg.sampling(), label_format=cfg.label_format,
                       hidden_format=cfg.hidden_format, **sampled_attrs(cfg),
                       hidden_rank=manifest.hidden_rank,
                       vocab_fingerprint=manifest.vocab_fingerprint,
                       special_tokens_fingerprint=manifest.special_tokens_fingerprint)
    todo = [p for p in plans if p.index not in keep]
    with PreemptionGuard() as guard:
        stats = generate_into(out, cfg, manifest, todo, job, attrs, guard, engine)
        hidden_start = time.time()
        if layers and not guard.requested:
            add_hidden_states(out, cfg, manifest,
                              replace(attrs, hidden_layers=tuple(layers),
                                      hidden_size=manifest.hidden_size),
                              lambda: guard.requested)
        hidden_seconds = time.time() - hidden_start
        if guard.requested:
            raise Preempted(f"SIGTERM: stopped after committing {len(manifest.shards)} of "
                            f"{len(plans)} shard(s) to {out}")
    merge_index(out, sorted(manifest.shards))
    manifest.complete = True
    write_manifest(out, manifest)
    return RunSummary(out, len(plans), len(keep), len(todo), stats, hidden_seconds,
                      time.time() - start, manifest)


def sampled_attrs(cfg: TeacherConfig) -> dict[str, Any]:
    """The shard attributes of --label-kind sampled (none for top-k labels)."""
    if not label_kind_named(cfg.label_kind).drawn:
        return {}
    return {"label_kind": "sampled", "samples_per_position": cfg.samples_per_position,
            "label_source_k": cfg.engine_k}


def generate_into(out: Path, cfg: TeacherConfig, manifest: Manifest, todo: list[ShardPlan],
                  job: LabelJob, attrs: ShardAttrs, guard: PreemptionGuard,
                  engine: EngineSource) -> GenerationStats:
    """Generate (or score), filter and commit the shards in `todo` into `manifest`."""
    stats = GenerationStats()
    if not todo:
        return stats
    thresholds = cfg.filter_thresholds()
    llm = engine.get()
    per_request = cfg.n if cfg.mode == "generate" else 1
    drawn = label_kind_named(cfg.label_kind).drawn
    gen_bar = tqdm(total=sum(len(p.requests) for p in todo) * per_request, desc=cfg.mode,
                   unit="sample", dynamic_ncols=True)
    write_bar = tqdm(total=len(todo), desc="write", unit="shard", dynamic_ncols=True)

    def write(job: tuple[int, FilterOutcome, list[Sample]]) -> tuple[int, ShardRecord]:
        index, outcome, generated = job
        kept = outcome.kept
        if drawn:  # filtered on the top-K rows, stored as draws
            kept = [sampled_sample(s, cfg.samples_per_position, cfg.seed) for s in kept]
        record = write_shard(out / shard_name(index), index, kept, attrs)
        table = index_table(generated, outcome.metrics, outcome.reasons, record.name)
        record.index_sha256 = write_index_part(out, index, table)
        record.generated, record.dropped = len(generated), outcome.dropped_by_reason()
        return index, record

    def commit(result: tuple[int, ShardRecord]) -> None:
        index, record = result
        manifest.shards[index] = record
        write_manifest(out, manifest)
        write_bar.update(1)

    started = time.time()
    try:
        with BackgroundWriter(write, commit) as writer:
            for plan, outputs in run_shards(VllmEngine(llm, job.sampling_params), todo,
                                            cfg.shards_in_flight):
                generated = job.to_samples(plan, outputs)
                outcome = filter_samples(generated, thresholds)
                writer.submit((plan.index, outcome, generated))
                stats.samples += len(generated)
                stats.completion_tokens += sum(s.label_count for s in generated)
                stats.non_finite += outcome.non_finite
                gen_bar.update(len(generated))
                check_non_finite_rate(stats, cfg.max_non_finite_rate)
                if guard.requested:
                    break
        stats.seconds = time.time() - started
    finally:
        gen_bar.close()
        write_bar.close()
        # Released before the hidden-state pass loads the teacher again:
        # the two are never resident at once.
        engine.release()
    return stats


def check_non_finite_rate(stats: GenerationStats, limit: float) -> None:
    """Abort when too many samples carried NaN/inf: the teacher or its dtype is broken."""
    if stats.non_finite > limit * stats.samples:
        raise NonFiniteError(
            f"{stats.non_finite} of {stats.samples} generated samples had NaN/inf teacher logprobs "
            f"(limit --max-non-finite-rate {limit}); they were dropped, never written. Check the "
            "teacher weights and --dtype (float16 overflows on some models)")


class NonFiniteError(RuntimeError):
    """Too many samples had non-finite teacher values."""


def shutdown_llm(llm: Any) -> None:
    """Stop vLLM's engine core process and free its memory before anything else loads."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception as exc:  # shutdown is best effort; the process exit reaps the core
        print(f"warning: vLLM shutdown: {exc}", file=sys.stderr)
    del llm
    import gc

    gc.collect()

