"""Map a config dataclass one-to-one onto click options, and read it from a YAML recipe.

Each field becomes `--field-name` with the field's docstring as help text,
its default shown, and its type taken from the annotation (a `click.Choice` of
the config's CHOICES where it lists the field); bool fields become
`--flag/--no-flag` switches. The command receives a ready, validated config.

A `ConfigCommand` (the `kd` group's command class) adds two kinds of options
that are not fields, the way click adds `--help`: `--config FILE.yaml`, a
recipe of field values (`schemas.config_file`) that flags given on the command
line override, and the old spellings in the config's RENAMED, accepted with a
warning.

    @main.command()            # main.command_class = ConfigCommand
    @options_from(TeacherConfig)
    def teacher_labels(cfg: TeacherConfig): ...
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Callable

import click
from click.core import ParameterSource

from schemas.config_base import AUTO, ConfigError, field_docs
from schemas.config_base import flag as flag_of
from schemas.config_file import read_recipe

CONFIG_PARAM = "config_recipe"
"""Parameter name of --config (a name no config field has)."""

CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING}


class OrNone(click.ParamType):
    """A number that may also be switched off with `none` (for `float | None` fields), and
    left to the config with `auto` where that is the field's default."""

    def __init__(self, inner: click.ParamType, auto: bool = False):
        self.inner, self.auto = inner, auto
        self.name = f"{inner.name}|none" + ("|auto" if auto else "")

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "off")):
            return None
        if self.auto and isinstance(value, str) and value.lower() == AUTO:
            return AUTO
        return self.inner.convert(value, param, ctx)


def option_type(annotation: Any, default: Any = None) -> Any:
    """click type of a field annotation; numeric `X | None` also accepts `none` (and `auto`
    when that is the default)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    inner = CLICK_TYPES.get(base, click.STRING)
    optional = type(None) in typing.get_args(annotation)
    return OrNone(inner, default == AUTO) if optional and base in (int, float) else inner


def old_name_param(name: str) -> str:
    return f"renamed_{name}"


class ConfigCommand(click.Command):
    """A command whose callback `options_from` built: --config and the config's old flag
    spellings come from get_params (as --help does), so `.params` stays one option per field."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cls = getattr(self.callback, "config_class", None)
        self.extra_params = [] if cls is None else [
            click.Option(["--config", CONFIG_PARAM], type=click.Path(dir_okay=False),
                         help="YAML recipe of this command's settings, keyed by field name "
                              "(the flag with _ for -); flags given here override it."),
            *(click.Option([flag_of(old), old_name_param(old)], hidden=True,
                           type=option_type(typing.get_type_hints(cls)[new]))
              for old, new in getattr(cls, "RENAMED", {}).items())]

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return [*self.extra_params, *super().get_params(ctx)]


def field_values(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Each field's value: a flag given on the command line (an old spelling, with a warning),
    else the --config recipe's, else the default."""
    ctx = click.get_current_context()
    names = [f.name for f in dataclasses.fields(cls)]
    values = {name: kwargs[name] for name in names}
    given = {name for name in names if ctx.get_parameter_source(name) not in
             (None, ParameterSource.DEFAULT)}
    for old, new in getattr(cls, "RENAMED", {}).items():
        value = kwargs.get(old_name_param(old))
        if value is None:
            continue
        if new in given:
            raise click.UsageError(f"give {flag_of(new)} only ({flag_of(old)} is its deprecated "
                                   "spelling)")
        click.echo(f"warning: {flag_of(old)} is deprecated here; use {flag_of(new)}", err=True)
        values[new] = value
        given.add(new)
    if kwargs.get(CONFIG_PARAM):
        try:
            recipe, notes = read_recipe(cls, kwargs[CONFIG_PARAM])
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from exc
        for note in notes:
            click.echo(f"warning: {note}", err=True)
        values |= {k: v for k, v in recipe.items() if k not in given}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def options_from(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: add one option per field of `cls` and pass the built config as `cfg`."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    choices = getattr(cls, "CHOICES", {})

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            names = {f.name for f in dataclasses.fields(cls)}
            cfg = cls(**field_values(cls, kwargs))
            try:
                cfg.validate()
            except ConfigError as exc:
                raise click.UsageError(str(exc)) from exc
            extra = {CONFIG_PARAM, *map(old_name_param, getattr(cls, "RENAMED", {}))}
            return command(cfg, **{k: v for k, v in kwargs.items()
                                   if k not in names and k not in extra})

        wrapper.config_class = cls  # type: ignore[attr-defined]

        renamed = getattr(cls, "FLAGS", {})  # a flag that cannot be a field name (`--in`)
        for field in reversed(dataclasses.fields(cls)):
            flag = renamed.get(field.name, "--" + field.name.replace("_", "-"))
            help_text = docs.get(field.name, "")
            if typing.get_origin(hints[field.name]) is tuple:
                decl = click.option(flag, field.name, multiple=True, default=field.default,
                                    show_default=True, help=help_text + " (repeatable)")
            elif hints[field.name] is bool:
                decl = click.option(f"{flag}/--no-{flag[2:]}", default=field.default,
                                    show_default=True, help=help_text)
            else:
                kind = (click.Choice(choices[field.name]) if field.name in choices
                        else option_type(hints[field.name], field.default))
                decl = click.option(flag, field.name, type=kind,
                                    default=field.default, show_default=field.default is not None,
                                    help=help_text)
            wrapper = decl(wrapper)
        return wrapper
    return decorate
