"""shallow (ShallowMLP): keep k of each MLP's hidden units, inheriting the full model's init."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Literal

import numpy as np
import scipy.linalg
import torch
from pydantic import Field
from torch import nn

from .registry import ModelShape, StrategyError, StrategyParams, register_strategy
from .vit import unique_mlps

Select = Literal["first", "magnitude", "diversity"]


class ShallowParams(StrategyParams):
    keep_ratio: float = Field(0.5, gt=0, le=1, description="fraction of hidden units kept: k = int(hidden * keep_ratio)")
    select: Select = Field("first", description="which units: first (the seed), magnitude, diversity (DGMR)")

    def check_model(self, shape: ModelShape) -> list[str]:
        if shape.mlp_hidden and int(shape.mlp_hidden * self.keep_ratio) < 1:
            return [
                f"strategy shallow: keep_ratio {self.keep_ratio} keeps no unit of {shape.name}'s "
                f"{shape.mlp_hidden} hidden units; use keep_ratio >= {1 / shape.mlp_hidden:.3g}"
            ]
        return []

    @property
    def needs_weights(self) -> bool:
        return self.select != "first"

    def shapes_only(self) -> "ShallowParams":
        return self.model_copy(update={"select": "first"})

    def shape_after(self, shape: ModelShape) -> ModelShape:
        return replace(shape, mlp_hidden=max(1, int(shape.mlp_hidden * self.keep_ratio)))


def select_first(w1: torch.Tensor, w2: torch.Tensor, k: int) -> torch.Tensor:
    return torch.arange(k)


def select_magnitude(w1: torch.Tensor, w2: torch.Tensor, k: int) -> torch.Tensor:
    score = w1.norm(dim=1) * w2.norm(dim=0)
    return torch.topk(score, k).indices


def select_diversity(w1: torch.Tensor, w2: torch.Tensor, k: int) -> torch.Tensor:
    """DGMR's Gram–Schmidt greedy selection over the rows of W_fc1.

    Greedily taking the row with the largest residual norm and projecting it out of all rows is
    exactly QR with column pivoting of W_fc1ᵀ (LAPACK geqp3), which we use instead of a Python loop.
    A round ends when the residuals vanish (rank reached); the next round restarts from the original
    rows not yet selected, as DGMR's k-round variant does.
    """
    remaining = np.arange(w1.shape[0])
    rows = w1.detach().to("cpu", torch.float64).numpy()
    chosen: list[np.ndarray] = []
    needed = k
    while needed > 0:
        block = rows[remaining].T  # (in_features, len(remaining)): its columns are candidate rows
        _, r, pivots = scipy.linalg.qr(block, mode="economic", pivoting=True)
        diag = np.abs(np.diag(r))
        tol = (diag[0] if diag.size else 0.0) * max(block.shape) * np.finfo(np.float64).eps
        rank = int((diag > tol).sum()) if diag.size and diag[0] > 0 else 0
        # All-zero leftovers carry no direction: take them in order so the loop always progresses.
        take = pivots[: min(rank, needed)] if rank else np.arange(min(needed, remaining.size))
        chosen.append(remaining[take])
        remaining = np.delete(remaining, take)
        needed -= take.size
    return torch.from_numpy(np.concatenate(chosen))


SELECTORS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "first": select_first,
    "magnitude": select_magnitude,
    "diversity": select_diversity,
}


def _slice_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear holding the selected rows (dim 0) or columns (dim 1) of `layer`."""
    weight = layer.weight.detach().index_select(dim, index.to(layer.weight.device))
    in_f, out_f = (layer.in_features, index.numel()) if dim == 0 else (index.numel(), layer.out_features)
    new = nn.Linear(in_f, out_f, bias=layer.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if layer.bias is not None:
            bias = layer.bias.detach()
            new.bias.copy_(bias.index_select(0, index.to(bias.device)) if dim == 0 else bias)
    return new


@register_strategy("shallow", ShallowParams)
def apply(model: nn.Module, params: ShallowParams) -> nn.Module:
    """Every MLP keeps k = int(hidden * keep_ratio) units, chosen by `select`, in their original order."""
    for mlp in unique_mlps(model):  # a shared MLP is pruned once, so its partners stay tied
        hidden = mlp.fc1.out_features
        k = int(hidden * params.keep_ratio)
        if k < 1:
            raise StrategyError(params.check_model(ModelShape(type(model).__name__, 0, 0, hidden))[0])
        if params.needs_weights and mlp.fc1.weight.is_meta:
            raise StrategyError(
                f"strategy shallow: select={params.select} reads the weights, so the model cannot be on the meta "
                "device; build it on cpu/cuda"
            )
        index, _ = torch.sort(SELECTORS[params.select](mlp.fc1.weight, mlp.fc2.weight, k).to(torch.long))
        mlp.fc1 = _slice_linear(mlp.fc1, index, dim=0)
        mlp.fc2 = _slice_linear(mlp.fc2, index, dim=1)
        norm = getattr(mlp, "norm", None)
        if isinstance(norm, nn.LayerNorm):  # scale_mlp_norm models normalise the hidden activations
            new_norm = nn.LayerNorm(k, eps=norm.eps, elementwise_affine=norm.elementwise_affine,
                                    device=mlp.fc1.weight.device)
            if norm.elementwise_affine:
                with torch.no_grad():
                    new_norm.weight.copy_(norm.weight[index])
                    new_norm.bias.copy_(norm.bias[index])
            mlp.norm = new_norm
    return model
