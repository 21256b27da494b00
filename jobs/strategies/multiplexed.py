"""multiplexed (MiniViT weight multiplexing): consecutive blocks share attention and MLP weights,
small per-layer transformations keep the shared layers different.

In each group of `share_every` consecutive blocks every block uses the first block's `attn.qkv`,
`attn.proj` and `mlp` modules (the same Parameter objects, so one optimizer entry, stored once and
re-tied on load like `grouped`). Each block keeps its own `norm1`, `norm2`, drop-path rate, layer
scale, and its own attention object (`q_norm`/`k_norm`/scale norm stay per layer, as the norms do).

`attn_mix` adds two per-layer mixes across the head axis of the (B, H, N, N) attention map, one
before and one after the softmax (MiniViT-DeiT: bias-free 1x1 convolutions; Mini-Swin: Linear with
bias). `rpe: contextual` adds Mini-DeiT's per-layer iRPE on keys (irpe.py) to the logits before the
first mix. `mlp_transform: dwconv` adds Mini-Swin's per-layer `x = LN(x); x = x + dwconv7(x)` between
the attention residual and `norm2`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Literal

import torch
from pydantic import Field, field_validator
from timm.layers import trunc_normal_
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from timm.models.vision_transformer import Attention, Block
from torch import nn

from .irpe import RATIO, KeyRelativePosition
from .registry import ModelShape, StrategyError, StrategyParams, depth_divisible, register_strategy
from .vit import blocks, qualified_name, shape_of

ATTENTION_TYPE = qualified_name(Attention)
BLOCK_TYPE = qualified_name(Block)
SHARED_ATTENTION = ("qkv", "proj", "gate")  # `gate` only exists on gated timm attention


class MultiplexedParams(StrategyParams):
    share_every: int = Field(2, ge=1, description="consecutive blocks sharing one block's qkv, proj and MLP (MiniViT: 2)")
    attn_mix: Literal["conv1x1", "linear", "none"] = Field(
        "conv1x1",
        description="per-layer head mixes before and after softmax: conv1x1 = MiniViT-DeiT (Conv2d(H, H, 1), no bias), "
        "linear = Mini-Swin (Linear(H, H) with bias), none = no mix (timm's fused attention is kept)",
    )
    mix_init: Literal["trunc_normal", "identity"] = Field(
        "trunc_normal",
        description="trunc_normal = MiniViT (std 0.02, bias 0); identity = our choice for starts from trained "
        "weights, which the paper's init would wipe out",
    )
    rpe: Literal["none", "contextual"] = Field(
        "none",
        description="contextual = Mini-DeiT's iRPE on keys: logits gain q_i . r_b(i,j), product buckets of the "
        f"row/column offsets (ratio {RATIO}: 49 buckets), one table for all heads, zero init, one per layer "
        "(upstream keeps it per layer, not shared with qkv); none = no relative position encoding",
    )
    mlp_transform: Literal["none", "dwconv"] = Field(
        "none", description="dwconv = Mini-Swin's per-layer LN + depth-wise 7x7 conv on the token grid before norm2; "
        "needs a model without prefix tokens"
    )
    init: Literal["first", "mean"] = Field(
        "first", description="shared weights: the first block's of each group (MiniViT) or the mean over the group"
    )

    @field_validator("attn_mix", "rpe", "mlp_transform", mode="before")
    @classmethod
    def _null_is_none(cls, value):
        # Strategy expressions read `none` as null (`multiplexed:attn_mix=none`): it means the option "none".
        return "none" if value is None else value

    def check_model(self, shape: ModelShape) -> list[str]:
        errors = depth_divisible("multiplexed", "share_every", self.share_every, shape)
        for field, value in (("attn_mix", self.attn_mix), ("rpe", self.rpe)):
            if value != "none" and shape.attn_type and shape.attn_type != ATTENTION_TYPE:
                errors.append(
                    f"strategy multiplexed: {field}={value} rewrites timm's {ATTENTION_TYPE}, but {shape.name} "
                    f"uses {shape.attn_type}; use {field}=none or a DeiT/ViT model"
                )
        if self.mlp_transform == "dwconv":
            if shape.num_prefix_tokens:
                errors.append(
                    f"strategy multiplexed: mlp_transform=dwconv convolves the token grid, but {shape.name} has "
                    f"{shape.num_prefix_tokens} prefix token(s) (class/register) off the grid; create it with "
                    "model.kwargs {class_token: false, global_pool: avg} or use mlp_transform=none"
                )
            if shape.block_type and shape.block_type != BLOCK_TYPE:
                errors.append(
                    f"strategy multiplexed: mlp_transform=dwconv extends timm's {BLOCK_TYPE}, but {shape.name} uses "
                    f"{shape.block_type}; use mlp_transform=none"
                )
        if shape.attn_share:
            errors.append("strategy multiplexed: listed twice; give one multiplexed entry with the share_every you want")
        elif shape.mlp_share > 1 and shape.mlp_share % self.share_every and self.share_every % shape.mlp_share:
            errors.append(
                f"strategy multiplexed: share_every {self.share_every} after MLP groups of {shape.mlp_share} (grouped) "
                "would chain MLPs across groups; use a share_every that divides or is a multiple of group_size"
            )
        return errors

    @property
    def rewrites_attention(self) -> bool:
        """True when each block's attention becomes a MixedAttention (head mixes or iRPE)."""
        return self.attn_mix != "none" or self.rpe != "none"

    def shape_after(self, shape: ModelShape) -> ModelShape:
        return replace(shape, mlp_share=max(shape.mlp_share, self.share_every), attn_share=self.share_every)


