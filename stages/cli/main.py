"""The `kd` command line: one entry point for every stage and tool.

    kd teacher-labels --help          # stage 1: vLLM soft labels into shards
    kd train-student --help           # stage 2: train a student from the shards alone
    kd eval --labels DIR --model DIR  # held-out KL, top-1 agreement, NLL against the teacher
    kd verify data/labels/demo        # checksums, schema, invariants
    kd inspect data/labels/demo       # counts, bytes/token, one decoded sample

vLLM is imported only inside the commands that run it, so `kd verify` and
`kd inspect` start fast and work on machines without vLLM.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from schemas.student_config import EvalConfig, StudentConfig
from schemas.teacher_config import TeacherConfig
from stages.cli.config_options import options_from


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """offline-kd: offline two-stage knowledge distillation for LLMs."""


def run_stage(run: Any, cfg: Any, *errors: type[Exception]) -> Any:
    """Run a stage: SIGTERM preemption exits 143, expected failures print one clear line."""
    from schemas.config_base import ConfigError
    from stages.cli.preemption import EXIT_PREEMPTED, Preempted

    try:
        return run(cfg)
    except Preempted as exc:
        click.echo(f"preempted: {exc}", err=True)
        sys.exit(EXIT_PREEMPTED)
    except (ConfigError, FileNotFoundError, *errors) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("teacher-labels")
@options_from(TeacherConfig)
def teacher_labels(cfg: TeacherConfig) -> None:
    """Generate completions with the teacher under vLLM and store top-k soft labels as HDF5 shards."""
    from stages.teacher.labels import NonFiniteError, run_teacher_labels

    click.echo(run_stage(run_teacher_labels, cfg, NonFiniteError).line())


@main.command("train-student")
@options_from(StudentConfig)
def train_student(cfg: StudentConfig) -> None:
    """Train a student from teacher shards alone, export it (Hugging Face format) and evaluate it."""
    from pipeline.student.label_set import LabelSetError
    from pipeline.student.shard_gate import ShardVerificationError
    from stages.student.evaluate import format_table
    from stages.student.train import NonFiniteLoss, run_train_student

    result = run_stage(run_train_student, cfg, LabelSetError, ShardVerificationError, NonFiniteLoss)
    click.echo(format_table(result.evals))
    click.echo(f"train-student: {result.steps} steps in {result.seconds:.0f} s -> {result.out}/model")


@main.command("eval")
@options_from(EvalConfig)
def eval_model(cfg: EvalConfig) -> None:
    """Evaluate a model on the labels' held-out split (or --all): KL to the teacher, top-1
    agreement, NLL, perplexity, and how many labelled positions were read."""
    from pipeline.student.label_set import LabelSetError
    from pipeline.student.shard_gate import ShardVerificationError
    from schemas.config_base import ConfigError
    from stages.student.evaluate import format_table, run_eval

    try:
        click.echo(format_table(run_eval(cfg)))
    except (ConfigError, LabelSetError, ShardVerificationError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


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
                   f"{t['completion_tokens']} completion tokens{note}")
        for name in orphan_files(d, manifest):
            click.echo(f"note: {Path(d) / name} is not in the manifest (left by an interrupted run; "
                       "ignored by readers, replaced on resume)")
    if found.problems:
        click.echo(f"FAIL\n{describe(found.problems)}", err=True)
        sys.exit(1)
    click.echo(f"OK: {len(found.manifests)} output(s) verified")


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


if __name__ == "__main__":
    main()
