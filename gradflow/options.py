"""Options written once: a config dataclass's fields carry flag, help, choices and limits.

``option(default, help=..., ...)`` is a ``dataclasses.field`` whose metadata the command
line reads (``add_options`` adds one flag per field, help text with the default appended)
and the library checks (``check_options``: limits and choices, errors naming the
parameter). The command line maps a parameter back to its flag (``flag_of``), so the same
check serves ``gradflow.analyze(batch_size=1)`` and ``gradflow analyze --batch-size 1``.
Light on purpose: importing it (and the configs) imports no torch, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ParameterError, check_choice

Choices = Sequence[object] | Callable[[], Sequence[object]]


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flag: str | None = None,
    choices: Choices | None = None,
    minimum: float | None = None,
    type: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    group: str | None = None,
    repeat: bool = False,
    cli: bool = True,
) -> Any:
    """A dataclass field with its command-line face and its checks (see the module doc).

    ``minimum``: the smallest allowed value; ``choices``: allowed values (or a function
    returning them, read when needed); ``repeat``: the flag may be given several times (a
    list); ``cli=False``: the field has no flag (set by the program, not the user).
    """
    metadata = {
        "help": help,
        "flag": flag,
        "choices": choices,
        "minimum": minimum,
        "type": type,
        "metavar": metavar,
        "group": group,
        "repeat": repeat,
        "cli": cli,
    }
    if isinstance(default, (list, dict, set)):  # each config gets its own copy
        return dataclasses.field(default_factory=default.copy, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(item: dataclasses.Field) -> str:
    """The field's flag: its metadata's, else ``--`` + the name with dashes."""
    return item.metadata.get("flag") or "--" + item.name.replace("_", "-")


def _choices(item: dataclasses.Field) -> Sequence[object] | None:
    choices = item.metadata.get("choices")
    return choices() if callable(choices) else choices


def _parse_type(item: dataclasses.Field) -> Callable[[str], Any] | None:
    """argparse's type: the metadata's, else int or float from the annotation."""
    if item.metadata.get("type"):
        return item.metadata["type"]
    annotation = str(item.type)
    for name, parse in (("int", int), ("float", float)):
        if annotation.split(" |")[0].strip() in (name, f"list[{name}]"):
            return parse
    return None


def cli_fields(config_class: type) -> list[dataclasses.Field]:
    """The fields of ``config_class`` that have a flag."""
    return [f for f in dataclasses.fields(config_class) if f.metadata.get("cli")]


def _help(item: dataclasses.Field, default: Any) -> str:
    text = item.metadata["help"].replace("%", "%%")
    if isinstance(default, bool) or default in (None, (), []) or "default" in text:
        return text
    shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
    return f"{text} (default {shown})"


def add_options(
    parser: argparse.ArgumentParser,
    config_class: type,
    *,
    defaults: dict[str, Any] | None = None,
    skip: Sequence[str] = (),
) -> None:
    """One flag per field of ``config_class`` (grouped by the fields' ``group``).

    ``defaults`` overrides a field's default on this command line (``None``: no default,
    the program decides later); ``skip`` leaves fields out.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for item in cli_fields(config_class):
        if item.name in skip:
            continue
        meta = item.metadata
        target = parser
        if meta["group"]:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            target = groups[meta["group"]]
        default = _default(item, defaults or {})
        kwargs: dict[str, Any] = {"dest": item.name, "help": _help(item, default)}
        if isinstance(default, bool):
            kwargs["action"] = "store_false" if default else "store_true"
        else:
            kwargs.update(default=default, type=_parse_type(item), metavar=meta["metavar"])
            if meta["repeat"]:
                kwargs.update(action="append", default=None)
            if item.default is item.default_factory is dataclasses.MISSING:
                kwargs["required"] = item.name not in (defaults or {})
            choices = _choices(item)
            if choices is not None:
                kwargs["choices"] = list(choices)
        target.add_argument(flag_of(item), **kwargs)


def _default(item: dataclasses.Field, overrides: dict[str, Any]) -> Any:
    if item.name in overrides:
        return overrides[item.name]
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return None if item.default is dataclasses.MISSING else item.default


def from_args(config_class: type, args: argparse.Namespace, **values: Any) -> Any:
    """A ``config_class`` from the parsed flags (``values`` set or override fields)."""
    given = {
        f.name: getattr(args, f.name) for f in cli_fields(config_class) if hasattr(args, f.name)
    }
    return config_class(**{**given, **values})


def check_options(config: Any) -> None:
    """Raise ParameterError (naming the field) for a value below its minimum or not a choice."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        minimum = item.metadata.get("minimum")
        if minimum is not None and value is not None and value < minimum:
            raise ParameterError(item.name, f"{item.name} must be at least {minimum}, got {value}")
        choices = _choices(item) if item.metadata else None
        if choices is not None and value is not None:
            check_choice(item.name, value, choices)


def flags(config_class: type) -> dict[str, str]:
    """parameter name -> flag for every field of ``config_class`` that has one."""
    return {f.name: flag_of(f) for f in cli_fields(config_class)}


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    config_class: type,
    run: Callable[[argparse.Namespace], int],
    **parser_options: Any,
) -> argparse.ArgumentParser:
    """A sub-command whose flags are ``config_class``'s options; ``run(args)`` runs it, and a
    ParameterError in it is shown with the flag of its parameter (``cli_message``)."""
    parser = sub.add_parser(
        name, formatter_class=argparse.RawDescriptionHelpFormatter, **parser_options
    )
    add_options(parser, config_class)
    parser.set_defaults(run=run, flags=flags(config_class))
    return parser
