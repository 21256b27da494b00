"""baseline: the unmodified timm model (the control condition)."""
from __future__ import annotations

from torch import nn

from .registry import StrategyParams, register_strategy


class BaselineParams(StrategyParams):
    pass


@register_strategy("baseline", BaselineParams)
def apply(model: nn.Module, params: BaselineParams) -> nn.Module:
    """No change: the model as timm creates it."""
    return model
