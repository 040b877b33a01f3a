"""Student stage: train a student from memory-mapped teacher shards alone (`kd train-student`).

No teacher weights are resident and vLLM is never imported: the soft labels,
sampled tokens and optional hidden states all come from the shards. Wiring
only: data from `pipeline.student.label_set`/`batch_plan`/`batches`, losses
from `pipeline.student.kd_losses` via `stages.student.forward`, checkpoints from
`pipeline.student.checkpoint`, the report from `stages.student.report`.

Under torchrun every rank reads a disjoint share of each epoch's batches
(DDP, or FSDP2 with --fsdp); rank 0 alone writes checkpoints, logs and the
exported model. CPU-sized example (the embedded teacher's labels):

    kd train-student --labels data/labels/demo --out data/student/tiny --steps 20 \
        --keep-layers 6 --batch-tokens 2048 --eval-every 10
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from pipeline.store.output_lock import OutputLock
from pipeline.student.checkpoint import (latest_checkpoint, load_checkpoint, prime_adamw_state,
                                         restore_rng, save_checkpoint)
from pipeline.student.batch_plan import batches_for_rank, plan_batches, split_by_prompt
from pipeline.student.batches import PlannedBatches, to_device
from pipeline.student.alarms import Alarm, AlarmMonitor, AlarmThresholds
from pipeline.student.kd_losses import HiddenStateAdapter
from pipeline.student.label_set import LabelSet, open_label_set
from pipeline.student.phases import layout_phases, phase_at, phase_lr
from pipeline.student.qat import fake_quant_on, prepare_qat, set_fake_quant
from pipeline.student.schedules import temperature_at
from pipeline.student.token_weights import rare_token_weights
from pipeline.student.shard_gate import ShardVerificationError
from schemas.config_base import ConfigError
from schemas.student_config import StudentConfig
from stages.cli.preemption import Preempted, PreemptionGuard
from pipeline.student.cross_tokenizer_batches import AlignmentCache, StudentSide
from stages.student.cross_tokenizer import (CrossPlannedBatches, CrossTokenizerModule,
                                            build_cross_student, evaluate_cross, student_vocab,
                                            teacher_cross_reference)
from stages.student.distributed import DistContext
from stages.student.evaluate import eval_plan, evaluate_model, teacher_reference
from stages.student.model_export import export_model, exportable
from stages.student.export_quantized import export_quantized
from stages.student.forward import DistillationModule
from stages.student.model import build_student, check_tokenizer, check_vocabulary, load_init_from
from stages.student.report import MetricsLog, write_report
from stages.student.resources import memory_use
from stages.student.step import drop_frozen_grads, frozen_parameters, step_plan, train_step

MAX_SKIPPED_IN_A_ROW = 10


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the batch."""


class AlarmStop(RuntimeError):
    """An alarm tripped under `--alarms stop`; the message names the alarm, the step and the batch."""


@dataclass
class Cursor:
    """Where the data stream is: epoch and batch within this rank's share of that epoch."""

    epoch: int = 0
    batch: int = 0


@dataclass
class TrainResult:
    out: Path
    steps: int
    evals: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


class BatchStream:
    """This rank's batches, epoch after epoch, resumable at any cursor."""

    def __init__(self, labels: LabelSet, train_idx: np.ndarray, cfg: StudentConfig,
                 dist: DistContext, cursor: Cursor, with_hidden: bool,
                 dataset: Callable[[list[np.ndarray]], Any] | None = None):
        self.labels, self.train_idx, self.cfg, self.dist = labels, train_idx, cfg, dist
        self.cursor, self.with_hidden = cursor, with_hidden
        self.dataset = dataset or (lambda plan: PlannedBatches(labels, plan, with_hidden))
        self._iter: Iterator[dict[str, Any]] | None = None

    def epoch_plan(self, epoch: int) -> list[np.ndarray]:
        plan = plan_batches(self.labels.length, self.train_idx, self.cfg.batch_tokens,
                            self.cfg.seed, epoch)
        return batches_for_rank(plan, self.dist.rank, self.dist.world_size, self.cfg.grad_accum)

    def batches_per_epoch(self) -> int:
        """Micro-batches per epoch on this rank; refuses a split too small for one step."""
        count = len(self.epoch_plan(0))
        if count == 0:
            raise ConfigError(f"the training split makes fewer micro-batches of --batch-tokens "
                              f"{self.cfg.batch_tokens} than one step needs ("
                              f"{self.dist.world_size} ranks x --grad-accum {self.cfg.grad_accum})")
        return count

    def _open(self) -> Iterator[dict[str, Any]]:
        plan = self.epoch_plan(self.cursor.epoch)[self.cursor.batch:]
        data = self.dataset(plan)
        loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False,
                                             num_workers=self.cfg.loader_workers,
                                             prefetch_factor=4 if self.cfg.loader_workers else None,
                                             persistent_workers=False)
        return iter(loader)

    def next(self) -> dict[str, Any]:
        while True:
            if self._iter is None:
                self._iter = self._open()
            try:
                batch = next(self._iter, None)
            except ShardVerificationError as exc:
                raise ShardVerificationError(last_line(exc)) from None
            if batch is not None:
                self.cursor.batch += 1
                return batch
            self._iter = None
            self.cursor = Cursor(self.cursor.epoch + 1, 0)


