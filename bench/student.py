"""Benchmark the student stage (`make bench-student`) -> bench/results/student.json.

On the embedded teacher's labels and the default student (`from-teacher`,
10 layers), on the same batches:
1. offline vs online distillation: a `kd train-student` step (labels from the
   shards) against the common online recipe, where the teacher, loaded in the
   same process, runs a forward pass inside every step and the loss is a dense
   full-vocabulary KL plus CE; time per step (interleaved rounds, medians) and
   peak memory of each phase. Also timed: online with our own student step, the
   teacher's top-k taken from its forward pass in the step, which isolates what
   the teacher's forward pass costs from how the loss is computed;
2. soft-label overhead: the same step with the KD loss (alpha 0.5) against
   cross-entropy only (alpha 0), interleaved; also against the same losses
   computed by autograd under activation checkpointing per chunk (what
   `pipeline/student/fused_head.py` replaced);
3. loader headroom: tokens/s the DataLoader delivers alone against tokens/s
   the training step consumes;
4. memory against data size: peak RSS of two short `kd train-student` runs (child
   processes) over a synthetic shard set and one ten times larger.

    python -m bench.student --labels data/labels/demo --steps 6
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from bench.memory import PeakMemory
from bench.synthetic_labels import write_synthetic_labels
from bench.result_file import write_result
from pipeline.student.batch_plan import plan_batches, split_by_prompt
from pipeline.student.batches import PlannedBatches, to_device
from pipeline.student.kd_losses import fused_head_losses, total_loss, weighted_token_sum
from pipeline.student.label_set import open_label_set
from schemas.student_config import StudentConfig
from stages.student.forward import batch_losses, decoder_states
from stages.student.model import build_student, evenly_spaced_layers, keep_decoder_layers


def offline_step(model: Any, opt: Any, batch: dict[str, Any], cfg: StudentConfig,
                 vocab: int) -> None:
    parts = batch_losses(model, None, batch, vocab, cfg, {})
    total_loss(parts.weighted, parts.positions).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def checkpointed_step(model: Any, opt: Any, batch: dict[str, Any], cfg: StudentConfig,
                      vocab: int) -> None:
    """The offline step with the head under activation checkpointing instead of the fused head."""
    flat, _ = decoder_states(model, batch, False)
    rows, weight = flat[batch["loss_rows"]], model.get_output_embeddings().weight

    def chunk(states: Any, ids: Any, lps: Any, target: Any) -> Any:
        soft, hard = fused_head_losses((states @ weight[:vocab].T).float(), ids, lps, target,
                                       kind=cfg.kd_loss, tail=cfg.tail,
                                       temperature=cfg.kd_temperature, beta=cfg.beta)
        return weighted_token_sum(soft, hard, cfg.alpha)
    total = sum(checkpoint(chunk, *(t[i:i + cfg.loss_chunk] for t in (
        rows, batch["teacher_ids"], batch["teacher_logprobs"], batch["target_ids"])),
        use_reentrant=False) for i in range(0, rows.shape[0], cfg.loss_chunk))
    total_loss(total, rows.shape[0]).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def online_step(teacher: Any, model: Any, opt: Any, batch: dict[str, Any], vocab: int) -> None:
    """The usual online recipe: teacher forward in the step, dense KL over the vocabulary + CE."""
    rows = batch["loss_rows"]
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                           ).logits.flatten(0, 1)[rows, :vocab].float()
    s_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                     ).logits.flatten(0, 1)[rows, :vocab].float()
    kl = torch.nn.functional.kl_div(s_logits.log_softmax(-1), t_logits.log_softmax(-1),
                                    log_target=True, reduction="sum")
    ce = torch.nn.functional.cross_entropy(s_logits, batch["target_ids"], reduction="sum")
    ((0.5 * kl + 0.5 * ce) / rows.numel()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def online_topk_step(teacher: Any, model: Any, opt: Any, batch: dict[str, Any], cfg: StudentConfig,
                     vocab: int, k: int) -> None:
    """Online, but with the offline step's loss: the teacher's top-k computed in the step."""
    with torch.no_grad():
        rows = decoder_states(teacher, batch, False)[0][batch["loss_rows"]]
        logprobs = (rows @ teacher.get_output_embeddings().weight[:vocab].T).float().log_softmax(-1)
        top = logprobs.topk(k, dim=-1)
    offline_step(model, opt, batch | {"teacher_ids": top.indices, "teacher_logprobs": top.values},
                 cfg, vocab)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_step(step: Callable[[dict[str, Any]], None], batches: list[dict[str, Any]],
                     device: torch.device, warmup: int = 1) -> float:
    for b in batches[:warmup]:
        step(b)
    sync(device)
    start = time.perf_counter()
    for b in batches[warmup:]:
        step(b)
    sync(device)
    return (time.perf_counter() - start) / max(len(batches) - warmup, 1)


def interleaved_times(steps: dict[str, Callable[[dict[str, Any]], None]],
                      batches: list[dict[str, Any]], device: torch.device,
                      rounds: int = 2) -> dict[str, list[float]]:
    """Seconds per step of each of `steps` in every round, timed in turn, round after round.

    Interleaving makes machine noise hit every variant alike, so their ratios hold.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(seconds_per_step(step, batches, device))
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: float(np.median(t)) for name, t in times.items()}


