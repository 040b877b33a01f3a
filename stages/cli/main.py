"""The `kd` command line: one entry point for every stage and tool.

    kd teacher-labels --help          # stage 1: vLLM soft labels into shards
    kd train-student --help           # stage 2: train a student from the shards alone
    kd eval --labels DIR --model DIR  # held-out KL, top-1 agreement, NLL against the teacher
    kd verify data/labels/demo        # checksums, schema, invariants
    kd inspect data/labels/demo       # counts, bytes/token, one decoded sample
    kd export --labels DIR --format axolotl|distillkit|parquet --out DIR   # other trainers
    kd import --format distillkit --in DIR --teacher DIR --out DIR        # DistillKit datasets
    kd merge-labels --labels A --labels B --weights 0.7,0.3 --out M       # teacher ensemble
    kd student-samples --model DIR --prompts P --out S   # on-policy: the student's completions
    kd export-model --model DIR --quant q8_0 --out M.gguf   # deploy: GGUF for llama.cpp, Ollama
    kd add-text-layout data/labels/old  # give a pre-v3 output its text layout (cross-tokenizer)

vLLM is imported only inside the commands that run it, so `kd verify` and
`kd inspect` start fast and work on machines without vLLM.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from schemas.deploy_config import ModelExportConfig
from schemas.interop_config import ExportConfig, ImportConfig
from schemas.merge_config import MergeConfig
from schemas.student_config import EvalConfig, StudentConfig
from schemas.student_samples_config import StudentSamplesConfig
from schemas.teacher_config import TeacherConfig
from stages.cli.config_options import ConfigCommand, options_from
from stages.cli.child_process import install as die_with_parent_in_children
from stages.cli.engine_logs import quiet_library_loggers
from stages.cli.faults import resume_command, student_committed, teacher_committed

# At import: a spawned engine process re-imports this module first of all (child_process).
die_with_parent_in_children()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--verbose", is_flag=True, help="Print the vLLM engine's INFO log (otherwise in <out>/engine.log) and the traceback of an environment fault.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """offline-kd: offline two-stage knowledge distillation for LLMs.

    Exit status: 0 done, 1 refused (bad input or settings, named), 2 bad usage,
    74 the environment failed (disk, permissions, I/O, memory: fix it and run the
    printed resume command), 75 another run writes the same output, 143 preempted
    (SIGTERM: run the printed resume command)."""
    ctx.obj = {"verbose": verbose}
    if not verbose:
        quiet_library_loggers()


main.command_class = ConfigCommand  # --config FILE.yaml and old flag spellings, beside --help


@dataclass(frozen=True)
class Stage:
    """How the CLI runs one stage: its function, what it reports as committed, how it resumes."""

    name: str
    run: Callable[[Any], Any]
    committed: Callable[[str], str]
    resume_add: tuple[str, ...] = ()
    resume_drop: tuple[str, ...] = ()


def run_stage(stage: Stage, cfg: Any, *errors: type[Exception]) -> Any:
    """Run a stage: expected failures print one line; preemption and environment faults also
    say what is committed and how to resume, each with its own exit status."""
    from pipeline.store.output_lock import OutputLocked
    from schemas.config_base import ConfigError
    from stages.cli.engine_logs import ENGINE_LOG
    from stages.cli.faults import EXIT_ENVIRONMENT, EXIT_LOCKED, environment_error, fault_path
    from stages.cli.preemption import EXIT_PREEMPTED, Preempted

    resume = resume_command(stage.resume_add, stage.resume_drop)
    try:
        return stage.run(cfg)
    except Preempted as exc:
        click.echo(f"preempted: {exc}; committed: {stage.committed(cfg.out)}", err=True)
        click.echo(f"resume with: {resume}", err=True)
        sys.exit(EXIT_PREEMPTED)
    except OutputLocked as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_LOCKED)
    except (ConfigError, *errors) as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        found = environment_error(exc, Path(cfg.out) / ENGINE_LOG)
        if found is None:
            raise
        fault, cause = found
        if click.get_current_context().find_root().obj.get("verbose"):
            traceback.print_exc()
        click.echo(f"kd {stage.name}: {cause}: {fault_path(fault, cfg.out)}. Committed: "
                   f"{stage.committed(cfg.out)}. Resume with: {resume}", err=True)
        sys.exit(EXIT_ENVIRONMENT)


def echo_or_refuse(run: Callable[[], str], *refusals: type[Exception]) -> None:
    """Print what a tool returns; an expected refusal (bad input, named) is one line, exit 1."""
    from schemas.config_base import ConfigError

    try:
        click.echo(run())
    except (ConfigError, *refusals) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("teacher-labels")
@options_from(TeacherConfig)
def teacher_labels(cfg: TeacherConfig) -> None:
    """Store the teacher's top-k soft labels as HDF5 shards, on completions it generates under
    vLLM (--mode generate) or teacher-forced on given text, chats or completions (--mode score)."""
    from stages.cli.engine_logs import route_engine_logs

    log = route_engine_logs(cfg.out, click.get_current_context().find_root().obj["verbose"])
    from pipeline.teacher.prompts import NoUsableInput
    from stages.teacher.labels import NonFiniteError, run_teacher_labels

    stage = Stage("teacher-labels", run_teacher_labels, teacher_committed)
    click.echo(run_stage(stage, cfg, NonFiniteError, NoUsableInput).line())
    if log is not None:
        click.echo(f"engine log: {log} (kd --verbose teacher-labels ... prints it instead)")


@main.command("student-samples")
@options_from(StudentSamplesConfig)
def student_samples(cfg: StudentSamplesConfig) -> None:
    """Write the student's completions of the prompts under vLLM, with its logprob of every
    sampled token, as records for `kd teacher-labels --mode score` (on-policy rounds)."""
    from stages.cli.engine_logs import route_engine_logs

    log = route_engine_logs(cfg.out, click.get_current_context().find_root().obj["verbose"])
    from pipeline.teacher.prompts import NoUsableInput
    from stages.teacher.student_samples import run_student_samples, samples_committed

    stage = Stage("student-samples", run_student_samples, samples_committed)
    click.echo(run_stage(stage, cfg, NoUsableInput).line())
    if log is not None:
        click.echo(f"engine log: {log} (kd --verbose student-samples ... prints it instead)")


@main.command("train-student")
@options_from(StudentConfig)
def train_student(cfg: StudentConfig) -> None:
    """Train a student from teacher shards alone, export it (Hugging Face format) and evaluate it."""
    from pipeline.student.label_set import LabelSetError
    from pipeline.student.shard_gate import ShardVerificationError
    from stages.cli.engine_logs import quiet_transformers
    from stages.student.evaluate import format_table
    from stages.student.train import AlarmStop, NonFiniteLoss, run_train_student

    quiet_transformers(click.get_current_context().find_root().obj["verbose"])
    stage = Stage("train-student", run_train_student, student_committed, ("--resume",),
                  ("--overwrite",))
    result = run_stage(stage, cfg, LabelSetError, ShardVerificationError, NonFiniteLoss, AlarmStop)
    click.echo(format_table(result.evals))
    click.echo(f"train-student: {result.steps} steps in {result.seconds:.0f} s -> {result.out}/model")


@main.command("eval")
@options_from(EvalConfig)
def eval_model(cfg: EvalConfig) -> None:
    """Evaluate a model on the labels' held-out split (or --all): KL to the teacher, top-1
    agreement, NLL, perplexity, and how many labelled positions were read."""
    from pipeline.student.label_set import LabelSetError
    from pipeline.student.shard_gate import ShardVerificationError
    from stages.cli.engine_logs import quiet_transformers
    from stages.student.evaluate import format_table, run_eval, views_note

    quiet_transformers(click.get_current_context().find_root().obj["verbose"])
    echo_or_refuse(lambda: format_table(run_eval(cfg)) + views_note(cfg.labels), LabelSetError,
                   ShardVerificationError, OSError)


@main.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--no-checksum", is_flag=True, help="Skip sha256 checks (structure and values only).")
def verify(dirs: tuple[Path, ...], no_checksum: bool) -> None:
    """Check every shard of one or more output directories (read together: they must agree on
    teacher, tokenizer, k and hidden layers, and hold disjoint samples); exit 1 naming each problem."""
    from pipeline.store.verify import describe, orphan_files, verify_outputs

    found = verify_outputs(dirs, "no-checksum" if no_checksum else "full")
    for d, manifest in found.manifests.items():
        t = manifest.totals()
        note = "" if manifest.complete else " (run not complete: resume with the same command)"
        click.echo(f"{d}: {t['shards']} shards, {t['samples']} samples, "
                   f"{t['completion_tokens']} labelled tokens{note}")
        for name in orphan_files(d, manifest):
            click.echo(f"note: {Path(d) / name} is not in the manifest (left by an interrupted run; "
                       "ignored by readers, replaced on resume)")
    for note in found.notes:
        click.echo(f"note: {note}")
    if found.problems:
        click.echo(f"FAIL\n{describe(found.problems)}", err=True)
        sys.exit(1)
    click.echo(f"OK: {len(found.manifests)} output(s) verified")


@main.command("add-text-layout")
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--tokenizer", default=None, help="The teacher's tokenizer folder (default: "
              "OUT_DIR/tokenizer/, else the manifest's teacher path).")
def add_text_layout(out_dir: Path, tokenizer: str | None) -> None:
    """Add the schema v3 text layout (token byte lengths, text regions) to an older output,
    from its token ids and the teacher's tokenizer alone, so students of other tokenizers
    can learn from it. Shards are rewritten atomically; rerun to finish an interrupted run."""
    from pipeline.store.manifest import ManifestError
    from pipeline.store.output_lock import OutputLocked
    from pipeline.teacher.add_text_layout import LayoutRefused, run_add_text_layout
    from pipeline.teacher.chatml_layout import LayoutUnparsable

    echo_or_refuse(lambda: run_add_text_layout(out_dir, tokenizer).line(), LayoutRefused,
                   LayoutUnparsable, ManifestError, OutputLocked)


@main.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--sample", "sample_index", default=0, show_default=True,
              help="Which sample (0-based, over the whole output) to decode.")
@click.option("--positions", default=3, show_default=True,
              help="How many completion positions to show with their top-k alternatives.")
def inspect(out_dir: Path, sample_index: int, positions: int) -> None:
    """Summarise an output directory and decode one sample with its top-k alternatives."""
    from pipeline.store.manifest import ManifestError
    from pipeline.store.summary import summarise_output

    try:
        click.echo(summarise_output(out_dir, sample_index, positions))
    except (ManifestError, IndexError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("export")
@options_from(ExportConfig)
def export_labels(cfg: ExportConfig) -> None:
    """Write labels for another trainer: axolotl's KD trainer (pre-tokenized Parquet), DistillKit
    (compressed-logit Parquet), a plain Parquet view (pyarrow, Hugging Face datasets) or
    speculators' offline EAGLE-3 data (from a --hidden-layers eagle3 output)."""
    from pipeline.student.label_set import LabelSetError
    from pipeline.student.shard_gate import ShardVerificationError
    from stages.interop.label_export import run_export

    echo_or_refuse(lambda: run_export(cfg).line(), LabelSetError, ShardVerificationError)


