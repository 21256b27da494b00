"""Model strategies: one module each, registered by name (see registry.py)."""
from . import baseline, grouped, shallow, thin  # noqa: F401  (importing registers them)
from .registry import (
    STRATEGIES,
    ModelShape,
    Strategy,
    StrategyError,
    StrategyParams,
    StrategySpec,
    as_specs,
    get_strategy,
    parse_expression,
    parse_params,
    register_strategy,
    strategy_spec,
)

__all__ = [
    "STRATEGIES", "ModelShape", "Strategy", "StrategyError", "StrategyParams", "StrategySpec",
    "as_specs", "get_strategy", "parse_expression", "parse_params", "register_strategy",
    "strategy_spec",
]
