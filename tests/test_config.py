import dataclasses

import pytest
from click.testing import CliRunner

from schemas.teacher_config import ConfigError, TeacherConfig, field_docs
from stages.cli.main import main, teacher_labels


@pytest.mark.parametrize("changes,flag", [
    ({"top_k": 0}, "--top-k"),
    ({"max_tokens": 4096, "max_model_len": 2048}, "--max-tokens"),
    ({"top_p": 1.5}, "--top-p"),
    ({"temperature": -1.0}, "--temperature"),
    ({"dtype": "int8"}, "--dtype"),
    ({"temperature": 0.0, "n": 2}, "--n"),
    ({"kv_cache_gib": 0.0}, "--kv-cache-gib"),
    ({"limit": 0}, "--limit"),
    ({"teacher_system_prompt": "  "}, "--teacher-system-prompt"),
    ({"teacher_system_prompt": "Be a pirate.", "hidden_layers": "3"}, "--teacher-system-prompt"),
])
def test_invalid_values_name_the_flag(changes, flag):
    with pytest.raises(ConfigError, match=flag):
        TeacherConfig(**changes).validate()


def test_every_field_has_a_docstring_and_exactly_one_option():
    fields = [f.name for f in dataclasses.fields(TeacherConfig)]
    docs = field_docs(TeacherConfig)
    assert set(docs) == set(fields)
    options = [p.name for p in teacher_labels.params]
    assert sorted(options) == sorted(fields)


def test_cli_rejects_bad_values_before_loading_anything():
    result = CliRunner().invoke(main, ["teacher-labels", "--top-p", "2"])
    assert result.exit_code == 2 and "--top-p" in result.output


def test_prompts_per_shard_rounds_up_to_whole_prompts():
    assert TeacherConfig(shard_size=10, n=4).prompts_per_shard == 3
    assert TeacherConfig(shard_size=8, n=4).prompts_per_shard == 2


@pytest.mark.parametrize("changes,flag", [
    ({"steps": None, "epochs": None}, "--steps"),
    ({"steps": 10, "epochs": 1.0}, "--epochs"),
    ({"alpha": 1.5}, "--alpha"),
    ({"kd_loss": "kl"}, "--kd-loss"),
    ({"tail": "drop"}, "--tail"),
    ({"kd_temperature": 0.0}, "--kd-temperature"),
    ({"eval_fraction": 0.0}, "--eval-fraction"),
    ({"layer_map": "a:b"}, "--layer-map"),
    ({"resume": True, "overwrite": True}, "--resume"),
    ({"batch_tokens": 0}, "--batch-tokens"),
])
def test_student_config_errors_name_the_flag(changes, flag):
    from schemas.student_config import StudentConfig

    with pytest.raises(ConfigError, match=flag):
        StudentConfig(**changes).validate()


def test_student_and_eval_configs_map_one_to_one_onto_options():
    from schemas.student_config import EvalConfig, StudentConfig
    from stages.cli.main import eval_model, train_student

    for cls, command in ((StudentConfig, train_student), (EvalConfig, eval_model)):
        fields = [f.name for f in dataclasses.fields(cls)]
        assert set(field_docs(cls)) == set(fields)
        assert sorted(p.name for p in command.params) == sorted(fields)


def test_repeatable_labels_and_none_thresholds_reach_the_configs(cli_config):
    cfg, _ = cli_config("train-student", "--labels", "a", "--labels", "b")
    assert cfg.labels == ("a", "b")
    cfg, _ = cli_config("teacher-labels", "--max-repetition", "none", "--min-mean-logprob", "-2.5")
    assert cfg.filter_thresholds().max_repetition is None
    assert cfg.filter_thresholds().min_mean_logprob == -2.5


def test_teacher_system_prompt_is_a_flag_and_a_recipe_key_and_part_of_the_identity(
        cli_config, tmp_path):
    cfg, _ = cli_config("teacher-labels", "--teacher-system-prompt", "Be a pirate.")
    assert cfg.teacher_system_prompt == "Be a pirate."
    recipe = tmp_path / "r.yaml"
    recipe.write_text("teacher_system_prompt: Answer in French.\nmode: score\n")
    cfg, _ = cli_config("teacher-labels", "--config", recipe)
    assert (cfg.mode, cfg.teacher_system_prompt) == ("score", "Answer in French.")
    assert cfg.sampling()["teacher_system_prompt"] == "Answer in French."
    # without one, the shards' sampling attribute is the one of earlier builds
    assert "teacher_system_prompt" not in TeacherConfig().sampling()
    assert TeacherConfig(teacher_system_prompt="x").identity() != TeacherConfig().identity()
