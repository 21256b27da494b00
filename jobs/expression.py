"""Strategy expressions, `grouped:scale=0.707+shallow:keep_ratio=0.25`, parsed without torch.

Kept outside `jobs.strategies` (which imports torch) so `analysis` can read the expressions that
`jobs bench` writes into bench.json.
"""
from __future__ import annotations

import yaml


def split_expression(text: str) -> list[dict]:
    """-> [{"name": ..., "params": {...}}, ...]; values are parsed as YAML scalars."""
    specs = []
    for term in text.split("+"):
        name, *pairs = term.strip().split(":")
        params = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"strategy {name}: parameter {pair!r} is not key=value (e.g. shallow:keep_ratio=0.25)")
            params[key.strip()] = yaml.safe_load(value)
        specs.append({"name": name.strip(), "params": params})
    return specs
