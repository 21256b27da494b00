"""Strategy expressions, `grouped:scale=0.707+shallow:keep_ratio=0.25`, parsed with the standard library.

`jobs` parses what users type (`jobs inspect`, `jobs bench`) and `analysis` reads the expressions that
`jobs bench` writes into bench.json: the parser lives here so neither needs the other.
"""
from __future__ import annotations

import re

_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False,
          "null": None, "none": None, "~": None, "": None}


def parse_scalar(text: str) -> bool | int | float | str | None:
    """A parameter value as YAML would read a scalar: 2 -> int, 0.707 and 1e-3 -> float, true -> bool,
    null -> None, 'quoted' -> the text inside, anything else -> the text."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text) or text.lower() in ("inf", "+inf", "-inf", ".inf", "-.inf", "nan", ".nan"):
        return float(text.replace(".inf", "inf").replace(".nan", "nan"))
    return text


def split_expression(text: str) -> list[dict]:
    """-> [{"name": ..., "params": {...}}, ...]."""
    specs = []
    for term in text.split("+"):
        name, *pairs = term.strip().split(":")
        params = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"strategy {name}: parameter {pair!r} is not key=value (e.g. shallow:keep_ratio=0.25)")
            params[key.strip()] = parse_scalar(value)
        specs.append({"name": name.strip(), "params": params})
    return specs
