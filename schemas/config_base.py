"""What every stage config shares: the error type, flag names, field docstrings as help.

    >>> from schemas.config_base import flag
    >>> flag("max_tokens")
    '--max-tokens'
"""

from __future__ import annotations


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