# ---- per-layer head mixes ------------------------------------------------------------------------


class HeadLinear(nn.Linear):
    """Mini-Swin's mix: a Linear over the head axis of a (B, H, N, N) attention map."""

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        return super().forward(attn.transpose(1, -1)).transpose(1, -1)


def _conv1x1(heads: int, device) -> nn.Module:
    return nn.Conv2d(heads, heads, kernel_size=1, bias=False, device=device)


def _linear(heads: int, device) -> nn.Module:
    return HeadLinear(heads, heads, bias=True, device=device)


def _init_trunc_normal(mix: nn.Module) -> None:
    trunc_normal_(mix.weight, std=0.02)
    if mix.bias is not None:
        nn.init.zeros_(mix.bias)


def _init_identity(mix: nn.Module) -> None:
    with torch.no_grad():
        heads = mix.weight.shape[0]
        mix.weight.copy_(torch.eye(heads, device=mix.weight.device).view_as(mix.weight))
        if mix.bias is not None:
            mix.bias.zero_()


MIXES: dict[str, Callable[[int, torch.device], nn.Module]] = {"conv1x1": _conv1x1, "linear": _linear}
MIX_INITS: dict[str, Callable[[nn.Module], None]] = {"trunc_normal": _init_trunc_normal, "identity": _init_identity}


class MixedAttention(Attention):
    """timm's Attention on its explicit path with a head mix before and after the softmax, and
    optionally iRPE on keys added to the logits (`rpe_k`, Mini-DeiT's order: logits + iRPE -> mix ->
    softmax -> mix). A mix that is not used is an nn.Identity.

    Instances are timm Attention objects converted in place (`convert`), so their parameters keep
    their state-dict keys and shared `qkv`/`proj` modules stay shared."""

    pre_mix: nn.Module
    post_mix: nn.Module
    rpe_k: KeyRelativePosition | None

    @classmethod
    def convert(cls, attn: Attention, pre_mix: nn.Module, post_mix: nn.Module,
                rpe_k: KeyRelativePosition | None = None) -> "MixedAttention":
        attn.__class__ = cls
        attn.pre_mix, attn.post_mix, attn.rpe_k = pre_mix, post_mix, rpe_k
        # The mixes and iRPE act on the materialised attention map, which the fused kernel never produces.
        attn.fused_attn = False
        return attn

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        if self.rpe_k is not None:
            attn = attn + self.rpe_k(q)  # upstream passes the scaled query
        attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
        attn = self.pre_mix(attn)
        attn = attn.softmax(dim=-1)
        attn = self.post_mix(attn)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


# ---- Mini-Swin's MLP transformation ----------------------------------------------------------------


