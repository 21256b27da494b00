"""grouped (GroupedMLP): consecutive blocks share one MLP module, scaled at init."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from .registry import ModelShape, StrategyError, StrategyParams, depth_divisible, register_strategy
from .vit import block_mlps, blocks


class GroupedParams(StrategyParams):
    group_size: int = Field(2, ge=1, description="number of consecutive blocks that share one MLP")
    scale: float | None = Field(
        None, gt=0, description="init multiplier for W_fc1, b_fc1, W_fc2 (not b_fc2); default 1/sqrt(group_size)"
    )
    init: Literal["first", "mean"] = Field(
        "first", description="shared MLP's weights: first = the group's first block's MLP (the seed); mean = the "
                             "average of the group's MLPs (for trained weights), both then scaled"
    )

    @property
    def needs_weights(self) -> bool:
        return self.init == "mean"

    def shapes_only(self) -> "GroupedParams":
        return self.model_copy(update={"init": "first"})

    @property
    def resolved_scale(self) -> float:
        return 1.0 / math.sqrt(self.group_size) if self.scale is None else self.scale

    def check_model(self, shape: ModelShape) -> list[str]:
        errors = depth_divisible("grouped", "group_size", self.group_size, shape)
        if shape.attn_share:
            errors.append(
                "strategy grouped after multiplexed: multiplexed already ties each group's MLP, so grouped would "
                "scale a shared MLP once per group it appears in; list grouped before multiplexed"
            )
        return errors

    def shape_after(self, shape: ModelShape) -> ModelShape:
        return replace(shape, mlp_share=self.group_size)


@register_strategy("grouped", GroupedParams)
def apply(model: nn.Module, params: GroupedParams) -> nn.Module:
    """Blocks (0..g-1), (g..2g-1), ... use the first block's MLP object; its weights are scaled once."""
    all_blocks = blocks(model)
    if len(all_blocks) % params.group_size:
        raise StrategyError(params.check_model(ModelShape(type(model).__name__, len(all_blocks), 0, 0))[0])
    mlps = block_mlps(model)
    for start in range(0, len(all_blocks), params.group_size):
        shared = mlps[start]
        with torch.no_grad():
            if params.init == "mean":
                group = mlps[start : start + params.group_size]
                for name, tensor in shared.named_parameters():
                    tensor.copy_(torch.stack([m.get_parameter(name) for m in group]).mean(dim=0))
            # The seed scales W_fc1, b_fc1 and W_fc2 so the summed updates from g blocks keep their size.
            shared.fc1.weight.mul_(params.resolved_scale)
            if shared.fc1.bias is not None:
                shared.fc1.bias.mul_(params.resolved_scale)
            shared.fc2.weight.mul_(params.resolved_scale)
        for block in all_blocks[start + 1 : start + params.group_size]:
            block.mlp = shared
    return model
