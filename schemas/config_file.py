"""Read a stage's typed config from a YAML recipe (`kd train-student --config FILE.yaml`).

A recipe is a YAML mapping whose keys are the config's field names (the flag
without its leading dashes, words joined by `_`) and whose values are what the
flag would take: numbers, text, `true`/`false` for switches, a list for a
repeatable flag, `null` (or `none`) to switch an optional threshold off.
Unknown keys are refused, all of them named, each with the nearest field; an
old field name (a config's RENAMED) is read as its new one with a warning.
Flags given on the command line override the recipe (`stages.cli.config_options`).

    >>> from schemas.student_config import StudentConfig
    >>> values, notes = recipe_values(StudentConfig, "labels: [a, b]\\nsteps: 10\\nlr: 1e-4", "r.yaml")
    >>> values
    {'labels': ('a', 'b'), 'steps': 10, 'lr': 0.0001}
    >>> recipe_values(StudentConfig, "step: 10", "r.yaml")
    Traceback (most recent call last):
    ...
    schemas.config_base.ConfigError: r.yaml: unknown key step (did you mean steps?); the keys are StudentConfig's field names
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
import warnings
from pathlib import Path
from typing import Any, TypeVar

import yaml

from schemas.config_base import AUTO, ConfigError

Config = TypeVar("Config")


def load_recipe(cls: type[Config], path: str | Path, **overrides: Any) -> Config:
    """The validated config of recipe `path`, fields in `overrides` replacing the recipe's
    (what the CLI does with flags given on the command line)."""
    values, notes = read_recipe(cls, path)
    for note in notes:
        warnings.warn(note, DeprecationWarning, stacklevel=2)
    return cls(**(values | overrides)).validate()


def read_recipe(cls: type, path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """(field values, deprecation notes) of recipe file `path` for config class `cls`."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    return recipe_values(cls, text, str(path))


def recipe_values(cls: type, text: str, source: str) -> tuple[dict[str, Any], list[str]]:
    """Parse and check a recipe's YAML `text` (`source` names it in errors)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a mapping of field names to values, "
                          f"got {type(data).__name__}")
    check_keys(cls, data, source)
    renamed = getattr(cls, "RENAMED", {})
    notes = [f"{source}: key {key} is deprecated; it is now {renamed[key]}"
             for key in data if key in renamed]
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        name = renamed.get(key, key)
        values[name] = field_value(f"{source}: {key}", hints[name], defaults[name], value)
    return values, notes


def check_keys(cls: type, data: dict[Any, Any], source: str) -> None:
    """Refuse keys that are not fields (naming all of them, each with the nearest field) and an
    old name given with its new one."""
    names = [f.name for f in dataclasses.fields(cls)]
    renamed = getattr(cls, "RENAMED", {})
    by_flag = {f[2:].replace("-", "_"): name for name, f in getattr(cls, "FLAGS", {}).items()}
    unknown = [key for key in data if key not in names and key not in renamed]
    if unknown:
        described = []
        for key in unknown:
            guess = by_flag.get(str(key).replace("-", "_")) or next(iter(difflib.get_close_matches(
                str(key).replace("-", "_"), names, n=1, cutoff=0.6)), None)
            described.append(f"{key} (did you mean {guess}?)" if guess else str(key))
        raise ConfigError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(described)}; the keys are {cls.__name__}'s field names")
    for old, new in renamed.items():
        if old in data and new in data:
            raise ConfigError(f"{source}: give {new} only ({old} is its deprecated name)")


def field_value(where: str, annotation: Any, default: Any, value: Any) -> Any:
    """A YAML value as the field's type, read as the flag would read it; errors name `where`."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) \
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) else annotation
    if value is None or (optional and base in (int, float) and isinstance(value, str)
                         and value.lower() in ("none", "off")):
        if optional or default is None:
            return None
        raise ConfigError(f"{where}: null is not allowed here (a {type_name(base)})")
    if default == AUTO and isinstance(value, str) and value.lower() == AUTO:
        return AUTO
    if typing.get_origin(base) is tuple:
        items = value if isinstance(value, list) else [value]
        return tuple(field_value(where, str, None, item) for item in items)
    if base is bool:
        if isinstance(value, bool):
            return value
    elif isinstance(value, (bool, list, dict)):
        pass
    elif base is str and isinstance(value, (str, int, float)):
        return str(value)
    elif (base is int and isinstance(value, (int, str))) or \
            (base is float and isinstance(value, (int, float, str))):
        try:  # YAML reads 2e-4 (no dot) as text; the command line reads it as a number
            return base(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected {type_name(base)}, got {value!r}")


def type_name(base: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(
        base, str(base))
