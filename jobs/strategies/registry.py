"""Strategy registry: name -> (typed parameters, apply function, stage).

A strategy is one small module that defines a pydantic `Params` model and registers
`apply(model, params) -> model` with `@register_strategy`. `post` strategies run on a created
timm VisionTransformer, in the order the run lists them; `create` strategies (thin) only change
the keyword arguments of `timm.create_model` (`apply(create_kwargs, params) -> create_kwargs`).

Parameters are typed once, when a `StrategySpec` is validated (a run spec, an expression, a
`{name, params}` mapping): `spec.params` is the strategy's own `StrategyParams` object, and `apply`
receives it as is. Written out (YAML, JSON, metrics) they are the plain mapping that was given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, model_validator

from rundir import split_expression


class StrategyError(ValueError):
    """A bad strategy name, parameter or model combination; the message is one line."""


class StrategyParams(BaseModel):
    """Base of every strategy's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def check_model(self, shape: "ModelShape") -> list[str]:
        """One-line problems of applying these parameters to a model of this shape."""
        return []

    @property
    def needs_weights(self) -> bool:
        """True when applying reads weight values, so the model cannot live on the meta device."""
        return False

    def shape_after(self, shape: "ModelShape") -> "ModelShape":
        """The shape later strategies in the list will see."""
        return shape

    def shapes_only(self) -> "StrategyParams":
        """Parameters that build the same shapes without reading weight values, so a model can be counted on
        the meta device: weights decide which units are kept or how they start, never how many."""
        return self


def depth_divisible(strategy: str, field: str, size: int, shape: "ModelShape") -> list[str]:
    """The problem of grouping `shape.depth` blocks into groups of `size` consecutive blocks, if any."""
    if shape.depth % size == 0:
        return []
    return [f"strategy {strategy}: depth {shape.depth} of {shape.name} is not divisible by {field} {size}; "
            f"choose a {field} that divides {shape.depth}"]


class StrategySpec(BaseModel):
    """One entry of a run's `strategies` list."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="registered strategy name (baseline, grouped, multiplexed, shallow, thin)")
    params: StrategyParams = Field(default_factory=StrategyParams,
                                   description="the strategy's parameters (a mapping; defaults fill the rest)")

    @model_validator(mode="before")
    @classmethod
    def _typed_params(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if not isinstance(data.get("name"), str):  # the schema reports the name; params cannot be typed without it
            return {k: v for k, v in data.items() if k != "params"}
        name, params = data["name"], data.get("params")
        expected = get_strategy(name).params
        if isinstance(params, StrategyParams):
            if not isinstance(params, expected):
                raise StrategyError(f"strategy {name}: params are {type(params).__name__}, expected {expected.__name__}")
            return data
        if params is not None and not isinstance(params, dict):
            raise StrategyError(f"strategy {name}: params must be a mapping of parameter names to values, got {params!r}")
        return {**data, "params": parse_params(name, params or {})}

    @field_serializer("params")
    def _params_as_given(self, params: StrategyParams) -> dict[str, Any]:
        # The mapping as written (defaults stay implicit), so a spec, its metrics and its run id read
        # the same before and after validation.
        return params.model_dump(mode="json", exclude_unset=True)


@dataclass(frozen=True)
class ModelShape:
    """What strategy checks need to know about a ViT without building it."""

    name: str
    depth: int
    embed_dim: int
    mlp_hidden: int
    num_heads: int = 0
    num_prefix_tokens: int = 0  # class/distillation/register tokens before the patch tokens
    num_patches: int = 0
    attn_type: str = ""  # qualified class name of the blocks' attention ("" = unknown)
    block_type: str = ""
    mlp_share: int = 1  # consecutive blocks sharing one MLP so far (grouped, multiplexed)
    attn_share: int = 0  # multiplexed's share_every once it is applied; 0 = attention not shared


@dataclass(frozen=True)
class Strategy:
    name: str
    params: type[StrategyParams]
    apply: Callable[..., Any]
    stage: Literal["post", "create"]
    doc: str


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str, params: type[StrategyParams], stage: Literal["post", "create"] = "post"):
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in STRATEGIES:
            raise RuntimeError(f"strategy {name!r} registered twice")
        STRATEGIES[name] = Strategy(name, params, fn, stage, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return decorate


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise StrategyError(
            f"unknown strategy {name!r}: valid choices are {', '.join(sorted(STRATEGIES))}"
        ) from None


def parse_params(name: str, params: dict[str, Any]) -> StrategyParams:
    """Typed, range-checked parameters; errors name the strategy, the field and the rule."""
    strategy = get_strategy(name)
    try:
        return strategy.params(**params)
    except ValidationError as exc:
        raise StrategyError("; ".join(_one_line(name, err) for err in exc.errors())) from None


def _one_line(name: str, err: dict) -> str:
    field = ".".join(str(p) for p in err["loc"]) or "params"
    if err["type"] == "extra_forbidden":
        valid = ", ".join(get_strategy(name).params.model_fields)
        return f"strategy {name}: unknown parameter {field!r} (valid: {valid})"
    return f"strategy {name}: {field} {err['msg'].lower()} (got {err.get('input')!r})"


def strategy_spec(item: "StrategySpec | dict | str") -> StrategySpec:
    """A StrategySpec from a spec, a `{name, params}` mapping or a bare name; StrategyError (one line) if bad."""
    if isinstance(item, StrategySpec):
        return item
    try:
        return StrategySpec(name=item) if isinstance(item, str) else StrategySpec.model_validate(item)
    except ValidationError as exc:
        raise StrategyError("; ".join(_spec_error(err) for err in exc.errors())) from None


def _spec_error(err: dict) -> str:
    if err["type"] == "value_error":
        return err["msg"].removeprefix("Value error, ")
    field = ".".join(str(p) for p in err["loc"]) or "strategy"
    return f"strategy {field}: {err['msg'].lower()} (got {err.get('input')!r})"


def parse_expression(text: str) -> list[StrategySpec]:
    """`grouped:scale=0.707+shallow:keep_ratio=0.25` -> two specs of registered strategies."""
    try:
        terms = split_expression(text)
    except ValueError as exc:
        raise StrategyError(str(exc)) from None
    return [strategy_spec(term) for term in terms]


def as_specs(strategies) -> list[StrategySpec]:
    """Accept StrategySpec objects, {"name", "params"} dicts or bare names."""
    return [strategy_spec(item) for item in strategies or ()]
