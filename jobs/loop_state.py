"""The one state object of a training run (`LoopState`), the hooks that watch it, and how it is built.

`build_state` makes everything a run needs once: the model at its seeded initialisation (the same on
every rank), its metrics columns that never change, EMA, optimizer, loaders, schedule, the DDP and/or
compiled forward, the grad scaler and the run's Checkpointer. jobs.train drives the state.
"""
from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from data.loaders import build_train_loader, build_val_loader
from jobs import recipe, weights
from jobs.accounting import model_stats
from jobs.checkpoint_policy import Checkpointer, Trainables
from jobs.context import EngineContext
from jobs.distill.runtime import make_distiller
from jobs.distributed import is_distributed
from jobs.rng import rng_isolated, seed_everything
from jobs.spec import RunSpec


@dataclass
class Hooks:
    """Tests use them to watch the loop and to simulate a kill by raising."""

    before_update: Callable[["LoopState"], None] | None = None  # gradients final (all-reduced), before the step
    after_step: Callable[["LoopState"], None] | None = None     # after an update and its step checkpoint
    after_epoch: Callable[["LoopState"], None] | None = None    # after the epoch's row, checkpoint and report


@dataclass
class EpochSums:
    """This rank's running sums of the epoch being trained (saved in step checkpoints)."""

    loss_sum: float = 0.0
    loss_count: int = 0
    images: int = 0
    train_s: float = 0.0
    skipped: int = 0


@dataclass
class LoopState:
    """The run: what train_loop builds once, and where it is. Hooks receive it."""

    spec: RunSpec
    ctx: EngineContext
    device: torch.device
    parts: Trainables                     # model (unwrapped), EMA, optimizer, scheduler, scaler
    net: nn.Module                        # what the forward pass calls: the model, DDP(model) and/or compiled
    mixup: Any
    loss_fn: nn.Module
    train_loader: Any
    val_loader: Any
    updates_per_epoch: int
    static: dict                          # the metrics columns that do not change during the run
    checkpointer: Checkpointer
    hooks: Hooks
    log: Callable[[str, str], None]
    epoch: int = 0                        # 0-based epoch being trained
    batch: int = 0                        # micro-batches of this epoch done
    num_updates: int = 0                  # optimizer updates done in the whole run
    sums: EpochSums = field(default_factory=EpochSums)
    images: torch.Tensor | None = None    # last micro-batch (after mixup)
    targets: torch.Tensor | None = None
    row: dict | None = None               # the last epoch's metrics row
    val_count: int = 0                    # val samples counted in the last evaluation (all ranks)
    logger: Any = None                    # jobs.run_logger.RunLogger: live metrics (rank 0)

    @property
    def model(self) -> nn.Module:
        return self.parts.model

    @property
    def ema(self) -> Any:
        return self.parts.ema

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.parts.optimizer

    @property
    def checkpoint(self) -> Path | None:
        """The last checkpoint written by this process."""
        return self.checkpointer.last


# ---- build ------------------------------------------------------------------------------------


def build_start(spec: RunSpec) -> weights.Start:
    """The run's model at initialisation (starting weights, then strategies): the same on every rank and in
    every process; with an unreduced copy when the teacher is `self`."""
    seed_everything(spec.seed)
    keep = spec.distill is not None and spec.distill.teacher.is_self
    return weights.build_start(spec.model.name, spec.strategies, spec.create_kwargs(), spec.model.init,
                               weights.Place.of(spec), keep_unreduced=keep)


def _static_columns(spec: RunSpec, model: nn.Module) -> dict:
    stats = model_stats(model, spec.img_size)
    return {
        "study": spec.study, "run_id": spec.run_id, "condition": spec.condition_label,
        "strategy": spec.strategy_label,
        "strategy_params": json.dumps([s.model_dump(mode="json") for s in spec.strategies], sort_keys=True),
        "ablation": json.dumps(spec.ablation, sort_keys=True, default=str),
        "model": spec.model.name, "seed": spec.seed, "epochs_total": spec.train.epochs,
        "params": stats.params, "mlp_params": stats.mlp_params, "unique_mlps": stats.unique_mlps,
        "mlp_hidden": stats.mlp_hidden, "gflops": stats.gflops, "gmacs": stats.gmacs, "host": socket.gethostname(),
    }


def _setup_determinism(spec: RunSpec, device: torch.device) -> None:
    if spec.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def build_state(spec: RunSpec, ctx: EngineContext, hooks: Hooks, log: Callable[[str, str], None]) -> LoopState:
    device = torch.device(ctx.device)
    tc = spec.train
    _setup_determinism(spec, device)
    start = build_start(spec)
    model = start.model
    static = _static_columns(spec, model)
    model.to(device)
    if tc.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    ema = recipe.build_ema(model, tc)
    distiller = make_distiller(spec, start, device)  # after the EMA copy: the distiller may hook the student
    optimizer = recipe.build_optimizer(model, tc, ctx.world_size)
    if distiller is not None:
        distiller.add_to(optimizer)  # before the scheduler, which records every group's base lr
    with rng_isolated(device):
        kw = dict(rank=ctx.rank, world_size=ctx.world_size, device=device)
        train_loader = build_train_loader(spec.data, batch_size=tc.batch_size, seed=spec.seed, **kw)
        val_loader = build_val_loader(spec.data, batch_size=tc.batch_size, **kw)
    updates_per_epoch = math.ceil(len(train_loader) / tc.grad_accum)
    scheduler = recipe.build_scheduler(optimizer, tc, updates_per_epoch)
    net: nn.Module = model
    if ctx.world_size > 1:
        if not is_distributed(ctx):
            raise RuntimeError(f"world_size is {ctx.world_size} but torch.distributed is not initialized by the engine")
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile and device.type == "cuda":
        net = torch.compile(net)
    parts = Trainables(model, ema, optimizer, scheduler, recipe.build_scaler(device, tc), distiller)
    identity = {"model": spec.model.name, "strategies": [s.model_dump(mode="json") for s in spec.strategies],
                "create_kwargs": spec.create_kwargs(), "seed": spec.seed}
    checkpointer = Checkpointer(spec.checkpoint, ctx, device, parts, identity,
                                spec.checkpoint.resolved_best_metric(tc.ema), log)
    return LoopState(
        spec=spec, ctx=ctx, device=device, parts=parts, net=net, mixup=recipe.build_mixup(tc, spec.model.num_classes),
        loss_fn=recipe.build_train_loss(tc), train_loader=train_loader, val_loader=val_loader,
        updates_per_epoch=updates_per_epoch, static=static, checkpointer=checkpointer, hooks=hooks, log=log,
    )