def last_line(exc: Exception) -> str:
    """The message of an error raised in a DataLoader worker, without the traceback torch adds."""
    return str(exc).rstrip().splitlines()[-1].split(f"{type(exc).__name__}: ", 1)[-1]


def resolve_layer_map(cfg: StudentConfig, num_layers: int, labels: LabelSet) -> dict[int, int]:
    """--layer-map in absolute hidden-state indices, checked against what the labels hold."""
    if not cfg.uses_hidden:
        return {}
    require_hidden_states(cfg, labels)
    resolved = {}
    for s, t in cfg.parsed_layer_map().items():
        s_abs = s if s >= 0 else num_layers + 1 + s
        t_abs = t if t >= 0 else labels.teacher_num_layers + 1 + t
        if not 0 <= s_abs <= num_layers:
            raise ConfigError(f"--layer-map: student layer {s} is out of range 0..{num_layers}")
        if t_abs not in labels.hidden_layers:
            raise ConfigError(f"--layer-map: teacher layer {t} (absolute {t_abs}) is not stored in "
                              f"the labels, which hold {labels.hidden_layers}")
        resolved[s_abs] = t_abs
    return resolved


def hidden_adapter(cfg: StudentConfig, model: Any, labels: LabelSet
                   ) -> tuple[dict[int, int], HiddenStateAdapter | None]:
    """The resolved --layer-map and its adapter (None when no hidden-state loss trains)."""
    layer_map = resolve_layer_map(cfg, model.config.num_hidden_layers, labels)
    if not layer_map:
        return layer_map, None
    return layer_map, HiddenStateAdapter(list(layer_map), model.config.hidden_size,
                                         labels.hidden_size)


def require_hidden_states(cfg: StudentConfig, labels: LabelSet) -> None:
    """Refuse a run that trains the hidden-state loss on labels without hidden states."""
    if cfg.uses_hidden and not labels.hidden_layers:
        needs = ("--phases: a hidden phase" if cfg.hidden_weight == 0 and cfg.loss_balance is None
                 else "--hidden-weight > 0 or --loss-balance")
        raise ConfigError(f"{needs} needs labels with hidden states (--hidden-layers at the "
                          "teacher stage: kd teacher-labels --hidden-layers -1 ...)")


def total_steps(cfg: StudentConfig, per_epoch: int) -> int:
    if cfg.steps is not None:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))


def autocast_dtype(cfg: StudentConfig, device: torch.device) -> torch.dtype | None:
    if cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda"
                                   and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


@dataclass
class Trainable:
    """The student and what trains with it, on its device and wrapped for DDP/FSDP."""

    model: Any
    tokenizer: Any
    vocab: int
    """Rows of the output layer that hold real tokens (padded rows are sliced off)."""
    layer_map: dict[int, int]
    module: Any
    """`DistillationModule` (student + adapter), wrapped by `DistContext.wrap`."""
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    side: StudentSide | None = None
    """--cross-tokenizer: how the student's tokens align with the teacher's."""