class TokenGridConv(nn.Module):
    """`x = LN(x); x = x + dwconv(x)`, the depth-wise 7x7 convolution running on the patch grid."""

    def __init__(self, dim: int, grid: tuple[int, int], norm: nn.Module, device=None):
        super().__init__()
        self.grid = tuple(grid)
        self.norm = norm
        # Mini-Swin: Conv2d(C, C, 7, padding=3, groups=C, bias=qkv_bias), PyTorch default init.
        self.conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim, bias=True, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h, w = self.grid
        if N != h * w:
            raise ValueError(f"mlp_transform=dwconv was built for a {h}x{w} token grid, got {N} tokens")
        x = self.norm(x)
        return x + self.conv(x.transpose(1, 2).reshape(B, C, h, w)).flatten(2).transpose(1, 2)


class TransformedBlock(Block):
    """timm's Block with a per-layer transformation of the residual stream before the MLP half."""

    mlp_transform: nn.Module

    @classmethod
    def convert(cls, block: Block, transform: nn.Module) -> "TransformedBlock":
        block.__class__ = cls
        block.mlp_transform = transform
        return block

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        x = self.mlp_transform(x)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


# ---- apply -------------------------------------------------------------------------------------------


def _set_mean(target: nn.Module, group: list[nn.Module]) -> None:
    """Give `target` the mean of the group's parameters (each distinct module counted once)."""
    unique = list({id(m): m for m in group}.values())
    if len(unique) < 2:
        return
    params = [dict(m.named_parameters()) for m in unique]
    with torch.no_grad():
        for name, p in params[0].items():
            p.copy_(torch.stack([q[name] for q in params]).mean(0))


def _share(group: list[nn.Module], init: str) -> None:
    """Every block of the group uses the first block's qkv/proj(/gate) and MLP objects."""
    first = group[0]
    for name in SHARED_ATTENTION:
        modules = [getattr(b.attn, name, None) for b in group]
        if modules[0] is None:
            continue
        if init == "mean":
            _set_mean(modules[0], modules)
        for block in group[1:]:
            setattr(block.attn, name, modules[0])
    if init == "mean":
        _set_mean(first.mlp, [b.mlp for b in group])
    for block in group[1:]:
        block.mlp = first.mlp


def _rewrite_attention(block: nn.Module, params: MultiplexedParams, model: nn.Module) -> None:
    attn = block.attn
    device = attn.qkv.weight.device
    pre, post = nn.Identity(), nn.Identity()
    if params.attn_mix != "none":
        pre, post = (MIXES[params.attn_mix](attn.num_heads, device) for _ in range(2))
        for mix in (pre, post):
            MIX_INITS[params.mix_init](mix)
    rpe_k = None
    if params.rpe == "contextual":
        rpe_k = KeyRelativePosition(attn.head_dim, model.patch_embed.grid_size,
                                    num_prefix_tokens=getattr(model, "num_prefix_tokens", 0), device=device)
    MixedAttention.convert(attn, pre, post, rpe_k)


def _add_transform(block: nn.Module, model: nn.Module) -> None:
    norm1 = block.norm1
    dim = norm1.normalized_shape[0]
    norm = nn.LayerNorm(dim, eps=getattr(norm1, "eps", 1e-6), device=norm1.weight.device)
    TransformedBlock.convert(block, TokenGridConv(dim, model.patch_embed.grid_size, norm, device=norm1.weight.device))


@register_strategy("multiplexed", MultiplexedParams)
def apply(model: nn.Module, params: MultiplexedParams) -> nn.Module:
    """MiniViT weight multiplexing: groups of share_every blocks share qkv/proj/MLP; per-layer head mixes."""
    all_blocks = blocks(model)
    errors = params.check_model(shape_of(model, type(model).__name__))
    if not all(isinstance(getattr(b.attn, n, None), nn.Module) for b in all_blocks for n in ("qkv", "proj")):
        errors.append("strategy multiplexed: shares attn.qkv and attn.proj, which some block's attention lacks")
    if any(type(b.attn) is not Attention for b in all_blocks) and params.rewrites_attention:
        errors.append(f"strategy multiplexed: attn_mix={params.attn_mix}, rpe={params.rpe} needs timm's "
                      f"{ATTENTION_TYPE} in every block (or attn_mix=none, rpe=none)")
    if errors:
        raise StrategyError("; ".join(errors))
    for start in range(0, len(all_blocks), params.share_every):
        _share(all_blocks[start : start + params.share_every], params.init)
    for block in all_blocks:
        if params.rewrites_attention:
            _rewrite_attention(block, params, model)
        if params.mlp_transform == "dwconv":
            _add_transform(block, model)
    return model

