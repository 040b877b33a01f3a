"""Resume safety runs one way: each stage lists the fields a resume MAY change, every other
field is identity. Checked by changing each field in turn (an independent oracle: does the
output's identity, or the checkpoint check, notice?), and by adding a field to the dataclass.
"""

import dataclasses
import typing
from dataclasses import dataclass

import pytest

from schemas.config_base import AUTO, ConfigError, identity_fields
from schemas.student_config import RESUME_MAY_CHANGE as STUDENT_MAY_CHANGE
from schemas.student_config import StudentConfig
from schemas.student_samples_config import RESUME_MAY_CHANGE as SAMPLES_MAY_CHANGE
from schemas.student_samples_config import StudentSamplesConfig
from schemas.teacher_config import RESUME_MAY_CHANGE as TEACHER_MAY_CHANGE
from schemas.teacher_config import TeacherConfig


def another_value(cfg, name):
    """A value of field `name` different from cfg's (validity is not needed: identity and the
    resume check read values, they do not validate them)."""
    value, hint = getattr(cfg, name), typing.get_type_hints(type(cfg))[name]
    choices = getattr(type(cfg), "CHOICES", {}).get(name)
    if choices:
        return next(c for c in choices if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, tuple):
        return value + ("another",)
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.125
    if value is None or value == AUTO:
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        return {int: 3, float: 0.25, str: "1"}[inner]
    return value + "-another"


# Bases where every mode- or format-dependent field is in use somewhere.
TEACHER_BASES = [TeacherConfig(), TeacherConfig(mode="score"), TeacherConfig(label_kind="sampled"),
                 TeacherConfig(hidden_format="pca", hidden_layers="1")]


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(TeacherConfig)])
def test_a_teacher_field_is_identity_unless_listed_as_may_change(name):
    noticed = [base.identity() != dataclasses.replace(base, **{name: another_value(base, name)}
                                                      ).identity() for base in TEACHER_BASES]
    assert any(noticed) == (name not in TEACHER_MAY_CHANGE)


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(StudentConfig)])
def test_a_student_field_is_checked_on_resume_unless_listed_as_may_change(name):
    saved = StudentConfig().to_dict()
    changed = dataclasses.replace(StudentConfig(), **{name: another_value(StudentConfig(), name)})
    if name in STUDENT_MAY_CHANGE:
        changed.check_resumes(saved)
    else:
        with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} was"):
            changed.check_resumes(saved)


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(StudentSamplesConfig)])
def test_a_student_samples_field_is_identity_unless_listed_as_may_change(name):
    base = StudentSamplesConfig()
    changed = dataclasses.replace(base, **{name: another_value(base, name)})
    assert (changed.identity() != base.identity()) == (name not in SAMPLES_MAY_CHANGE)


@dataclass
class TeacherWithNewField(TeacherConfig):
    new_knob: int = 3


@dataclass
class StudentWithNewField(StudentConfig):
    new_knob: int = 3


@dataclass
class SamplesWithNewField(StudentSamplesConfig):
    new_knob: int = 3


def test_a_field_added_later_is_protected_by_default():
    assert "new_knob" in identity_fields(TeacherWithNewField, TEACHER_MAY_CHANGE)
    assert TeacherWithNewField(new_knob=4).identity() != TeacherWithNewField().identity()
    assert SamplesWithNewField(new_knob=4).identity() != SamplesWithNewField().identity()
    with pytest.raises(ConfigError, match="--new-knob was 3 when the checkpoint was written"):
        StudentWithNewField(new_knob=4).check_resumes(StudentWithNewField().to_dict())


def test_a_checkpoint_older_than_a_field_resumes_with_any_value():
    StudentWithNewField(new_knob=4).check_resumes(StudentConfig().to_dict())


def test_may_change_lists_only_fields():
    for cls, may_change in ((TeacherConfig, TEACHER_MAY_CHANGE), (StudentConfig, STUDENT_MAY_CHANGE),
                            (StudentSamplesConfig, SAMPLES_MAY_CHANGE)):
        assert identity_fields(cls, may_change)  # raises on a name that is not a field
    with pytest.raises(TypeError, match="not_a_field"):
        identity_fields(TeacherConfig, {"not_a_field"})
