"""`kd student-samples`: the exported student writes completions under vLLM, as score-mode records.

Wiring only. The student runs on the teacher stage's own machinery: its
generate-mode job (`stages.teacher.labels.generate_job`: prompt reading and
chat rendering, per-prompt seeds, sampling parameters), engine start
(`EngineSource`) and scheduler (`run_shards`), with k = 1 (the engine returns
each sampled token's own raw logprob). Every finished batch of records is
appended to `<out>/samples.jsonl` and fsynced (`pipeline.teacher.student_records`);
a rerun keeps every whole record and samples only the prompts without one,
with the same per-prompt seeds, so an interrupted run ends as an uninterrupted
one would. Then `kd teacher-labels --mode score --prompts <out>/samples.jsonl`.

CPU-sized example (the demo student, 8 prompts, 32 tokens):

    kd student-samples --model data/student/demo/model --prompts data/prompts/demo.jsonl \
        --out data/onpolicy/try/samples --limit 8 --max-tokens 32 --enforce-eager
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.store.atomic_commit import sha256_file, write_text_atomic
from pipeline.store.fingerprint import tokenizer_fingerprint
from pipeline.store.output_lock import LOCK_NAME, OutputLock
from pipeline.teacher.prompts import Prompt, require_accepted, write_rejects
from pipeline.teacher.shard_scheduler import run_shards
from pipeline.teacher.soft_labels import split_flat_logprobs
from pipeline.teacher.student_records import (SAMPLES_NAME, append_records, carried_contexts,
                                              read_finished, retokenizes, student_record)
from schemas import REJECTS_NAME
from schemas.config_base import ConfigError
from schemas.student_samples_config import SAMPLES_CONFIG_NAME, StudentSamplesConfig
from stages.cli.engine_logs import ENGINE_LOG
from stages.cli.preemption import Preempted, PreemptionGuard
from stages.teacher import labels as teacher_stage


@dataclass
class SamplesSummary:
    """What one `kd student-samples` run did."""

    out: Path
    accepted: int
    rejected: int
    reused: int
    written: int
    tokens: int
    drifted: int
    seconds: float

    def line(self) -> str:
        return (f"student-samples: {self.accepted} prompts accepted, {self.rejected} rejected; "
                f"{self.written} records written, {self.reused} reused; {self.tokens} tokens; "
                f"{self.drifted} of {self.written} completions would re-tokenise differently from "
                f"their text (score mode uses the stored ids) -> {self.out / SAMPLES_NAME}")


def check_model_dir(model: str) -> None:
    """Refuse a --model that is not a local Hugging Face model directory, before any engine starts."""
    path = Path(model)
    hint = "an exported student is <kd train-student --out>/model"
    if not path.is_dir():
        raise ConfigError(f"--model {model}: no such directory ({hint})")
    if not (path / "config.json").is_file():
        raise ConfigError(f"--model {model}: no config.json, not a Hugging Face model directory "
                          f"({hint})")


def model_sha256(model: str) -> str:
    """sha256 over the model's config and weight files: samples of other weights at the same
    path (a retrained round) are never reused; a re-export of the same weights is the same."""
    files = sorted(p for p in Path(model).iterdir()
                   if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    return hashlib.sha256("".join(f"{p.name}:{sha256_file(p)}\n" for p in files).encode()).hexdigest()


def run_student_samples(cfg: StudentSamplesConfig, engine: Any = None) -> SamplesSummary:
    """Sample what the output lacks, holding its writer lock; returns the summary."""
    cfg.validate()
    check_model_dir(cfg.model)
    if not Path(cfg.prompts).is_file():
        raise ConfigError(f"--prompts {cfg.prompts}: no such file")
    with OutputLock(cfg.out):
        return sample_output(cfg, engine)


def open_samples(out: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Keep an output made with the same settings; refuse (or, --overwrite, clear) another."""
    try:
        old = json.loads((out / SAMPLES_CONFIG_NAME).read_text())["identity"]
    except (OSError, ValueError, KeyError):
        return
    changed = sorted(k for k in identity.keys() | old.keys() if identity.get(k) != old.get(k))
    if changed and not overwrite:
        raise ConfigError(f"{out} was sampled with different {', '.join(changed)}; pass "
                          "--overwrite to replace it, or choose another --out")
    if changed:
        for entry in out.iterdir():
            if entry.name not in (LOCK_NAME, ENGINE_LOG):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def sample_output(cfg: StudentSamplesConfig, engine: Any) -> SamplesSummary:
    from transformers import AutoTokenizer

    start, out = time.time(), Path(cfg.out)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    engine_cfg = cfg.engine_config()
    job = teacher_stage.generate_job(engine_cfg, tokenizer)
    fingerprint = tokenizer_fingerprint(tokenizer)
    identity = cfg.identity() | {"prompts_sha256": sha256_file(cfg.prompts),
                                 "model_sha256": model_sha256(cfg.model),
                                 "tokenizer_fingerprint": fingerprint}
    open_samples(out, identity, cfg.overwrite)
    write_text_atomic(out / SAMPLES_CONFIG_NAME,
                      json.dumps(cfg.to_dict() | {"identity": identity}, indent=1) + "\n")
    write_rejects(out / REJECTS_NAME, job.batch.rejects)
    require_accepted(job.batch, cfg.prompts, out / REJECTS_NAME)
    path = out / SAMPLES_NAME
    try:
        done = read_finished(path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    prompts = {p.id: p for p in job.batch.accepted}
    contexts = carried_contexts(cfg.prompts)
    todo = [p for p in job.batch.accepted if p.id not in done]
    written = tokens = drifted = 0
    if todo:
        source = engine or teacher_stage.EngineSource(engine_cfg)
        try:
            with PreemptionGuard() as guard:
                scheduler = teacher_stage.VllmEngine(source.get(), job.sampling_params)
                for plan, outputs in run_shards(scheduler, teacher_stage.plan_shards(todo, engine_cfg),
                                                engine_cfg.shards_in_flight):
                    records = [completion_record(prompts[key], outputs[key], engine_cfg.engine_k,
                                                 tokenizer, fingerprint) | contexts.get(key, {})
                               for key, _, _ in plan.requests]
                    append_records(path, records)
                    written += len(records)
                    tokens += sum(len(r["completion_token_ids"]) for r in records)
                    drifted += sum(r["retokenization_drift"] for r in records)
                    if guard.requested:
                        raise Preempted(f"SIGTERM: stopped after {len(done) + written} of "
                                        f"{len(prompts)} records in {path}")
        finally:
            source.release()
    return SamplesSummary(out, len(prompts), len(job.batch.rejects), len(done), written, tokens,
                          drifted, time.time() - start)


def completion_record(prompt: Prompt, output: Any, k: int, tokenizer: Any,
                      fingerprint: str) -> dict[str, Any]:
    """The score-mode record of one prompt's completion (one vLLM RequestOutput)."""
    c = output.outputs[0]
    lp = c.logprobs
    _, _, sampled = split_flat_logprobs(lp.token_ids, lp.logprobs, lp.start_indices,
                                        lp.end_indices, c.token_ids, k)
    ids = list(c.token_ids)
    drift = not retokenizes(ids, tokenizer.decode,
                            lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])
    return student_record(prompt.id, prompt.messages, tokenizer.decode(ids, skip_special_tokens=True),
                          prompt.token_ids, ids, sampled.tolist(), str(c.finish_reason),
                          fingerprint, drift)


def samples_committed(out: str | Path) -> str:
    """What an interrupted run left: the whole records in `<out>/samples.jsonl`."""
    path = Path(out) / SAMPLES_NAME
    if not path.is_file():
        return f"nothing yet in {out}"
    records = path.read_bytes().count(b"\n")
    return f"{records} record(s) in {path}"
