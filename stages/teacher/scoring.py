"""Score mode of `kd teacher-labels`: vLLM prompt logprobs over given text, as soft labels.

The teacher reads each window teacher-forced (`prompt_logprobs=k`, raw
logprobs, flat, no detokenisation, `max_tokens=1`: the one generated token is
discarded) and its top-k at every labelled position becomes a label row, with
the logprob of the data's own next token in `labels/sampled_logprobs`.
Prefix caching is off (vLLM has returned stale prompt logprobs from cached
blocks), and the engine's per-step token budget is derived from
--logprobs-memory-gib: vLLM computes each request's (tokens, vocabulary)
logits and float32 logprobs for the prompt tokens of a step outside its memory
profile, so the tokens per step bound that memory (`score_step_tokens`).

    kd teacher-labels --mode score --prompts data/corpus/train.jsonl \
        --out data/labels/corpus --limit 16 --max-model-len 512 --enforce-eager
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.store.sample import Sample
from pipeline.teacher.prompts import PromptBatch
from pipeline.teacher.score_records import (WINDOW_PREFIX, ScoreItem, check_all_or_none,
                                            load_score_records)
from pipeline.teacher.shard_scheduler import ShardPlan
from pipeline.teacher.partition import owned_by
from pipeline.teacher.soft_labels import split_flat_logprobs
from schemas.teacher_config import ConfigError, TeacherConfig
from stages.teacher.label_job import LabelJob

LOGPROB_BYTES_PER_ENTRY_EXTRA = 5
"""Bytes per (token, vocabulary) entry besides the logits themselves: the float32
log-softmax (4) and the boolean rank comparison (1) of vLLM's `gather_logprobs`."""
MIN_STEP_TOKENS = 64


def score_step_tokens(gib: float, vocab_size: int, logit_bytes: int) -> int:
    """Tokens per engine step whose prompt-logprob tensors fit in `gib`:
    tokens x vocabulary x (logit bytes + 5) <= gib.

    >>> score_step_tokens(2.0, 49152, 4)   # SmolLM2 in float32
    4854
    """
    tokens = int(gib * 2**30 // (vocab_size * (logit_bytes + LOGPROB_BYTES_PER_ENTRY_EXTRA)))
    if tokens < MIN_STEP_TOKENS:
        raise ConfigError(f"--logprobs-memory-gib {gib} leaves {tokens} tokens per engine step for "
                          f"a {vocab_size}-token vocabulary; at least {MIN_STEP_TOKENS} are needed")
    return tokens


def score_engine_args(cfg: TeacherConfig, vocab_size: int, logit_bytes: int) -> dict[str, Any]:
    """The `vllm.LLM` arguments that make an engine a scorer."""
    step = score_step_tokens(cfg.logprobs_memory_gib, vocab_size, logit_bytes)
    # Chunked prefill keeps every step within the budget however long a window
    # is; without per-request seeds (scoring samples nothing) it is safe on CPU.
    return {"enable_prefix_caching": False, "enable_chunked_prefill": True,
            "max_num_batched_tokens": step, "max_num_seqs": min(256, step)}


def load_score_input(cfg: TeacherConfig, tokenizer: Any) -> PromptBatch:
    from stages.teacher.score_tokenizer import HfScoreTokenizer

    try:
        tok = HfScoreTokenizer(tokenizer)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    batch = load_score_records(
        cfg.prompts, tok, cfg.window_tokens, cfg.window_overlap, cfg.system_prompt, cfg.limit,
        owns=owned_by(cfg.worker_index, cfg.num_workers),
        teacher_system_prompt=cfg.teacher_system_prompt)
    try:
        check_all_or_none(batch.accepted)
    except ValueError as exc:
        raise ConfigError(f"--prompts {cfg.prompts}: {exc}") from exc
    contexts = record_contexts(batch)
    if contexts and cfg.hidden_layers:
        raise ConfigError(f"--hidden-layers cannot be stored for records with a teacher context "
                          f"({len(contexts)} in --prompts {cfg.prompts}, e.g. {next(iter(contexts))!r}): "
                          "hidden states are captured over the stored (student's) view")
    return batch


def record_contexts(batch: PromptBatch) -> dict[str, str]:
    """The accepted records scored behind a teacher context: id -> the teacher's messages (JSON)."""
    return {r.id: r.items[0].teacher_context for r in batch.accepted
            if r.items[0].teacher_context is not None}


def plan_score_shards(records: list[Any], shard_size: int) -> list[ShardPlan]:
    """Deterministic shards of whole records, each closed once it holds >= shard_size items."""
    plans: list[ShardPlan] = []
    requests: list[tuple[str, list[int], int]] = []
    for record in records:
        requests += [(item.sample_id, item.engine_token_ids, 0) for item in record.items]
        if len(requests) >= shard_size:
            plans.append(ShardPlan(len(plans), requests))
            requests = []
    if requests:
        plans.append(ShardPlan(len(plans), requests))
    return plans


def scored_sample(item: ScoreItem, output: Any, k: int) -> Sample:
    """One window's Sample from its vLLM RequestOutput (flat prompt logprobs): the rows at the
    engine's (the teacher's) labelled positions, stored at the item's (the student's)."""
    flat = output.prompt_logprobs
    positions = np.asarray(item.positions, np.int64)
    scored = np.asarray(item.engine_positions, np.int64)
    top_ids, top_lps, actual = split_flat_logprobs(
        flat.token_ids, flat.logprobs, np.asarray(flat.start_indices)[scored],
        np.asarray(flat.end_indices)[scored], [item.token_ids[p] for p in positions], k)
    first = item.positions[0]
    student = (None if item.student_logprobs is None
               else np.asarray(item.student_logprobs, np.float32))
    return Sample(item.record_id, item.window, item.token_ids[:first], item.token_ids[first:],
                  top_ids, top_lps, actual, "scored", label_positions=positions,
                  id_prefix=WINDOW_PREFIX, student_logprobs=student,
                  token_byte_lengths=item.byte_lengths,
                  text_regions=None if item.regions is None else list(item.regions),
                  teacher_context=item.teacher_context)


def score_job(cfg: TeacherConfig, tokenizer: Any) -> LabelJob:
    """Score mode's records, shard plans, engine and sample conversion."""
    batch = load_score_input(cfg, tokenizer)
    items = {item.sample_id: item for record in batch.accepted for item in record.items}
    contexts = record_contexts(batch)

    def params(seed: int) -> Any:
        from vllm import SamplingParams

        return SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=cfg.engine_k,
                              detokenize=False, flat_logprobs=True)

    def to_samples(plan: ShardPlan, outputs: dict[str, Any]) -> list[Sample]:
        samples = [scored_sample(items[key], outputs[key], cfg.engine_k)
                   for key, _, _ in plan.requests]
        if contexts:  # a shard holds the teacher contexts for every sample or none
            for s in samples:
                s.teacher_context = s.teacher_context or ""
        return samples

    return LabelJob(batch, plan_score_shards(batch.accepted, cfg.shard_size), len(items),
                    params, to_samples, contexts)
