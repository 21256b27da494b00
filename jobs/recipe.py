"""The seed's timm recipe, built from a TrainConfig: optimizer, schedule, mixup, loss, EMA, autocast.

Every piece is timm's own implementation; this module only maps config fields onto it.
"""
from __future__ import annotations

import contextlib
import math

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn

from jobs.spec import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig, world_size: int) -> torch.optim.Optimizer:
    # Given the model, timm builds its param groups (wd_skip_norm_bias): no weight decay on 1-D params (norms,
    # biases) and model.no_weight_decay() (pos_embed, cls_token). Given bare parameters, one group, all decayed
    # (DGMR). Either way a shared parameter appears once (named_parameters/parameters deduplicate).
    params = model if cfg.wd_skip_norm_bias else model.parameters()
    return create_optimizer_v2(
        params, opt=cfg.opt, lr=cfg.scaled_lr(world_size), weight_decay=cfg.weight_decay, **cfg.opt_kwargs
    )


def weight_decay_at(cfg: TrainConfig, update: int, total_updates: int) -> float:
    """The weight decay of optimizer update `update` (0-based) of `total_updates`: a cosine from weight_decay to
    weight_decay_end, DINOv2's CosineScheduler as DGMR's distill.py uses it (value at k/total, so the last update
    is a step short of the end; timm has no such schedule), computed from the update number so a resume matches."""
    if cfg.weight_decay_end is None:
        return cfg.weight_decay
    if update >= total_updates:
        return cfg.weight_decay_end
    t = max(update, 0) / max(total_updates, 1)
    return cfg.weight_decay_end + 0.5 * (cfg.weight_decay - cfg.weight_decay_end) * (1 + math.cos(math.pi * t))


def set_weight_decay(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set the decay of the groups that decay (timm's no-decay groups keep 0)."""
    for group in optimizer.param_groups:
        if group.get("weight_decay", 0.0) > 0:
            group["weight_decay"] = value


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, updates_per_epoch: int):
    """timm's scheduler, warmup included, stepped per epoch (`step(epoch)`) or, with `sched_on_updates`, per
    optimizer update (`step_update(n)`); the loop calls both and timm ignores the other one. None for 'none', and
    for `epochs: 0` (nothing is trained; timm's schedulers need a positive length)."""
    if cfg.epochs == 0:
        return None
    warmup_lr, min_lr = cfg.scaled_bounds(optimizer.defaults["lr"])  # build_optimizer's lr: scaled_lr
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        # with warmup_prefix timm adds warmup_epochs to num_epochs: the cosine spans the epochs after warmup
        num_epochs=cfg.epochs - cfg.warmup_epochs if cfg.warmup_prefix else cfg.epochs,
        warmup_epochs=cfg.warmup_epochs,
        warmup_prefix=cfg.warmup_prefix,
        warmup_lr=warmup_lr,
        min_lr=min_lr,
        step_on_epochs=not cfg.sched_on_updates,
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def build_mixup(cfg: TrainConfig, num_classes: int) -> Mixup | None:
    if not cfg.mixup_active:
        return None
    return Mixup(
        mixup_alpha=cfg.mixup,
        cutmix_alpha=cfg.cutmix,
        prob=cfg.mixup_prob,
        switch_prob=cfg.mixup_switch_prob,
        mode=cfg.mixup_mode,
        label_smoothing=cfg.smoothing,
        num_classes=num_classes,
    )


def build_train_loss(cfg: TrainConfig) -> nn.Module:
    # Same choice as timm's train.py: mixup makes soft targets (smoothing folded in).
    if cfg.mixup_active:
        return SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


def build_ema(model: nn.Module, cfg: TrainConfig) -> ModelEmaV3 | None:
    if not cfg.ema:
        return None
    # once: exclude_buffers=True averages model.parameters(), which lists a shared (GroupedMLP) tensor once.
    # per_reference: timm's default state_dict() path, which the seed's train.py used: it lists a shared tensor
    # once per block that uses it and lerps it that many times per update (decay^2 for a pair); foreach off so
    # the repeated lerps run one after the other (a fused foreach kernel over aliased tensors has no defined
    # order). A ViT has no float buffers, so nothing else differs.
    once = cfg.ema_shared == "once"
    return ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup, exclude_buffers=once, foreach=once)


def autocast(device: torch.device, cfg: TrainConfig) -> contextlib.AbstractContextManager:
    if not cfg.amp:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=getattr(torch, cfg.amp_dtype))
    if device.type == "cpu" and cfg.amp_cpu:
        return torch.autocast("cpu", dtype=getattr(torch, cfg.amp_dtype))
    return contextlib.nullcontext()


def build_scaler(device: torch.device, cfg: TrainConfig) -> torch.amp.GradScaler | None:
    """A GradScaler wherever float16 autocast is on (timm's --amp); bfloat16 has fp32's range and needs none."""
    autocast_on = cfg.amp and (device.type == "cuda" or (device.type == "cpu" and cfg.amp_cpu))
    if autocast_on and cfg.amp_dtype == "float16":
        return torch.amp.GradScaler(device.type)
    return None
