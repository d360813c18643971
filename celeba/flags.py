"""Typed configs -> command-line flags: one argparse parser built from a config dataclass (its fields, their
types, defaults and help), and parsing argv into that dataclass (`parse_config`)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from celeba.config import REPO_ROOT, _base_type


def show_default(value: Any) -> str:
    """A default as a user would type it: paths relative to the repository, tuples space-separated."""
    if isinstance(value, Path):
        try:
            return str(value.relative_to(REPO_ROOT)) if value.is_absolute() else str(value)
        except ValueError:
            return str(value)
    if isinstance(value, (tuple, list)):
        return " ".join(show_default(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def field_help(f: dataclasses.Field, default: Any) -> str:
    """The flag's help with its default; a field without help is a bug, found when the parser is built."""
    text = f.metadata.get("help")
    if not text:
        raise TypeError(f"config field {f.name!r} has no help: declare it with opt(default, help)")
    shown = f.metadata.get("none") if default is None else show_default(default)
    return f"{text} (default: {shown})" if shown not in (None, "") else text


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """A config's fields in --help order: the command's own first, then those of shared option groups it inherits
    (e.g. `PhotoFolderOptions`), which dataclasses would put first."""
    own = set(inspect.get_annotations(cls))
    fields = dataclasses.fields(cls)
    return [f for f in fields if f.name in own] + [f for f in fields if f.name not in own]


def build_parser(
    cls: type, description: str | None = None, prog: str | None = None, base: Any = None, replay: bool = False
) -> argparse.ArgumentParser:
    """An argparse parser from a config dataclass, so flags, defaults and help never drift apart.

    `base`: an instance whose values are the defaults (a replayed run); `replay`: add `--config RUN_CARD.json`.
    """
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(prog=prog, description=description or cls.__doc__)
    if replay:
        parser.add_argument(
            "--config",
            type=Path,
            metavar="RUN_CARD.json",
            help="replay a run: its run card's config is the default of every other flag; "
            "writes <name>-replay unless --name",
        )
    for f in flag_fields(cls):
        default = getattr(base, f.name) if base is not None else f.default
        text = field_help(f, default).replace("%", "%%")
        kind, many = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        if f.metadata.get("positional"):
            parser.add_argument(
                f.name, nargs="*", type=kind, default=None, help=text, metavar=f.metadata.get("metavar", f.name.upper())
            )
        elif kind is bool:
            action = parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
            action.help = text  # not argparse's own "(default: True)"
        elif typing.get_origin(kind) is Literal and not many:
            parser.add_argument(flag, choices=typing.get_args(kind), default=default, help=text)
        elif many:  # `--model a b --model c` means all three; an explicit value replaces the default
            choices = typing.get_args(kind) if typing.get_origin(kind) is Literal else None
            parser.add_argument(
                flag,
                type=str if choices else kind,
                choices=choices,
                nargs="+",
                action="extend",
                default=None,
                help=text,
                metavar=f.metadata.get("metavar", f.name.upper().rstrip("S")),
            )
        else:
            parser.add_argument(
                flag, type=kind, default=default, help=text, metavar=f.metadata.get("metavar", f.name.upper())
            )
    return parser


def parse_config(
    cls: type,
    argv: Sequence[str] | None = None,
    description: str | None = None,
    prog: str | None = None,
    load_base: Callable[[Path], Any] | None = None,
) -> Any:
    """Parse flags (and positionals anywhere among them) into a `cls` instance.

    `load_base`: enables `--config RUN_CARD.json`, whose values become the defaults. ConfigError from the
    dataclass's own checks propagates: the CLI layer turns it into `error: ...` and exit code 2.
    """
    base = None
    if load_base is not None:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", type=Path)
        known, _ = pre.parse_known_args(argv)
        base = load_base(known.config) if known.config else None
    parser = build_parser(cls, description, prog, base, replay=load_base is not None)
    values = vars(parser.parse_intermixed_args(argv))
    values.pop("config", None)
    for f in dataclasses.fields(cls):
        if values[f.name] is None and (
            f.metadata.get("positional") or _base_type(typing.get_type_hints(cls)[f.name])[1]
        ):
            values[f.name] = getattr(base, f.name) if base is not None else f.default
        elif isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)
