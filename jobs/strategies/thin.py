"""thin: a smaller MLP built from scratch (creation-time `mlp_ratio`), no inherited init."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from .registry import StrategyParams, register_strategy


class ThinParams(StrategyParams):
    mlp_ratio: float = Field(2.0, gt=0, description="MLP hidden width / embed dim at creation (timm's default is 4.0)")


@register_strategy("thin", ThinParams, stage="create")
def apply(create_kwargs: dict[str, Any], params: ThinParams) -> dict[str, Any]:
    """Create the model with a smaller mlp_ratio (768 -> 1536 -> 768 for ViT-B/16 at 2.0)."""
    return {**create_kwargs, "mlp_ratio": params.mlp_ratio}
