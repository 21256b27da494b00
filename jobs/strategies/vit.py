"""Access to the MLPs of a timm VisionTransformer, shared by every strategy."""
from __future__ import annotations

from torch import nn

from .registry import ModelShape, StrategyError


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


def unique_attentions(model: nn.Module) -> list[nn.Module]:
    """Each distinct attention weight set once (blocks sharing `attn.qkv` count as one)."""
    seen: dict[int, nn.Module] = {}
    for block in blocks(model):
        attn = getattr(block, "attn", None)
        seen.setdefault(id(getattr(attn, "qkv", attn)), attn)
    return list(seen.values())


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def shape_of(model: nn.Module, name: str) -> ModelShape:
    """What strategy checks need to know about a built (possibly meta-device) ViT."""
    mlps = block_mlps(model)
    first = blocks(model)[0]
    attn = getattr(first, "attn", None)
    patch_embed = getattr(model, "patch_embed", None)
    return ModelShape(
        name, len(mlps), mlps[0].fc1.in_features, mlps[0].fc1.out_features,
        num_heads=getattr(attn, "num_heads", 0),
        num_prefix_tokens=getattr(model, "num_prefix_tokens", 0),
        num_patches=getattr(patch_embed, "num_patches", 0) or 0,
        attn_type=qualified_name(type(attn)) if attn is not None else "",
        block_type=qualified_name(type(first)),
    )
