"""Map a config dataclass one-to-one onto click options.

Each field becomes `--field-name` with the field's docstring as help text,
its default shown, and its type taken from the annotation; bool fields become
`--flag/--no-flag` switches. The command receives a ready, validated config.

    @click.command()
    @options_from(TeacherConfig)
    def teacher_labels(cfg: TeacherConfig): ...
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Callable

import click

from schemas.config_base import AUTO, ConfigError, field_docs

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


def options_from(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: add one option per field of `cls` and pass the built config as `cfg`."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            names = {f.name for f in dataclasses.fields(cls)}
            cfg = cls(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in kwargs.items() if k in names})
            try:
                cfg.validate()
            except ConfigError as exc:
                raise click.UsageError(str(exc)) from exc
            return command(cfg, **{k: v for k, v in kwargs.items() if k not in names})

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
                decl = click.option(flag, field.name,
                                    type=option_type(hints[field.name], field.default),
                                    default=field.default, show_default=field.default is not None,
                                    help=help_text)
            wrapper = decl(wrapper)
        return wrapper
    return decorate
