"""`key=value` overrides for run specs and studies: one grammar (dotted keys, digits index lists, values
parsed as YAML scalars or flow collections) and one check that a key names a field of a pydantic model."""
from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any, Union

import yaml
from pydantic import BaseModel

_EXPONENT = re.compile(r"[-+]?\d*\.?\d+[eE][-+]?\d+")


def parse_value(text: str) -> Any:
    """An override value as a YAML scalar or flow collection: 3 -> int, [0,1] -> list, 1e-3 -> float."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # not YAML: keep the text, the schema decides
    # PyYAML (YAML 1.1) reads 1e-3 as a string; users mean the number.
    return float(value) if isinstance(value, str) and _EXPONENT.fullmatch(value) else value


def parse_key(key: str) -> list[str | int]:
    """`strategies.0.params.keep_ratio` -> ['strategies', 0, 'params', 'keep_ratio'] (digits index lists)."""
    return [int(p) if p.isdigit() else p for p in key.strip().split(".")]


def parse_override(text: str) -> tuple[list[str | int], Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} is not key=value (e.g. train.epochs=3)")
    return parse_key(key), parse_value(value)


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set one dotted key (list indices allowed) in a raw spec or study dict; ValueError naming the key."""
    apply_override(raw, parse_key(key), value)


def field_path_error(key: str, model: type[BaseModel], what: str = "key") -> str | None:
    """None when `key` (dotted, list indices allowed) names a field of `model`, else why not,
    with the closest field name. Under a free-form mapping field (e.g. model.kwargs) any key is allowed."""
    cls: Any = model
    path = parse_key(key)
    done: list[str] = []
    annotation: Any = cls
    for i, part in enumerate(path):
        if _is_list(annotation):
            if not isinstance(part, int):
                return f"{'.'.join(done)} is a list: address an entry by its index (e.g. {'.'.join(done)}.0)"
            annotation = (typing.get_args(_strip_optional(annotation)) or (Any,))[0]
        elif _is_mapping(annotation):
            return None
        elif (sub := submodel(annotation)) is not None:
            field = sub.model_fields.get(str(part))
            if field is None:
                close = difflib.get_close_matches(str(part), list(sub.model_fields), n=1)
                tip = f"; did you mean {'.'.join([*done, close[0]])!r}?" if close else ""
                return f"unknown {what} {'.'.join(map(str, path[: i + 1]))!r} (not a run-spec field){tip}"
            annotation = field.annotation
        else:
            return f"{'.'.join(done)} is a value, not a section; cannot set {key}"
        done.append(str(part))
    return None


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(_strip_optional(annotation)) in (list, tuple)


def _is_mapping(annotation: Any) -> bool:
    plain = _strip_optional(annotation)
    return plain is dict or typing.get_origin(plain) is dict or plain is Any


def apply_override(raw: dict, path: list[str | int], value: Any) -> None:
    node: Any = raw
    where = []
    for i, part in enumerate(path):
        last = i == len(path) - 1
        where.append(str(part))
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise ValueError(f"{'.'.join(where)}: no list entry {part!r} (the list has {len(node)})")
            if last:
                node[part] = value
            else:
                node = node[part]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
        else:
            raise ValueError(f"{'.'.join(where[:-1])} is a value, not a section; cannot set {'.'.join(map(str, path))}")


def submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `X`, `X | None`, `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, list, tuple):
        for arg in typing.get_args(annotation):
            found = submodel(arg)
            if found is not None:
                return found
    return None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> list[str]:
    """Apply `key=value` overrides in place; returns one error line per malformed override."""
    errors = []
    for text in overrides or ():
        try:
            path, value = parse_override(text)
            apply_override(raw, path, value)
        except ValueError as exc:
            errors.append(str(exc))
    return errors
