"""YAML recipes: every shipped recipe loads and validates, `--config` builds the same config as
`load_recipe`, flags given on the command line win, unknown keys are refused by name, the
demo recipes equal what the Makefile runs, and the old `--temperature` of the student still
works with a warning.

Validation here is `Config.validate()`: values and their combinations. It never opens the
model, prompt or label paths (the run does), so the cluster recipes validate on any machine.
"""

import shlex
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from schemas.config_base import AUTO, ConfigError
from schemas.config_file import load_recipe, recipe_values
from schemas.student_config import StudentConfig
from schemas.student_samples_config import StudentSamplesConfig
from schemas.teacher_config import TeacherConfig
from stages.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"demo-teacher.yaml": TeacherConfig, "score-sft.yaml": TeacherConfig,
           "cluster-70b-teacher.yaml": TeacherConfig, "demo-student.yaml": StudentConfig,
           "cluster-8b-student.yaml": StudentConfig}
COMMANDS = {TeacherConfig: "teacher-labels", StudentConfig: "train-student",
            StudentSamplesConfig: "student-samples"}


def test_every_shipped_recipe_is_checked():
    assert sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")) == sorted(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_loads_validates_and_the_cli_builds_the_same_config(name, cli_config):
    cls = RECIPES[name]
    path = ROOT / "recipes" / name
    cfg = load_recipe(cls, path)
    assert isinstance(cfg, cls)
    via_cli, _ = cli_config(COMMANDS[cls], "--config", path)
    assert via_cli.to_dict() == cfg.to_dict()
    keys, _ = recipe_values(cls, path.read_text(), name)
    assert all(getattr(cfg, k) == v for k, v in keys.items())  # nothing in the file was lost