@main.command("import")
@options_from(ImportConfig)
def import_labels(cfg: ImportConfig) -> None:
    """Decode a DistillKit compressed-logit dataset (any compression setting) into an ordinary
    offline-kd output that kd verify and kd train-student read."""
    from pipeline.interop.distillkit_config import DistillKitFormatError
    from stages.interop.import_distillkit import run_import

    echo_or_refuse(lambda: run_import(cfg).line(), DistillKitFormatError, OSError)


@main.command("merge-labels")
@options_from(MergeConfig)
def merge_labels(cfg: MergeConfig) -> None:
    """Mix several teachers' outputs of the same samples into one output (a teacher ensemble):
    weighted mean of probabilities (--mix-rule mean) or of logprobs, renormalised (geometric)."""
    from pipeline.store.manifest import ManifestError
    from pipeline.store.output_alignment import MisalignedOutputs
    from stages.teacher.merge_labels import run_merge

    echo_or_refuse(lambda: run_merge(cfg).line(), ManifestError, MisalignedOutputs)


@main.command("export-model")
@options_from(ModelExportConfig)
def export_model(cfg: ModelExportConfig) -> None:
    """Write a trained student as a GGUF file (llama.cpp, Ollama) with its tokenizer and chat
    template, through llama.cpp's own converter: f32, f16, bf16 or q8_0 weights."""
    from pipeline.interop.gguf_model import GGUFExportError
    from stages.interop.export_gguf import run_export_model

    echo_or_refuse(lambda: f"{cfg.out}: {run_export_model(cfg).line()}", GGUFExportError)


if __name__ == "__main__":
    main()
