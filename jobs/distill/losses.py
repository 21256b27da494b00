"""Distillation losses: student and teacher outputs -> a scalar. Each is registered with what it reads
(logits or the last block's tokens)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Outputs:
    """What one forward pass exposes to a loss."""

    logits: torch.Tensor | None = None
    tokens: torch.Tensor | None = None   # (B, N, C) of the last block, before or after the final norm
    prefix: int = 0                      # leading non-patch tokens (class, distillation, registers)
    has_class_token: bool = False


@dataclass(frozen=True)
class Loss:
    fn: Callable[[Outputs, Outputs, Any], torch.Tensor]  # (student, teacher, DistillConfig)
    reads: Literal["logits", "tokens"]


LOSSES: dict[str, Loss] = {}


def register(name: str, reads: Literal["logits", "tokens"]):
    def wrap(fn):
        LOSSES[name] = Loss(fn, reads)
        return fn
    return wrap


def soft_kl(s: torch.Tensor, t: torch.Tensor, tau: float, reduction: str = "numel") -> torch.Tensor:
    """DeiT: sum KL(t || s) at temperature tau, times tau^2, divided by s.numel() (or the batch)."""
    kl = F.kl_div(F.log_softmax(s / tau, dim=1), F.log_softmax(t / tau, dim=1), reduction="sum", log_target=True)
    return kl * (tau * tau) / (s.numel() if reduction == "numel" else s.shape[0])


def hard_ce(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """DeiT hard distillation: cross-entropy against the teacher's argmax."""
    return F.cross_entropy(s, t.argmax(dim=1))


def soft_ce(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    """MiniViT: mean over the batch of -sum softmax(t/tau) * log_softmax(s/tau); no tau^2."""
    return torch.sum(-F.softmax(t / tau, dim=-1) * F.log_softmax(s / tau, dim=-1), dim=-1).mean()


def token_mse(s: Outputs, t: Outputs, cls_weight: float, patch_weight: float) -> torch.Tensor:
    """DGMR: cls_weight * MSE(class tokens) + patch_weight * MSE(patch tokens)."""
    total = patch_weight * F.mse_loss(s.tokens[:, s.prefix:].float(), t.tokens[:, t.prefix:].float())
    if cls_weight and s.has_class_token and t.has_class_token:
        total = total + cls_weight * F.mse_loss(s.tokens[:, 0].float(), t.tokens[:, 0].float())
    return total


@register("soft", "logits")
def _soft(s: Outputs, t: Outputs, cfg: Any) -> torch.Tensor:
    return soft_kl(s.logits.float(), t.logits.float(), cfg.tau, cfg.reduction)


@register("hard", "logits")
def _hard(s: Outputs, t: Outputs, cfg: Any) -> torch.Tensor:
    return hard_ce(s.logits.float(), t.logits.float())


@register("softce", "logits")
def _softce(s: Outputs, t: Outputs, cfg: Any) -> torch.Tensor:
    return soft_ce(s.logits.float(), t.logits.float(), cfg.tau)


@register("feature_mse", "tokens")
def _feature(s: Outputs, t: Outputs, cfg: Any) -> torch.Tensor:
    return token_mse(s, t, cfg.feature.cls_weight, cfg.feature.patch_weight)
