"""`make context-demo`'s wiring, read from `make -n` (nothing runs): the two arms differ in the
teacher's context only, and the evaluation reads both students in the student's view."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

RULE = "Réponds en français."


@pytest.fixture(scope="module")
def commands() -> list[list[str]]:
    if shutil.which("make") is None:
        pytest.skip("no make")
    out = subprocess.run(
        ["make", "-n", "--no-print-directory", "--old-file=.venv/.installed",
         "--old-file=data/models/smollm2-135m-instruct/.converted", "context-demo", "KD=kd",
         "PY=python", "CONTEXT_DIR=D", f"CONTEXT_RULE={RULE}", "CONTEXT_SEED=7"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    script = out.replace("\\\n", " ")
    return [shlex.split(line) for line in script.splitlines() if line.strip()]


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_the_arms_differ_in_the_teachers_context_only(commands):
    labels = [c for c in commands if c[:2] == ["kd", "teacher-labels"]]
    assert [flag(c, "--out") for c in labels] == ["D/labels-with-context", "D/labels-without"]
    with_context, without = labels
    assert flag(with_context, "--teacher-system-prompt") == RULE
    assert "--teacher-system-prompt" not in without and "--system-prompt" not in with_context
    i = with_context.index("--teacher-system-prompt")
    assert with_context[:i] + with_context[i + 2:] == \
        [a.replace("D/labels-without", "D/labels-with-context") for a in without]
    assert flag(without, "--seed") == "7" and "--no-drop-truncated" in without


def test_both_students_train_alike_and_are_evaluated(commands):
    loop = next(c for c in commands if c[:1] == ["for"])
    assert loop[1:6] == ["arm", "in", "with-context", "without;", "do"]
    train = loop[loop.index("kd"):]
    assert flag(train, "--labels") == "D/labels-$arm" and flag(train, "--out") == "D/student-$arm"
    assert flag(train, "--seed") == "7"
    evaluate = next(c for c in commands if c[:3] == ["python", "-m", "stages.student.rule_answers"])
    assert flag(evaluate, "--teacher-system-prompt") == RULE
    models = [evaluate[i + 1] for i, a in enumerate(evaluate) if a == "--model"]
    assert models[-2:] == ["student from labels behind the context=D/student-with-context/model",
                           "student from labels without it=D/student-without/model"]
    assert flag(evaluate, "--output") == "D/rule_rates.json"


def test_every_evaluated_row_names_the_model_the_makefile_means(commands):
    """Row names may hold "=" ("teacher without it = student before training"); the model path
    parsed by rule_answers must be the directory after the last one."""
    from stages.student.rule_answers import named

    evaluate = next(c for c in commands if c[:3] == ["python", "-m", "stages.student.rule_answers"])
    rows = [named(evaluate[i + 1], a) for i, a in enumerate(evaluate)
            if a in ("--model", "--context-model")]
    teacher = "data/models/smollm2-135m-instruct"
    assert [path for _, path in rows] == [teacher, teacher, "D/student-with-context/model",
                                          "D/student-without/model"]
    assert rows[1][0] == "teacher without it = student before training"
