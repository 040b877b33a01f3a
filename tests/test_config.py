import dataclasses

import pytest
from click.testing import CliRunner

from schemas.teacher_config import ConfigError, TeacherConfig, field_docs
from stages.cli import main, teacher_labels


@pytest.mark.parametrize("changes,flag", [
    ({"top_k": 0}, "--top-k"),
    ({"max_tokens": 4096, "max_model_len": 2048}, "--max-tokens"),
    ({"top_p": 1.5}, "--top-p"),
    ({"temperature": -1.0}, "--temperature"),
    ({"dtype": "int8"}, "--dtype"),
    ({"temperature": 0.0, "n": 2}, "--n"),
    ({"kv_cache_gib": 0.0}, "--kv-cache-gib"),
    ({"limit": 0}, "--limit"),
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
