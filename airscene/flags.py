"""Command-line flags derived from the config dataclasses (``airscene.config``).

Each field becomes ``--field-name`` with its type, default and help, so every hyperparameter is
listed once; ``config_from_args`` builds the config back from the parsed flags. A field that holds
one of several config kinds (``ModelConfig.objects``) becomes ``--FIELD KIND``, and the fields of
every kind get flags of their own.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from airscene.errors import AirsceneError


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line on stderr (``airscene VERB: error:
    ...``, exit 2), like every other error of the command; ``--help`` still shows the usage."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _scalar_parser(kind: type) -> Callable[[str], Any]:
    if kind is bool:
        return _parse_bool
    if kind is float:
        return finite_float
    return kind


def finite_float(text: str) -> float:
    """A float flag's value: any finite number (NaN and infinities say nothing a run can use)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def whole_number(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """A parser of integer flags in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"expected {bound}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in its messages
    return parse


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def value_parser(hint: Any) -> tuple[Callable[[str], Any], str]:
    """A string -> value parser for a field's type hint, and a metavar for its help."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        parse, metavar = value_parser(inner[0])

        def parse_optional(text: str) -> Any:
            return None if text.strip().lower() in ("none", "") else parse(text)

        return parse_optional, metavar
    if origin is tuple:
        element = _scalar_parser(args[0])

        def parse_tuple(text: str) -> tuple:
            try:
                values = tuple(element(part) for part in text.split(",") if part.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected a comma-separated list, got {text!r}"
                ) from None
            if args[-1] is not Ellipsis and len(values) != len(args):
                raise argparse.ArgumentTypeError(
                    f"expected {len(args)} comma-separated values, got {text!r}"
                )
            return values

        arity = "A,B,..." if args[-1] is Ellipsis else ",".join("ABCDEFGH"[: len(args)])
        return parse_tuple, arity
    if origin is typing.Literal:
        return str, "{" + ",".join(map(str, args)) + "}"
    return _scalar_parser(hint), hint.__name__.upper()


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    exclude: Sequence[str] = (),
    rename: dict[str, str] | None = None,
) -> None:
    """Add one ``--flag`` per field of dataclass ``cls`` (its help text, type and default);
    ``rename`` gives a field another flag name where two configs share a field name. A field
    that holds one of several config kinds (``ModelConfig.objects``) becomes ``--FIELD KIND``,
    and the fields of every kind get flags of their own."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__, _first_paragraph(cls.__doc__ or ""))
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        kinds = field.metadata.get("kinds")
        if kinds is not None:
            group.add_argument(
                "--" + field.name.replace("_", "-"),
                choices=tuple(kinds),
                default=None,
                help=f"{field.metadata.get('help', '')} (default: {field.default_factory().kind})",
            )
            added: set[str] = {"kind"}  # a field two kinds share is one flag
            for kind in kinds.values():
                add_config_arguments(parser, kind, exclude=tuple(added))
                added |= {f.name for f in dataclasses.fields(kind)}
            continue
        dest = (rename or {}).get(field.name, field.name)
        flag = "--" + dest.replace("_", "-")
        help_text = field.metadata.get("help", "")
        if "default" not in help_text:
            help_text += f" (default: {_show_default(field.default)})"
        hint = hints[field.name]
        if hint is bool:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        parse, metavar = value_parser(hint)
        choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
        group.add_argument(
            flag,
            dest=dest,
            type=parse,
            default=None,
            metavar=metavar,
            choices=choices,
            help=help_text,
        )


def _show_default(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def config_from_args(
    cls: type,
    args: argparse.Namespace,
    base: Any = None,
    rename: dict[str, str] | None = None,
    **overrides: Any,
) -> Any:
    """Build ``cls`` from parsed flags; fields not given keep their value in ``base`` (or the
    default)."""
    given = {}
    for field in dataclasses.fields(cls):
        kinds = field.metadata.get("kinds")
        if kinds is not None:
            inner = getattr(base, field.name) if base is not None else field.default_factory()
            given[field.name] = _kind_from_args(field.name, kinds, args, inner)
            continue
        value = getattr(args, (rename or {}).get(field.name, field.name), None)
        if value is not None:
            given[field.name] = value
    if base is not None:
        return dataclasses.replace(base, **given, **overrides)
    return cls(**{**given, **overrides})


def _kind_from_args(name: str, kinds: dict[str, type], args: argparse.Namespace, base: Any) -> Any:
    """The config of the kind ``--NAME`` chooses (else ``base``'s), from its own flags; a flag
    of another kind is an error."""
    kind = getattr(args, name, None) or base.kind
    own = ("kind", *(f.name for f in dataclasses.fields(kinds[kind])))
    for other, other_cls in kinds.items():
        stray = [] if other == kind else given_fields(other_cls, args, exclude=own)
        if stray:
            flags = ", ".join(f"--{f.replace('_', '-')}" for f in stray)
            raise AirsceneError(f"{flags}: a setting of --{name} {other}, not of {kind}")
    # A kind's own ``kind`` field is chosen by --NAME, never by a flag of another config's.
    own_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "kind"})
    same = type(base) is kinds[kind]
    return config_from_args(kinds[kind], own_args, base=base if same else None)


def given_fields(
    cls: type,
    args: argparse.Namespace,
    rename: dict[str, str] | None = None,
    exclude: Sequence[str] = (),
) -> list[str]:
    """The fields of ``cls`` (and of the configs it holds) that were given as flags."""
    names = []
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        kinds = field.metadata.get("kinds")
        if kinds is not None:
            if getattr(args, field.name, None) is not None:
                names.append(field.name)
            for kind in kinds.values():
                names += given_fields(kind, args, exclude=("kind",))
        elif getattr(args, (rename or {}).get(field.name, field.name), None) is not None:
            names.append((rename or {}).get(field.name, field.name))
    return names


def _first_paragraph(text: str) -> str:
    """A docstring's first paragraph as one line: an argument group's description, whole."""
    return " ".join(text.strip().split("\n\n")[0].split())
