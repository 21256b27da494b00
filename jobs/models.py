"""Build a timm ViT with a run's strategies applied, and check a combination without building it."""
from __future__ import annotations

import difflib
import json
from typing import Any, Callable, Iterable

import timm
import torch
from torch import nn

from .strategies import ModelShape, StrategyError, StrategySpec, as_specs, get_strategy, strategy_spec
from .strategies.vit import shape_of


def build_model(model: str, strategies: Iterable[StrategySpec | dict | str] = (),
                create_fn: Callable[..., nn.Module] | None = None, **create_kwargs: Any) -> nn.Module:
    """`timm.create_model(model, **create_kwargs)` with `create` strategies folded into the kwargs,
    then every `post` strategy applied in the listed order. `create_fn(model, **kwargs)` replaces
    timm.create_model, e.g. to load starting weights before the strategies act on them."""
    parsed = [(get_strategy(s.name), s.params) for s in as_specs(strategies)]
    for strategy, params in parsed:
        if strategy.stage == "create":
            create_kwargs = strategy.apply(create_kwargs, params)
    net = (create_fn or timm.create_model)(model, **create_kwargs)
    for strategy, params in parsed:
        if strategy.stage == "post":
            net = strategy.apply(net, params)
    return net


def model_shape(model: str, **create_kwargs: Any) -> ModelShape:
    """Depth and widths of a timm ViT, read from a meta-device instance (no memory, no init)."""
    with torch.device("meta"):
        net = timm.create_model(model, **create_kwargs)
    return shape_of(net, model)


# A study validates every run, but its runs share a handful of architectures (conditions x grid points, not
# seeds): one meta-device build per architecture (~0.1 s each) instead of one per run.
_SHAPES: dict[tuple[str, str], ModelShape | str] = {}


def _shape_or_error(model: str, create_kwargs: dict[str, Any]) -> ModelShape | str:
    key = (model, json.dumps(create_kwargs, sort_keys=True, default=repr))
    if key not in _SHAPES:
        _SHAPES[key] = _build_shape_or_error(model, create_kwargs)
    return _SHAPES[key]


def _build_shape_or_error(model: str, create_kwargs: dict[str, Any]) -> ModelShape | str:
    try:
        return model_shape(model, **create_kwargs)
    except StrategyError as exc:
        return str(exc)
    except Exception as exc:  # timm rejects the kwargs: report its reason on one line
        return f"model {model} cannot be created with {create_kwargs}: {str(exc).splitlines()[0]}"


def architecture(model: str, strategies: Iterable[StrategySpec | dict | str] = (), **create_kwargs: Any
                 ) -> dict[str, int]:
    """Depth, width, heads and MLP hidden width of the model a run builds (strategies applied), from a meta-device
    instance: what the run records in spec.json (rundir.record.Architecture), so no reader works them out."""
    parsed = [(get_strategy(s.name), s.params) for s in as_specs(strategies)]
    for strategy, params in parsed:
        if strategy.stage == "create":
            create_kwargs = strategy.apply(create_kwargs, params)
    shape = model_shape(model, **create_kwargs)
    for strategy, params in parsed:
        if strategy.stage == "post":
            shape = params.shape_after(shape)
    return {"depth": shape.depth, "embed_dim": shape.embed_dim, "num_heads": shape.num_heads,
            "mlp_hidden": shape.mlp_hidden}


def check(model: str, strategies: Iterable[StrategySpec | dict | str] = (), **create_kwargs: Any) -> list[str]:
    """Every problem with this model + strategies combination, one line each ([] when fine)."""
    errors: list[str] = []
    parsed = []
    for item in strategies or ():
        try:
            spec = strategy_spec(item)
            parsed.append((get_strategy(spec.name), spec.params))
        except StrategyError as exc:
            errors.append(str(exc).splitlines()[0])
    if not timm.is_model(model.split(".")[0]):
        close = difflib.get_close_matches(model, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        return errors + [f"model {model!r} is not a timm model name{hint}"]
    # The model as asked for first: a non-ViT should be reported as such, not by timm rejecting the
    # kwargs a creation-time strategy adds (e.g. thin's mlp_ratio on a ResNet).
    shape = _shape_or_error(model, create_kwargs)
    if isinstance(shape, str):
        return errors + [shape]
    if any(strategy.stage == "create" for strategy, _ in parsed):
        for strategy, params in parsed:
            if strategy.stage == "create":
                create_kwargs = strategy.apply(create_kwargs, params)
        shape = _shape_or_error(model, create_kwargs)
        if isinstance(shape, str):
            return errors + [shape]
    for strategy, params in parsed:
        if strategy.stage == "post":
            errors.extend(params.check_model(shape))
            shape = params.shape_after(shape)
    return errors


def needs_weights(strategies: Iterable[StrategySpec | dict | str]) -> bool:
    """True when some strategy reads weight values, so the model cannot be built on the meta device."""
    return any(s.params.needs_weights for s in as_specs(strategies))