def makefile_command(target, *variables):
    """The `kd` command line `make TARGET` runs (dry run), without the `.venv/bin/kd`."""
    out = subprocess.run(["make", "-n", "--no-print-directory", target, *variables], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    line = next(c for c in out.replace("\\\n", " ").splitlines() if f"kd {target} " in c)
    return shlex.split(line)[1:]


@pytest.mark.parametrize("name,target,variables", [
    ("demo-teacher.yaml", "teacher-labels", ()),
    ("demo-student.yaml", "train-student", ("LABELS=data/labels/demo data/labels/corpus-train",)),
])
def test_demo_recipes_equal_what_the_makefile_runs(name, target, variables, cli_config):
    from_make, _ = cli_config(*makefile_command(target, *variables))
    from_recipe, _ = cli_config(target, "--config", ROOT / "recipes" / name)
    assert from_recipe.to_dict() == from_make.to_dict()


def test_flags_given_override_the_recipe_even_at_their_default(tmp_path, cli_config):
    recipe = tmp_path / "t.yaml"
    recipe.write_text("top_k: 5\nlimit: 7\nprompts: p.jsonl\nmax_repetition: null\n")
    cfg, _ = cli_config("teacher-labels", "--config", recipe)
    assert (cfg.top_k, cfg.limit, cfg.prompts, cfg.max_repetition) == (5, 7, "p.jsonl", None)
    cfg, _ = cli_config("teacher-labels", "--config", recipe, "--top-k", "20", "--max-repetition",
                   "auto")
    assert (cfg.top_k, cfg.limit, cfg.max_repetition) == (20, 7, AUTO)  # 20 is the default


def test_a_repeatable_flag_replaces_the_recipes_list(tmp_path, cli_config):
    recipe = tmp_path / "s.yaml"
    recipe.write_text("labels: [a, b]\nsteps: 3\nfsdp: true\n")
    cfg, _ = cli_config("train-student", "--config", recipe)
    assert (cfg.labels, cfg.steps, cfg.fsdp) == (("a", "b"), 3, True)
    cfg, _ = cli_config("train-student", "--config", recipe, "--labels", "c", "--no-fsdp")
    assert (cfg.labels, cfg.steps, cfg.fsdp) == (("c",), 3, False)


def test_student_samples_takes_a_recipe(tmp_path, cli_config):
    recipe = tmp_path / "ss.yaml"
    recipe.write_text("model: m\nmax_tokens: 32\n")
    cfg, _ = cli_config("student-samples", "--config", recipe, "--seed", "3")
    assert (cfg.model, cfg.max_tokens, cfg.seed) == ("m", 32, 3)


def test_unknown_keys_are_refused_all_named_with_the_nearest_field(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("top-k: 5\nmax_token: 9\nfrobnicate: 1\n")
    result = CliRunner().invoke(main, ["teacher-labels", "--config", str(recipe)])
    assert result.exit_code == 2
    assert "unknown keys top-k (did you mean top_k?), max_token (did you mean max_tokens?), " \
           "frobnicate;" in result.output and str(recipe) in result.output


@pytest.mark.parametrize("text,error", [
    ("steps: 1.5", "steps: expected an integer, got 1.5"),
    ("steps: true", "steps: expected an integer, got True"),
    ("fsdp: 1", "fsdp: expected true or false, got 1"),
    ("lr: fast", "lr: expected a number, got 'fast'"),
    ("batch_tokens: null", "batch_tokens: null is not allowed"),
    ("- steps: 3", "a recipe is a mapping"),
    ("steps: [1", "not valid YAML"),
    ("temperature: 2\nkd_temperature: 2", "give kd_temperature only"),
])
def test_bad_values_name_the_file_and_key(text, error):
    with pytest.raises(ConfigError) as caught:
        recipe_values(StudentConfig, text, "r.yaml")
    assert error in str(caught.value) and str(caught.value).startswith("r.yaml: ")


def test_values_read_as_the_command_line_reads_them():
    values, _ = recipe_values(StudentConfig, "lr: 2e-4\nlabels: one\nmax_grad_norm_alarm: none\n"
                                             "steps: null\nepochs: 2\nseed: '4'", "r.yaml")
    assert values == {"lr": 2e-4, "labels": ("one",), "max_grad_norm_alarm": None,
                      "steps": None, "epochs": 2.0, "seed": 4}
    assert isinstance(values["epochs"], float)


def test_a_missing_recipe_is_one_line_naming_it(tmp_path):
    result = CliRunner().invoke(main, ["train-student", "--config", str(tmp_path / "no.yaml")])
    assert result.exit_code == 2 and "no.yaml" in result.output
    assert "Traceback" not in result.output


def test_the_old_student_temperature_flag_works_with_a_warning(cli_config):
    cfg, output = cli_config("train-student", "--temperature", "3")
    assert cfg.kd_temperature == 3.0
    assert "warning: --temperature is deprecated here; use --kd-temperature" in output
    cfg, output = cli_config("train-student", "--kd-temperature", "2")
    assert cfg.kd_temperature == 2.0 and "deprecated" not in output
    both = CliRunner().invoke(main, ["train-student", "--temperature", "3", "--kd-temperature", "2"])
    assert both.exit_code == 2 and "give --kd-temperature only" in both.output


def test_the_old_recipe_key_works_with_a_warning_and_loses_to_a_flag(tmp_path, cli_config):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("temperature: 4\n")
    cfg, output = cli_config("train-student", "--config", recipe)
    assert cfg.kd_temperature == 4.0 and "key temperature is deprecated; it is now " \
        "kd_temperature" in output
    cfg, _ = cli_config("train-student", "--config", recipe, "--kd-temperature", "1")
    assert cfg.kd_temperature == 1.0
    with pytest.warns(DeprecationWarning, match="kd_temperature"):
        assert load_recipe(StudentConfig, recipe).kd_temperature == 4.0


def test_the_teachers_temperature_is_still_the_sampling_temperature(cli_config):
    cfg, output = cli_config("teacher-labels", "--temperature", "0.5")
    assert cfg.temperature == 0.5 and "deprecated" not in output


def test_a_checkpoint_saved_with_the_old_key_still_guards_the_temperature():
    saved = StudentConfig(kd_temperature=2.0).to_dict()
    saved["temperature"] = saved.pop("kd_temperature")  # student_config.json before the rename
    StudentConfig(kd_temperature=2.0).check_resumes(saved)
    with pytest.raises(ConfigError, match="--kd-temperature was 2.0"):
        StudentConfig(kd_temperature=1.0).check_resumes(saved)
