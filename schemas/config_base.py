"""What every stage config shares: the error type, flag names, field docstrings as help,
allowed-value checks and the fields a resume must keep.

    >>> from schemas.config_base import flag
    >>> flag("max_tokens")
    '--max-tokens'
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Run:
    ...     out: str = "o"
    ...     steps: int = 1
    ...     seed: int = 0
    >>> identity_fields(Run, may_change={"out", "steps"})
    ['seed']
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable


AUTO = "auto"
"""The default of a field whose value depends on another flag (resolved by the config)."""


class ConfigError(ValueError):
    """A config value, or a combination of values, is invalid; names the flag."""


def flag(field_name: str) -> str:
    """The CLI flag of a config field."""
    return "--" + field_name.replace("_", "-")


def field_docs(cls: type) -> dict[str, str]:
    """Field docstrings of a config dataclass, read from its source (used as --help text)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
            docs[node.target.id] = nxt.value.value
    return docs


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{flag(name)} must be one of {', '.join(choices)}, got {value!r}")


def check_choices(cfg: Any) -> None:
    """Every field of `cfg` listed in its class's CHOICES holds one of the allowed values."""
    for name, allowed in type(cfg).CHOICES.items():
        check_choice(name, getattr(cfg, name), allowed)


def identity_fields(cls: type, may_change: Iterable[str]) -> list[str]:
    """The fields of config dataclass `cls` a resume must keep: all but those that `may_change`,
    so a field added later is protected until someone decides otherwise."""
    names = [f.name for f in dataclasses.fields(cls)]
    stale = set(may_change) - set(names)
    if stale:
        raise TypeError(f"{cls.__name__}: may-change names that are not fields: {sorted(stale)}")
    return [n for n in names if n not in set(may_change)]