def loader_tokens_per_second(labels: Any, plan: list[np.ndarray], workers: int) -> float:
    loader = torch.utils.data.DataLoader(PlannedBatches(labels, plan), batch_size=None,
                                         num_workers=workers)
    start, tokens = time.perf_counter(), 0
    for batch in loader:
        tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - start)


def high_water_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def child_peak_rss_mb(args: list[str]) -> float:
    """Run `kd train-student` in a child process and return its peak RSS.

    Polls the child's own high-water mark (VmHWM): ru_maxrss from wait4 would
    report this (much larger) benchmark process's peak, which Linux lets a
    forked child inherit.
    """
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "stages.cli.main", "train-student", *args],
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, high_water_rss_kb(proc.pid))
            time.sleep(0.05)
        if proc.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"train-student failed: {log.read()[-2000:]}")
    return peak / 1024


def memory_vs_data(teacher_labels: Any, student_args: list[str], shards: int,
                   steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-student-") as tmp:
        peaks = {}
        for scale in (1, 10):
            labels = write_synthetic_labels(Path(tmp) / f"x{scale}", teacher_labels, shards * scale)
            peaks[scale] = child_peak_rss_mb([
                "--labels", str(labels), *student_args, "--out", f"{tmp}/run{scale}", "--steps", str(steps), "--batch-tokens", "1024",
                "--eval-every", "0", "--eval-fraction", "0.02", "--checkpoint-every", "0"])
    return {"peak_rss_mb_1x": peaks[1], "peak_rss_mb_10x": peaks[10],
            "rss_growth_10x_data": peaks[10] / peaks[1] - 1, "shards_1x": shards}


def build_models(teacher: str, keep_layers: int, random_weights: bool,
                 student_only: bool = False) -> Any:
    """The default student (or, unless `student_only`, the teacher) in float32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not random_weights:
        if student_only:
            return build_student("from-teacher", teacher, keep_layers, 0, 0)[0]
        return AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(teacher),
                                             dtype=torch.float32)
    if student_only:
        keep_decoder_layers(model, evenly_spaced_layers(model.config.num_hidden_layers,
                                                        keep_layers))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default="data/labels/demo")
    parser.add_argument("--keep-layers", type=int, default=10)
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    parser.add_argument("--out", default="bench/results/student.json")
    parser.add_argument("--teacher", default=None,
                        help="teacher directory (default: the labels' teacher)")
    parser.add_argument("--random-weights", action="store_true",
                        help="build teacher and student from the teacher's config alone (same "
                             "compute and memory as real weights; for machines without them)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    labels = open_label_set([args.labels])
    train_idx, _ = split_by_prompt(labels.prompt_hash, 0.1, 0)
    plan = plan_batches(labels.length, train_idx, args.batch_tokens, 0, 0)
    batches = [to_device(PlannedBatches(labels, plan[:args.steps + 1])[i], device)
               for i in range(args.steps + 1)]
    tokens_per_batch = float(np.mean([int(b["attention_mask"].sum()) for b in batches[1:]]))
    kd_cfg = StudentConfig(alpha=0.5)
    ce_cfg = StudentConfig(alpha=0.0)
    vocab = labels.vocab_size
    teacher_path = args.teacher or labels.teacher
    student = build_models(teacher_path, args.keep_layers, args.random_weights, student_only=True)
    student.to(device).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)

    kd_step = partial(offline_step, student, opt, cfg=kd_cfg, vocab=vocab)
    with PeakMemory(device) as offline_peak:
        seconds_per_step(kd_step, batches, device)
    head_runs = interleaved_times({
        "kd": kd_step, "ce": partial(offline_step, student, opt, cfg=ce_cfg, vocab=vocab),
        "checkpointed": partial(checkpointed_step, student, opt, cfg=kd_cfg, vocab=vocab)},
        batches, device)
    head = medians(head_runs)
    teacher = build_models(teacher_path, args.keep_layers, args.random_weights).to(device).eval()
    teacher_mb = sum(p.numel() * p.element_size() for p in teacher.parameters()) / 2**20
    online_recipe = partial(online_step, teacher, student, opt, vocab=vocab)
    with PeakMemory(device) as online_peak:
        seconds_per_step(online_recipe, batches, device)
    timed_runs = interleaved_times({
        "offline": kd_step, "online": online_recipe,
        "online_topk": partial(online_topk_step, teacher, student, opt, cfg=kd_cfg, vocab=vocab,
                               k=labels.top_k)}, batches, device)
    timed = medians(timed_runs)
    del teacher, online_recipe   # frees the teacher before the memory runs
    loader = loader_tokens_per_second(labels, plan, workers=2)
    consumed = tokens_per_batch / head["kd"]
    student_args = (["--student", "narrow", "--narrow-hidden-size", str(student.config.hidden_size),
                     "--teacher", teacher_path] if args.random_weights else
                    ["--student", "from-teacher", "--teacher", teacher_path])
    memory = memory_vs_data(args.labels, student_args + ["--keep-layers", str(args.keep_layers)],
                            shards=8, steps=10)
    result = {
        "labels": args.labels, "keep_layers": args.keep_layers,
        "random_weights": args.random_weights,
        "batch_tokens": args.batch_tokens, "tokens_per_batch": tokens_per_batch,
        "offline_step_seconds": timed["offline"], "online_step_seconds": timed["online"],
        "offline_vs_online_step_time_ratio": timed["offline"] / timed["online"],
        "online_topk_step_seconds": timed["online_topk"],
        "offline_vs_online_topk_step_time_ratio": timed["offline"] / timed["online_topk"],
        "offline_peak_memory_mb": offline_peak.mb, "online_peak_memory_mb": online_peak.mb,
        "peak_memory_saving_mb": online_peak.mb - offline_peak.mb,
        "teacher_weights_mb": teacher_mb,
        "kd_step_seconds": head["kd"], "ce_step_seconds": head["ce"],
        "kd_vs_ce_step_time_ratio": head["kd"] / head["ce"],
        "checkpointed_head_step_seconds": head["checkpointed"],
        "fused_vs_checkpointed_head_step_time_ratio": head["kd"] / head["checkpointed"],
        "loader_tokens_per_second": loader, "train_tokens_per_second": consumed,
        "loader_headroom_ratio": loader / consumed,
        **memory,
        "step_seconds_runs": head_runs | timed_runs,
        "targets": {"offline_vs_online_step_time_ratio": "<= 0.5",
                    "peak_memory_saving_mb": ">= teacher_weights_mb",
                    "kd_vs_ce_step_time_ratio": "<= 1.15", "loader_headroom_ratio": ">= 20",
                    "rss_growth_10x_data": "<= 0.10"},
    }
    write_result(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
