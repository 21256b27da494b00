"""Command-line options generated from a pydantic options model: the model is the one source of every flag's
default, bound and help line; parsing validates through the model, so a bad value is a one-line error naming
the flag.

A field's `json_schema_extra` may give `flag` (default `--field-name`), `aliases` (e.g. ["-p"]), `metavar`,
`repeat: True` for a mapping filled by repeated `--flag KEY=VALUE`, `text: True` for a number the model parses
from text itself (e.g. a Slurm time), and `shown_default` for the help line.
"""
from __future__ import annotations

import argparse
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


def _extra(info) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def flag_of(model: type[BaseModel], name: str) -> str:
    return _extra(model.model_fields[name]).get("flag", "--" + name.replace("_", "-"))


def _base_type(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args and typing.get_origin(annotation) is not dict else annotation


def _bounds(info) -> str:
    out = []
    for meta in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                out.append(f"{sign} {getattr(meta, attr)}")
    return f"; {', '.join(out)}" if out else ""


def add_options(parser: argparse.ArgumentParser, model: type[BaseModel], names: list[str] | None = None) -> None:
    """One option per field of `model` (or of `names`), typed, with the field's description, default and bounds."""
    for name in names or list(model.model_fields):
        info = model.model_fields[name]
        extra = _extra(info)
        flags = [flag_of(model, name), *extra.get("aliases", [])]
        kind = _base_type(info.annotation)
        default = info.get_default(call_default_factory=True)
        if kind is bool:
            parser.add_argument(*flags, dest=name, action="store_true", default=None, help=info.description)
        elif extra.get("repeat"):
            parser.add_argument(*flags, dest=name, action="append", default=None, metavar=extra.get("metavar", "KEY=VALUE"),
                                help=info.description)
        else:
            shown = "none" if default is None else extra.get("shown_default", default)
            typed = kind if kind in (int, float) and not extra.get("text") else str
            parser.add_argument(*flags, dest=name, default=None, type=typed, metavar=extra.get("metavar"),
                                help=f"{info.description} (default {shown}{_bounds(info)})")


def options_from_args(model: type[BaseModel], args: argparse.Namespace,
                      names: list[str] | None = None, **fixed: Any) -> tuple[BaseModel | None, list[str]]:
    """The options model from the parsed flags (unset flags keep the model's defaults); errors name the flag."""
    values: dict[str, Any] = dict(fixed)
    errors: list[str] = []
    for name in names or list(model.model_fields):
        value = getattr(args, name, None)
        if value is None:
            continue
        if _extra(model.model_fields[name]).get("repeat"):
            pairs = {}
            for item in value:
                key, sep, val = item.partition("=")
                if not sep or not key:
                    errors.append(f"{flag_of(model, name)} {item!r}: expected KEY=VALUE (e.g. {flag_of(model, name)} "
                                  "mail-type=END)")
                else:
                    pairs[key.strip().lstrip("-")] = True if val.lower() == "true" else val
            value = pairs
        values[name] = value
    try:
        validated = model.model_validate(values)
        return (validated if not errors else None), errors
    except ValidationError as exc:
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else ""
            if name in model.model_fields:
                shown = values.get(name)
                msg = err["msg"].removeprefix("Value error, ")
                for word, sign in (("greater than or equal to", ">="), ("greater than", ">"),
                                   ("less than or equal to", "<="), ("less than", "<")):
                    msg = msg.replace(f"Input should be {word}", f"must be {sign}")
                shown = repr(shown) if isinstance(shown, str) else shown
                flag = flag_of(model, name)
                errors.append(msg if msg.startswith(flag) or shown is None else f"{flag} {shown}: {msg}")
            else:
                errors.append(err["msg"].removeprefix("Value error, "))
        return None, errors
