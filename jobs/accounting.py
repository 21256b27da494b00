"""Exact accounting of a (strategy-modified) ViT: unique parameters, MLPs, and compute.

Compute conventions (FlopCounterMode counts 2 FLOPs per multiply-accumulate):
- `gmacs`: 1e9 MACs of every matmul, attention scores included. timm's model card figure
  (17.58 GMACs for vit_base_patch16_224; 12.0 for ShallowMLP at keep 0.5).
- `gflops`: the seed paper's "GFLOPs" column, which is MACs of every layer except the two attention
  matmuls (QKᵀ and AV): 16.9 for ViT-B/16, 11.3 for ShallowMLP. We keep the paper's name for it so
  the tables line up; true FLOPs are 2 × gmacs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from .strategies.vit import block_mlps, unique_attentions, unique_mlps

# Ops that are the attention matmuls of a ViT block (fused or not); everything else is a layer's weights.
_ATTENTION_OPS = ("_scaled_dot_product", "bmm", "baddbmm")


def _sdpa_forward(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _fused_kernels_without_formula() -> dict:
    """Fused attention kernels that torch's FlopCounterMode has no formula for (it then counts them as 0):
    the CPU flash kernel that F.scaled_dot_product_attention picks for a model on the CPU, and the
    backend-overridable one (XPU, HPU). Without these the count would depend on the device the model was
    built on (the meta device decomposes attention into counted matmuls) and on timm's fused_attn."""
    names = {
        "_scaled_dot_product_flash_attention_for_cpu": _sdpa_forward,
        "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_backward,
        "_scaled_dot_product_fused_attention_overrideable": _sdpa_forward,
        "_scaled_dot_product_fused_attention_overrideable_backward": _sdpa_backward,
    }
    return {getattr(torch.ops.aten, name): formula for name, formula in names.items() if hasattr(torch.ops.aten, name)}


_EXTRA_FORMULAS = _fused_kernels_without_formula()


@dataclass(frozen=True)
class ModelStats:
    params: int        # unique parameters (a shared tensor counted once)
    mlp_params: int    # unique parameters inside the blocks' MLPs
    unique_mlps: int   # distinct MLP modules
    unique_attn: int   # distinct attention weight sets (blocks sharing qkv count once)
    mlp_hidden: int    # hidden width of the first block's MLP
    depth: int
    gflops: float      # paper convention (see module doc)
    gmacs: float       # all matmuls (timm convention)

    def as_dict(self) -> dict:
        return asdict(self)


def count_params(modules) -> int:
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())


def count_macs(model: nn.Module, img_size: int | tuple[int, int], in_chans: int = 3) -> tuple[float, float]:
    """(all MACs, MACs without attention matmuls) of one image's forward pass."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    param = next(model.parameters())
    x = torch.zeros(1, in_chans, h, w, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    total = attention = 0
    for op, flops in counter.get_flop_counts()["Global"].items():
        total += flops
        if any(name in str(op) for name in _ATTENTION_OPS):
            attention += flops
    return total / 2, (total - attention) / 2


def model_img_size(model: nn.Module) -> tuple[int, int]:
    size = model.patch_embed.img_size
    return (size, size) if isinstance(size, int) else tuple(size)


def model_stats(model: nn.Module, img_size: int | tuple[int, int] | None = None) -> ModelStats:
    mlps = block_mlps(model)
    macs, macs_no_attention = count_macs(model, img_size or model_img_size(model))
    return ModelStats(
        params=count_params([model]),
        mlp_params=count_params(unique_mlps(model)),
        unique_mlps=len(unique_mlps(model)),
        unique_attn=len(unique_attentions(model)),
        mlp_hidden=mlps[0].fc1.out_features,
        depth=len(mlps),
        gflops=macs_no_attention / 1e9,
        gmacs=macs / 1e9,
    )
