"""Benchmark: the full `kd teacher-labels` path against plain vLLM generation.

In one process, on one warm engine, the same prompts and sampling settings:
1. plain `LLM.generate` (what a user would run to make synthetic data),
2. the full teacher path (k = 20 soft labels, confidence filtering, index,
   HDF5 shards written in the background),
3. the same with `--hidden-layers -1` (generation, then the engine is shut
   down and a transformers pass adds hidden states).
Throughput is completion tokens per second of each; the engine start and the
first logprobs request (a one-off compile on the CPU build) are excluded from
all three by a warm-up. Results go to bench/results/teacher.json.

    python -m bench.teacher --prompts 64 --max-tokens 64      # CPU-sized
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

from bench.result_file import write_result
from schemas.teacher_config import TeacherConfig
from stages.teacher.labels import (EngineSource, render_prompt_tokens, run_teacher_labels,
                                   plan_shards)
from pipeline.teacher.prompts import load_prompts


class WarmEngine(EngineSource):
    """Hands out one already-built engine; shuts it down only when told to."""

    def __init__(self, cfg: TeacherConfig):
        super().__init__(cfg)
        self.keep_alive = True

    def release(self) -> None:
        if not self.keep_alive:
            super().release()


def plain_generation(llm: Any, cfg: TeacherConfig) -> dict[str, float]:
    """vLLM's own batch API over the same prompts, seeds and sampling settings."""
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(cfg.teacher)
    batch = load_prompts(cfg.prompts, render_prompt_tokens(tokenizer),
                         cfg.max_model_len - cfg.max_tokens, cfg.system_prompt, cfg.limit)
    requests = [r for plan in plan_shards(batch.accepted, cfg) for r in plan.requests]
    params = [SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                             max_tokens=cfg.max_tokens, seed=seed) for _, _, seed in requests]
    start = time.time()
    outputs = llm.generate([{"prompt_token_ids": ids} for _, ids, _ in requests], params,
                           use_tqdm=False)
    seconds = time.time() - start
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {"completion_tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}


def full_path(cfg: TeacherConfig, engine: EngineSource) -> dict[str, float]:
    summary = run_teacher_labels(cfg, engine)
    g, t = summary.generation, summary.manifest.totals()
    seconds = g.seconds + summary.hidden_seconds
    return {"completion_tokens": g.completion_tokens, "generation_seconds": g.seconds,
            "hidden_seconds": summary.hidden_seconds, "seconds": seconds,
            "tokens_per_second": g.completion_tokens / seconds,
            "kept_samples": t["samples"], "generated_samples": t["generated"],
            "bytes_per_completion_token": t["bytes"] / max(t["completion_tokens"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128, help="prompts from the demo set")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", default="bench/results/teacher.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-teacher-") as tmp:
        base = dict(limit=args.prompts, max_tokens=args.max_tokens, dtype=args.dtype, top_k=20,
                    max_model_len=1024, shard_size=32)
        cfg = TeacherConfig(out=f"{tmp}/labels", **base).validate()
        engine = WarmEngine(cfg)
        llm = engine.get()
        # Warm-up: the CPU build compiles its logprobs path on the first such request.
        plain_generation(llm, TeacherConfig(**{**base, "limit": 4}))
        run_teacher_labels(TeacherConfig(out=f"{tmp}/warm", **{**base, "limit": 4}), engine)
        plain = plain_generation(llm, cfg)
        full = full_path(cfg, engine)
        engine.keep_alive = False
        hidden = full_path(TeacherConfig(out=f"{tmp}/hidden", hidden_layers="-1", **base), engine)

    result = {
        "settings": base | {"n": cfg.n, "temperature": cfg.temperature, "top_p": cfg.top_p},
        "plain_generation": plain, "full_path": full, "full_path_hidden_last": hidden,
        "full_vs_plain_throughput": full["tokens_per_second"] / plain["tokens_per_second"],
        "hidden_vs_plain_throughput": hidden["tokens_per_second"] / plain["tokens_per_second"],
        "target_full_vs_plain": 0.90,
    }
    write_result(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