def build_trainable(cfg: StudentConfig, labels: LabelSet, dist: DistContext,
                    token_weights: np.ndarray | None = None) -> Trainable:
    """Build or load the student, check it against the labels, place and wrap it."""
    teacher = cfg.teacher or labels.teacher
    torch.manual_seed(cfg.seed)
    if cfg.cross_tokenizer:
        return build_cross_trainable(cfg, teacher, dist, labels)
    if cfg.init_from is not None:
        model, tokenizer = load_init_from(cfg.init_from, labels)
    else:
        model, tokenizer = build_student(cfg.student, teacher, cfg.keep_layers,
                                         cfg.narrow_hidden_size, cfg.seed,
                                         labels.tokenizer_dir or teacher)
        check_tokenizer(tokenizer, labels, cfg.student if not cfg.derived_student else teacher)
    vocab = check_vocabulary(model, labels.vocab_size)
    if cfg.qat is not None:
        prepare_qat(model, cfg.qat, cfg.qat_group_size)
    layer_map, adapter = hidden_adapter(cfg, model, labels)
    model.to(dist.device)
    if adapter is not None:
        adapter.to(dist.device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    weights = None if token_weights is None else torch.from_numpy(token_weights).to(dist.device)
    # Phases leave parameters without gradient (the head, the adapter), which DDP must expect.
    module = dist.wrap(DistillationModule(model, adapter, vocab, cfg, layer_map, weights),
                       cfg.fsdp, layers=model.get_decoder().layers,
                       find_unused=bool(cfg.phases))
    params = list(module.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    prime_adamw_state(optimizer)
    return Trainable(model, tokenizer, vocab, layer_map, module, params, optimizer)


def build_cross_trainable(cfg: StudentConfig, teacher: str, dist: DistContext,
                          labels: LabelSet) -> Trainable:
    """--cross-tokenizer: a student of any tokenizer, its losses over byte-aligned chunks."""
    model, tokenizer, teacher_tokenizer = build_cross_student(cfg, teacher)
    vocab = student_vocab(model, tokenizer)
    layer_map, adapter = hidden_adapter(cfg, model, labels)
    model.to(dist.device)
    if adapter is not None:
        adapter.to(dist.device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    module = dist.wrap(CrossTokenizerModule(model, vocab, cfg, adapter, layer_map), cfg.fsdp,
                       layers=model.get_decoder().layers, find_unused=False)
    params = list(module.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    prime_adamw_state(optimizer)
    return Trainable(model, tokenizer, vocab, layer_map, module, params, optimizer,
                     StudentSide.build(tokenizer, teacher_tokenizer))


class TrainingRun:
    """One run of the training loop: data stream, phases, step counter, evaluations, checkpoints.

    Constructing it reads and writes nothing; `set_up()` then writes the resolved
    config, finds the checkpoint to resume and lays out data, phases and evaluation.
    """

    def __init__(self, cfg: StudentConfig, labels: LabelSet, student: Trainable,
                 dist: DistContext):
        self.cfg, self.labels, self.student, self.dist = cfg, labels, student, dist
        self.out = Path(cfg.out)
        self.frozen = frozen_parameters(student.model, cfg)
        self.amp = autocast_dtype(cfg, dist.device)
        self.monitor = AlarmMonitor(AlarmThresholds(cfg.max_grad_norm_alarm,
                                                    cfg.min_grad_norm_alarm, cfg.alarm_patience,
                                                    cfg.memory_alarm))
        self.step, self.evals, self.alarms = 0, {}, []
        self.non_finite = 0  # steps skipped in a row for a non-finite loss (--on-non-finite skip)

    def set_up(self) -> "TrainingRun":
        """Write the resolved config, load the checkpoint to resume (or refuse one), lay out the
        batch stream, phases and evaluation, then restore the checkpoint or evaluate at step 0."""
        cfg, labels, dist = self.cfg, self.labels, self.dist
        train_idx, eval_idx = split_by_prompt(labels.prompt_hash, cfg.eval_fraction, cfg.seed)
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "student_config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        resume_state = load_resume_state(cfg, self.out, dist.world_size)
        cursor = resume_cursor(resume_state, dist.world_size) if resume_state else Cursor()
        self.cache = None
        if self.student.side is not None:
            self.cache = AlignmentCache(self.out / "alignment", self.student.side.fingerprint)
        self.stream = BatchStream(labels, train_idx, cfg, dist, cursor,
                                  with_hidden=bool(self.student.layer_map),
                                  dataset=self.cross_batches if self.student.side else None)
        self.steps = total_steps(cfg, self.stream.batches_per_epoch())
        try:
            self.phases = layout_phases(cfg.parsed_phases(), self.steps)
        except ValueError as exc:
            raise ConfigError(f"--phases: {exc}") from None
        self.plan_eval = eval_plan(labels, eval_idx, cfg.batch_tokens, cfg.eval_max_tokens,
                                   cfg.seed)
        self.log = MetricsLog(self.out / "metrics.jsonl", dist.is_main, cfg)
        self.begin(resume_state)
        return self

    def begin(self, resume_state: dict[str, Any] | None) -> None:
        """Restore a checkpoint's weights, optimizer, RNG, alarms and evaluations, or evaluate at step 0."""
        if resume_state:
            self.dist.load_full_state(self.student.module, self.student.optimizer,
                                      resume_state["module"], resume_state["optimizer"])
            restore_rng(resume_state["rng"])
            self.step, self.evals = resume_state["step"], resume_state["evals"]
            self.monitor.load_state_dict(resume_state["alarm_state"])
            self.alarms = resume_state["alarms"]
            self.check_resumed_phase(resume_state["phase"])
            set_fake_quant(self.student.model, fake_quant_on(self.cfg, phase_at(self.phases,
                                                                                self.step)))
            self.log.truncate_after(self.step)
            return
        self.log.truncate_after(-1)
        set_fake_quant(self.student.model, fake_quant_on(self.cfg, phase_at(self.phases, 0)))
        teacher = (teacher_cross_reference(self.cross_batches(self.plan_eval))
                   if self.student.side else teacher_reference(self.labels, self.plan_eval))
        self.evals = {"teacher": teacher, "student_before": self.evaluate()}
        self.log.write({"step": 0, "eval": self.evals["student_before"]})

    def phase_record(self) -> dict[str, Any]:
        """The phase the next step runs in: what a checkpoint records and a resume lands in."""
        phase = phase_at(self.phases, self.step)
        return {"kind": phase.kind, "index": phase.index, "step_in_phase": self.step - phase.start}

    def check_resumed_phase(self, saved: dict[str, Any]) -> None:
        if saved != self.phase_record():
            raise ConfigError(f"--resume: the checkpoint at step {self.step} was in phase "
                              f"{saved}, the phases given put it in {self.phase_record()}")

    def cross_batches(self, plan: list[np.ndarray], hidden: bool = True) -> CrossPlannedBatches:
        layers = self.labels.hidden_layers if hidden and self.student.layer_map else ()
        return CrossPlannedBatches(self.labels, plan, self.student.side, self.cache, layers)

    def evaluate(self) -> dict[str, float]:
        s = self.student
        with self.dist.full_params(s.module):
            if s.side is not None:
                return evaluate_cross(s.model, self.cross_batches(self.plan_eval, False), s.vocab,
                                      self.dist.device, self.amp)
            return evaluate_model(s.model, self.labels, self.plan_eval, s.vocab, self.cfg.loss_chunk,
                                  self.dist.device, self.amp)

    def checkpoint(self) -> dict[str, Any]:
        """Write a checkpoint (rank 0); every rank returns the gathered module state."""
        module_state, optimizer_state = self.dist.full_state(self.student.module,
                                                             self.student.optimizer)
        if self.dist.is_main:
            phase = self.phase_record()
            state = {"module": module_state, "optimizer": optimizer_state,
                     "cursor": {"epoch": self.stream.cursor.epoch,
                                "global_batch": self.stream.cursor.batch * self.dist.world_size},
                     "evals": self.evals, "phase": phase, "alarms": self.alarms,
                     "alarm_state": self.monitor.state_dict()}
            save_checkpoint(self.out / "checkpoints", self.step, state,
                            {"config": self.cfg.to_dict(), "world_size": self.dist.world_size,
                             "phase": phase})
        self.dist.barrier()
        return module_state

    def train(self) -> None:
        """Steps until the total, evaluating and checkpointing on schedule; SIGTERM checkpoints."""
        cfg = self.cfg
        bar = tqdm(total=self.steps, initial=self.step, desc="train", unit="step",
                   dynamic_ncols=True, disable=not self.dist.is_main)
        # The bar is closed (its line ended) before any error is printed below it.
        with PreemptionGuard() as guard, contextlib.closing(bar):
            while self.step < self.steps:
                record = self.optimizer_step()
                if record is None:
                    continue
                bar.update(1)
                bar.set_postfix(phase=record["phase"], loss=f"{record['loss']:.4f}",
                                T=f"{record['temperature']:.2f}",
                                tok_s=f"{record['tokens_per_second']:.0f}")
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.steps:
                    self.log.write({"step": self.step, "eval": self.evaluate()})
                # Ranks must agree to stop together, or one would wait at a barrier forever.
                if self.dist.sum_ints(int(guard.requested))[0]:
                    self.checkpoint()
                    raise Preempted(f"SIGTERM: checkpoint written at step {self.step}")
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.checkpoint()

    def optimizer_step(self) -> dict[str, Any] | None:
        """One optimizer step, logged; None when a non-finite loss made it skip (--on-non-finite)."""
        cfg, s = self.cfg, self.student
        phase = phase_at(self.phases, self.step)
        set_fake_quant(s.model, fake_quant_on(cfg, phase))
        lr = phase_lr(self.phases, self.step, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        temperature = temperature_at(self.step, cfg.kd_temperature,
                                     cfg.final_temperature or cfg.kd_temperature, self.steps,
                                     cfg.temperature_schedule)
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        tick = time.time()
        where = f"epoch {self.stream.cursor.epoch} batch {self.stream.cursor.batch}"
        micro = [to_device(self.stream.next(), self.dist.device) for _ in range(cfg.grad_accum)]
        plan = step_plan(cfg, phase, temperature, len(s.layer_map))
        record = train_step(s.module, micro, cfg, len(s.layer_map), self.dist, self.amp, plan)
        if phase.kind == "hidden":
            drop_frozen_grads(self.frozen)
        # Before clipping; with --grad-clip 0 an infinite bound only measures it.
        record["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
            s.params, cfg.grad_clip or float("inf")))
        peak, total = memory_use(self.dist.device)
        alarms = self.monitor.check(self.step + 1, where, record["loss"], record["grad_norm"],
                                    peak / total)
        if alarms and alarms[0].kind == "non_finite":
            return self.skip_non_finite(alarms[0])
        self.non_finite = 0
        self.raise_alarms(alarms)
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        record |= {"step": self.step, "phase": phase.kind, "lr": lr, "temperature": temperature,
                   "tokens_per_second": record["tokens"] / max(time.time() - tick, 1e-9),
                   "peak_memory_mb": peak / 2**20, "memory_fraction": peak / total}
        if "cosine" in record:
            record["cosine"] = {f"{a}:{b}": c for (a, b), c in zip(s.layer_map.items(),
                                                                    record["cosine"])}
        self.log.write(record)
        return record

    def skip_non_finite(self, alarm: Alarm) -> None:
        """Skip the step's update (--on-non-finite skip) or stop naming the step and batch."""
        self.student.optimizer.zero_grad(set_to_none=True)
        self.non_finite += 1
        self.note_alarm(alarm)
        message = f"non-finite {alarm.message.split(';')[0]} at step {alarm.step} ({alarm.where})"
        if self.cfg.on_non_finite == "stop" or self.non_finite > MAX_SKIPPED_IN_A_ROW:
            raise NonFiniteLoss(message + "; lower --lr or check the labels (kd verify)")
        tqdm.write(f"skipping: {message}")
        return None

    def note_alarm(self, alarm: Alarm) -> None:
        """An alarm is a line on the terminal and in metrics.jsonl, and an entry in report.json."""
        self.alarms.append(alarm.to_dict())
        self.log.write({"step": alarm.step, "alarm": alarm.to_dict()})
        if self.dist.is_main:
            tqdm.write(alarm.line())

    def raise_alarms(self, alarms: list[Alarm]) -> None:
        """Log each alarm; under --alarms stop, checkpoint the last good step and stop."""
        for alarm in alarms:
            self.note_alarm(alarm)
        if alarms and self.cfg.alarms == "stop":
            self.student.optimizer.zero_grad(set_to_none=True)
            self.checkpoint()
            if self.dist.is_main:
                write_report(self.out, self.cfg, self.evals, self.step, 0.0, self.phases,
                             self.alarms)
            raise AlarmStop(f"{alarms[0].line()}; stopped (--alarms stop) with a checkpoint at "
                            f"step {self.step}: --alarms warn goes on, or change the threshold")

    def finish(self, seconds: float) -> None:
        """Final checkpoint and evaluation, then (rank 0) the exported model and the report."""
        final_state = self.checkpoint()
        self.evals["student_after"] = self.evaluate()
        self.log.write({"step": self.step, "eval": self.evals["student_after"]})
        if self.dist.is_main:
            sharded = self.cfg.fsdp and self.dist.world_size > 1
            export_model(exportable(self.student.model, final_state, sharded),
                         self.student.tokenizer, self.out / "model")
            if self.cfg.qat is not None:
                export_quantized(exportable(self.student.model, final_state, sharded),
                                 self.student.tokenizer, self.out / "model-quantized", self.cfg)
            write_report(self.out, self.cfg, self.evals, self.step, seconds, self.phases,
                         self.alarms)
        self.dist.barrier()


def soft_token_weights(cfg: StudentConfig, labels: LabelSet) -> np.ndarray | None:
    """--rare-token-weight: the soft-loss weight of each token, from the training split's targets."""
    if cfg.rare_token_weight is None:
        return None
    train_idx, _ = split_by_prompt(labels.prompt_hash, cfg.eval_fraction, cfg.seed)
    return rare_token_weights(labels, train_idx, cfg.rare_token_weight)


def run_train_student(cfg: StudentConfig) -> TrainResult:
    """Train, checkpoint, evaluate and export; returns what happened."""
    cfg.validate()
    dist = DistContext.from_env()
    start = time.time()
    # Rank 0 alone writes --out, so it alone holds the writer lock.
    with OutputLock(cfg.out) if dist.is_main else contextlib.nullcontext():
        labels = open_label_set(cfg.labels, cfg.verify, cfg.verify_cache)
        require_hidden_states(cfg, labels)
        student = build_trainable(cfg, labels, dist, soft_token_weights(cfg, labels))
        run = TrainingRun(cfg, labels, student, dist).set_up()
        run.train()
        run.finish(time.time() - start)
    return TrainResult(run.out, run.step, run.evals, time.time() - start)


def resume_cursor(state: dict[str, Any], world_size: int) -> Cursor:
    """This rank's cursor from the checkpoint's global position, for any compatible rank count.

    Rank r takes batches r, r + w, ... of an epoch, so after c batches per rank
    the first c * w batches are consumed whatever w was: a run may resume on
    another number of ranks when that position divides evenly among them
    (keep ranks x --grad-accum, the global batch, unchanged).
    """
    epoch, consumed = state["cursor"]["epoch"], state["cursor"]["global_batch"]
    if consumed % world_size:
        raise ConfigError(f"--resume: the checkpoint stopped after {consumed} batches of epoch "
                          f"{epoch}, which {world_size} ranks cannot split evenly; resume on a "
                          "rank count that divides it")
    return Cursor(epoch, consumed // world_size)


def load_resume_state(cfg: StudentConfig, out: Path, world_size: int) -> dict[str, Any] | None:
    """The latest checkpoint's state with --resume; refuse to silently restart over one without.

    A resume must continue the same run: settings outside RESUME_MAY_CHANGE and
    the global batch must equal the checkpoint's, or the error names what differs.
    """
    path = latest_checkpoint(out / "checkpoints")
    if not cfg.resume:
        if path is not None and cfg.overwrite:
            shutil.rmtree(out / "checkpoints")
        elif path is not None:
            raise ConfigError(f"{out} already holds checkpoint {path.name}: pass --resume to "
                              "continue it, --overwrite to start over, or choose another --out")
        return None
    if path is None:  # a requeued job may pass --resume before its first checkpoint
        tqdm.write(f"--resume: no checkpoint under {out / 'checkpoints'} yet: starting at step 0")
        return None
    meta = json.loads((path / "meta.json").read_text())
    cfg.check_resumes(meta["config"])
    saved_batch = meta.get("world_size", 1) * meta["config"]["grad_accum"]
    if saved_batch != world_size * cfg.grad_accum:
        raise ConfigError(f"--resume: the checkpoint's global batch was {saved_batch} "
                          f"micro-batches (ranks x --grad-accum), now {world_size} x "
                          f"{cfg.grad_accum}; keep ranks x --grad-accum equal")
    return load_checkpoint(path)
