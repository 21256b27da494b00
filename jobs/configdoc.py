"""Config discoverability, generated from the pydantic models (their field descriptions are the docs).

    python -m jobs config-keys [--format text|markdown|json]     every run-spec key: type, default, doc
    python -m jobs train configs/demo.yaml --print-config       the resolved config, every default filled

`python -m orchestrator config-keys` adds the study keys with the same helpers; every command that
takes a run spec or a study has `--print-config` (`add_print_config` + `print_config`). Importing this
module is cheap (no torch), so CLIs can build their parsers with it before deciding to do any work.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Literal, Union

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

FORMATS = ("text", "markdown", "json")


@dataclass(frozen=True)
class KeyRow:
    key: str        # dotted path as written in YAML or a key=value override; [] = any list entry
    type: str
    default: str    # JSON text of the default, "(required)", or "(section)" for a nested block
    doc: str


# ---- types and defaults as text ---------------------------------------------------------------


def type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if annotation is Ellipsis:
        return "..."
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _submodel(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """(the pydantic model inside X, X | None, list[X], dict[str, X]; how its keys are addressed)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, "."
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, list, tuple, dict):
        for arg in typing.get_args(annotation):
            found = _submodel(arg)
            if found is not None:
                step = {list: "[].", tuple: "[].", dict: ".<name>."}.get(origin, found[1])
                return found[0], step
    return None


def _default_text(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    return json.dumps(to_jsonable_python(value))


def key_rows(model: type[BaseModel], prefix: str = "") -> list[KeyRow]:
    """One row per field of `model`, nested models expanded under their section's row."""
    rows: list[KeyRow] = []
    for name, field in model.model_fields.items():
        key = prefix + name
        rows.append(KeyRow(key, type_name(field.annotation), _default_text(field), field.description or ""))
        sub = _submodel(field.annotation)
        if sub is not None:
            rows.extend(key_rows(sub[0], key + sub[1]))
    return rows


def strategy_rows(prefix: str = "strategies") -> list[KeyRow]:
    """The typed parameters of every registered strategy, as `strategies[NAME].params.FIELD`."""
    from jobs.strategies import STRATEGIES  # torch: only when keys are listed, not for add_print_config
    rows = []
    for name in sorted(STRATEGIES):
        rows.extend(key_rows(STRATEGIES[name].params, f"{prefix}[{name}].params."))
    return rows


def run_spec_rows(prefix: str = "") -> list[KeyRow]:
    from jobs.spec import RunSpec

    return key_rows(RunSpec, prefix) + strategy_rows(prefix + "strategies")


def format_rows(rows: Iterable[KeyRow], fmt: str = "text") -> str:
    rows = list(rows)
    if fmt == "json":
        return json.dumps([asdict(r) for r in rows], indent=1)
    if fmt == "markdown":
        cell = lambda s: s.replace("|", "\\|")  # noqa: E731
        lines = ["| key | type | default | description |", "|---|---|---|---|"]
        lines += [f"| `{r.key}` | {cell(r.type)} | {cell(r.default)} | {cell(r.doc)} |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(getattr(r, c)) for r in rows) for c in ("key", "type", "default")]
    widths = [min(w, cap) for w, cap in zip(widths, (48, 32, 24))]
    return "\n".join(f"{r.key:<{widths[0]}}  {r.type:<{widths[1]}}  {r.default:<{widths[2]}}  {r.doc}" for r in rows)


def keys_main(argv: list[str], prog: str, rows: Callable[[], list[KeyRow]], what: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=f"List every {what} key with its type, default and doc.")
    parser.add_argument("--format", choices=FORMATS, default="text", help="text (default), markdown table, or json")
    args = parser.parse_args(argv)
    print(format_rows(rows(), args.format))
    return 0


def main(argv: list[str]) -> int:
    """`python -m jobs config-keys`: the run-spec keys (study keys: python -m orchestrator config-keys)."""
    return keys_main(argv, "python -m jobs config-keys", run_spec_rows, "run-spec")


# ---- --print-config -----------------------------------------------------------------------------


def _fill_strategy_params(spec: dict[str, Any]) -> None:
    from jobs.strategies import parse_params

    for entry in spec.get("strategies") or ():
        entry["params"] = parse_params(entry["name"], entry.get("params") or {}).model_dump(mode="json")


def resolved(config: BaseModel) -> dict[str, Any]:
    """A validated run spec or study as plain data with every default, strategy parameters included."""
    from jobs.spec import RunSpec

    data = config.model_dump(mode="json")
    if isinstance(config, RunSpec):
        _fill_strategy_params(data)
    for run in data.get("runs") or ():  # a study: its expanded runs
        _fill_strategy_params(run)
    return data


def config_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(resolved(config), sort_keys=False, width=120)


def add_print_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (every default filled in) as YAML and exit")


def print_config(config: BaseModel, warnings: Iterable[str] = ()) -> int:
    """The resolved config on stdout; `warnings` (files the run will need but that are missing now: the
    config is still shown, so it can be read before the dataset exists) once each on stderr."""
    for line in dict.fromkeys(warnings):
        print(f"warning: {line}", file=sys.stderr)
    print(config_yaml(config), end="")
    return 0
