"""Access to the MLPs of a timm VisionTransformer, shared by every strategy."""
from __future__ import annotations

from torch import nn

from .registry import StrategyError


def blocks(model: nn.Module) -> list[nn.Module]:
    found = getattr(model, "blocks", None)
    if not isinstance(found, (nn.Sequential, nn.ModuleList)) or len(found) == 0:
        raise StrategyError(
            f"{type(model).__name__} has no `blocks` list: strategies apply to timm VisionTransformer models"
        )
    return list(found)


def block_mlps(model: nn.Module) -> list[nn.Module]:
    """The MLP of every block, in depth order (shared MLPs appear once per block that uses them)."""
    mlps = []
    for i, block in enumerate(blocks(model)):
        mlp = getattr(block, "mlp", None)
        fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
        if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)):
            raise StrategyError(
                f"block {i} of {type(model).__name__} has an MLP of type {type(mlp).__name__} without "
                "fc1/fc2 Linear layers: only timm's Mlp is supported"
            )
        mlps.append(mlp)
    return mlps


def unique_mlps(model: nn.Module) -> list[nn.Module]:
    """Each distinct MLP module once, in order of first use."""
    seen: dict[int, nn.Module] = {}
    for mlp in block_mlps(model):
        seen.setdefault(id(mlp), mlp)
    return list(seen.values())
