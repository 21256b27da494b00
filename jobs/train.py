"""The training loop every run executes, whatever engine starts it (Ray Train, Slurm, torchrun, tests).

`train_loop(spec, ctx)` talks to its engine only through `ctx` (jobs.context.EngineContext). Per epoch:
train (mixup, autocast, accumulation, clipping, per-update cosine schedule, EMA), evaluate the model and
its EMA on the whole val set (counts all-reduced), write one metrics row, checkpoint, `ctx.report`.

Exact resume: everything random that shapes training (model init, drop-path, mixup) draws from the
global python/numpy/torch generators, and the loaders draw only from (seed, epoch, rank, world_size).
Loader calls run with the global generators saved and restored around them, so a loader (or its
worker processes' base seed) never shifts the training stream; the checkpoint stores every rank's
generator states, its partial-epoch sums and the loader position, so a resumed run replays the
uninterrupted one bit for bit on CPU.

Stops: a NaN/inf loss raises NonFiniteLossError (no checkpoint is written after it; `train.skip_nonfinite`
skips such updates instead); an engine that defines `stop_requested() -> bool` gets a checkpoint at the
next optimizer update and a Preempted exception. `Hooks` let tests watch the loop and kill it by raising.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import math
import os
import random
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.contrib.logging import logging_redirect_tqdm

from analysis.schema import CHECKPOINT_DIR, SPEC_FILE
from jobs import checkpoint as ckpt
from jobs import metrics as run_files
from jobs import recipe
from jobs.context import EngineContext
from jobs.run_logger import RunLogger
from jobs.spec import RunSpec, SpecError, load_spec


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stops and its last good checkpoint is kept."""


class Preempted(RuntimeError):
    """The engine asked the run to stop (e.g. Slurm's pre-timeout signal); a checkpoint was just written."""


def _stop_requested(ctx: EngineContext) -> bool:
    # Optional engine member (not in the EngineContext protocol): `stop_requested() -> bool`, polled at
    # every optimizer update. A Slurm engine sets it from its signal handler and requeues on Preempted.
    fn = getattr(ctx, "stop_requested", None)
    return bool(fn()) if callable(fn) else False


# ---- hooks (tests use them to watch the loop and to simulate a kill by raising) -------------


@dataclass
class LoopState:
    spec: RunSpec
    ctx: EngineContext
    model: nn.Module                      # unwrapped (no DDP) model
    ema: Any                              # timm ModelEmaV3 or None
    optimizer: torch.optim.Optimizer
    epoch: int = 0                        # 0-based epoch being trained
    batch: int = 0                        # micro-batches of this epoch done
    num_updates: int = 0                  # optimizer updates done in the whole run
    images: torch.Tensor | None = None    # last micro-batch (after mixup)
    targets: torch.Tensor | None = None
    row: dict | None = None               # the last epoch's metrics row
    val_count: int = 0                    # val samples counted in the last evaluation (all ranks)
    checkpoint: Path | None = None        # the last checkpoint written by this process


@dataclass
class Hooks:
    before_update: Callable[[LoopState], None] | None = None   # gradients final (all-reduced), before the step
    after_step: Callable[[LoopState], None] | None = None      # after an update and its step checkpoint
    after_epoch: Callable[[LoopState], None] | None = None     # after the epoch's row, checkpoint and report


# ---- randomness -------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def rng_isolated(device: torch.device) -> Iterator[None]:
    """Run loader code without moving the training stream of the global generators."""
    saved = rng_state(device)
    try:
        yield
    finally:
        set_rng_state(saved, device)


def isolated_batches(loader, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    with rng_isolated(device):
        it = iter(loader)
    while True:
        with rng_isolated(device):
            try:
                batch = next(it)
            except StopIteration:
                return
        yield batch


# ---- distributed helpers ----------------------------------------------------------------------


def _distributed(ctx: EngineContext) -> bool:
    return ctx.world_size > 1 and dist.is_available() and dist.is_initialized()


def _all_reduce_sum(values: list[float | int], ctx: EngineContext, device: torch.device, dtype=torch.float64) -> list:
    t = torch.tensor(values, dtype=dtype, device=device)
    if _distributed(ctx):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _gather(obj: Any, ctx: EngineContext) -> list[Any]:
    if not _distributed(ctx):
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj: Any, ctx: EngineContext) -> Any:
    if not _distributed(ctx):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, loader, spec: RunSpec, ctx: EngineContext, device: torch.device) -> tuple[float, float, int]:
    """(top1 %, top5 %, samples) over the whole val set: each rank counts its share, counts are summed."""
    was_training = model.training
    model.eval()
    k = min(5, spec.model.num_classes)
    correct1 = correct5 = total = 0
    for images, labels in isolated_batches(loader, device):
        with recipe.autocast(device, spec.train):
            logits = model(_to_format(images, spec, device))
        top = logits.topk(k, dim=1).indices
        hit = top.eq(labels.view(-1, 1))
        correct1 += int(hit[:, :1].sum())
        correct5 += int(hit.any(dim=1).sum())
        total += labels.numel()
    model.train(was_training)
    c1, c5, n = _all_reduce_sum([correct1, correct5, total], ctx, device, dtype=torch.int64)
    if n == 0:
        raise RuntimeError(f"the validation loader of {spec.data.val_path} yielded no samples")
    return 100.0 * c1 / n, 100.0 * c5 / n, int(n)


def _to_format(images: torch.Tensor, spec: RunSpec, device: torch.device) -> torch.Tensor:
    if spec.train.channels_last and device.type == "cuda":
        return images.contiguous(memory_format=torch.channels_last)
    return images


# ---- the loop -------------------------------------------------------------------------------------


@dataclass
class _Partial:
    """This rank's running sums of the epoch being trained (saved in step checkpoints)."""

    loss_sum: float = 0.0
    loss_count: int = 0
    images: int = 0
    train_s: float = 0.0
    skipped: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Best:
    metric: str
    value: float = -math.inf
    epoch: int = 0


@dataclass
class _Run:
    """Everything train_loop sets up once."""

    spec: RunSpec
    ctx: EngineContext
    device: torch.device
    model: nn.Module
    net: nn.Module             # what the forward pass calls: model, DDP(model) and/or compiled
    ema: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    mixup: Any
    loss_fn: nn.Module
    train_loader: Any
    val_loader: Any
    updates_per_epoch: int
    static: dict
    log: Callable[[str, str], None]
    hooks: Hooks
    best: _Best
    ckpt_number: int = 0
    resumed_from: int | None = None
    state: LoopState | None = None
    partial: _Partial = field(default_factory=_Partial)
    logger: RunLogger | None = None


def _static_columns(spec: RunSpec, model: nn.Module) -> dict:
    import json

    from jobs.accounting import model_stats

    stats = model_stats(model, spec.img_size)
    return {
        "study": spec.study,
        "run_id": spec.run_id,
        "condition": spec.condition_label,
        "strategy": spec.strategy_label,
        "strategy_params": json.dumps([s.model_dump(mode="json") for s in spec.strategies], sort_keys=True),
        "ablation": json.dumps(spec.ablation, sort_keys=True, default=str),
        "model": spec.model.name,
        "seed": spec.seed,
        "epochs_total": spec.train.epochs,
        "params": stats.params,
        "mlp_params": stats.mlp_params,
        "unique_mlps": stats.unique_mlps,
        "mlp_hidden": stats.mlp_hidden,
        "gflops": stats.gflops,
        "gmacs": stats.gmacs,
        "host": socket.gethostname(),
    }


def _setup_determinism(spec: RunSpec, device: torch.device) -> None:
    if spec.train.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _checkpoint_files(run: _Run, epoch: int, batch: int, num_updates: int) -> tuple[dict, dict] | None:
    """Gather every rank's state; rank 0 gets (files, meta), the others None."""
    per_rank = _gather({"rng": rng_state(run.device), "partial": run.partial.as_dict()}, run.ctx)
    if run.ctx.rank != 0:
        return None
    files = {
        "model.pt": ckpt.pack_state(run.model.state_dict()),
        "train_state.pt": {
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "ranks": per_rank,
            "best": dict(run.best.__dict__),
            "position": {"epoch": epoch, "batch": batch, "num_updates": num_updates},
            "world_size": run.ctx.world_size,
            "resumed_from": run.resumed_from,
        },
    }
    if run.ema is not None:
        files["ema.pt"] = ckpt.pack_state(run.ema.module.state_dict())
    meta = {
        "epoch": epoch, "batch": batch, "num_updates": num_updates, "world_size": run.ctx.world_size,
        "model": run.spec.model.name, "strategies": [s.model_dump(mode="json") for s in run.spec.strategies],
        "seed": run.spec.seed,
    }
    return files, meta


def _save_checkpoint(run: _Run, epoch: int, batch: int, num_updates: int) -> Path | None:
    packed = _checkpoint_files(run, epoch, batch, num_updates)
    path = None
    if packed is not None:
        run.ckpt_number += 1
        files, meta = packed
        path = ckpt.save(run.ctx.run_dir / CHECKPOINT_DIR, run.ckpt_number, files, meta, run.spec.checkpoint.keep_last)
        run.log("checkpoint", f"{path.name} at epoch {epoch} batch {batch} (update {num_updates})")
    if _distributed(run.ctx):
        dist.barrier()  # no rank runs ahead of a checkpoint it could be killed before
    return path


def _resume(run: _Run, path: Path) -> tuple[int, int, int]:
    """Load a checkpoint into the run; returns (epoch, batch, num_updates) to continue from."""
    state = ckpt.load_file(path, "train_state.pt")
    ckpt.load_model_state(run.model, ckpt.load_file(path, "model.pt"))
    if run.ema is not None:
        ema_file = path / "ema.pt"
        if ema_file.exists():
            ckpt.load_model_state(run.ema.module, ckpt.load_file(path, "ema.pt"))
        else:
            run.ema.set(run.model)
            run.log("warning", f"{path.name} has no EMA; EMA restarts from the model weights")
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.best = _Best(**state["best"])
    # Continue numbering after everything already in this run's folder (the engine may hand us a
    # checkpoint stored elsewhere, e.g. Ray's storage), so a new checkpoint never replaces a newer one.
    existing = ckpt.numbered(run.ctx.run_dir / CHECKPOINT_DIR)
    run.ckpt_number = max([ckpt.read_manifest(path).get("number", 0)] + [ckpt.checkpoint_number(p) for p in existing])
    pos = state["position"]
    epoch, batch, num_updates = pos["epoch"], pos["batch"], pos["num_updates"]
    if state["world_size"] == run.ctx.world_size:
        mine = state["ranks"][run.ctx.rank]
        set_rng_state(mine["rng"], run.device)
        run.partial = _Partial(**mine["partial"])
    else:
        # Another sharding: positions and generator streams do not carry over; restart the epoch.
        run.log("warning", f"{path.name} was written by {state['world_size']} workers, now {run.ctx.world_size}: "
                           f"restarting epoch {epoch + 1} with fresh generator streams (not bitwise-exact)")
        seed_everything(run.spec.seed + 1000 * (epoch + 1) + run.ctx.rank)
        batch, num_updates, run.partial = 0, epoch * run.updates_per_epoch, _Partial()
    return epoch, batch, num_updates


def _train_epoch(run: _Run, epoch: int, start_batch: int, num_updates: int) -> int:
    spec, tc, device = run.spec, run.spec.train, run.device
    n_batches = len(run.train_loader)
    accum = tc.grad_accum
    with rng_isolated(device):
        run.train_loader.set_epoch(epoch, start_batch)
    run.net.train()
    if start_batch == 0:
        run.partial = _Partial()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    loss_count = torch.zeros((), dtype=torch.int64, device=device)
    bad = torch.zeros((), dtype=torch.int64, device=device)
    t0 = time.perf_counter()
    batch = start_batch
    # len() is the contract (every rank runs the same number of batches); never read past it.
    batches = run.logger.timed(itertools.islice(isolated_batches(run.train_loader, device), n_batches - start_batch))
    for images, labels in batches:
        group_start = (batch // accum) * accum
        group_size = min(accum, n_batches - group_start)
        last_micro = batch + 1 == group_start + group_size
        if run.mixup is not None and len(labels) % 2:
            # timm Mixup pairs samples; an odd final batch loses its last image.
            images, labels = images[:-1], labels[:-1]
        targets = labels
        if run.mixup is not None:
            images, targets = run.mixup(images, labels)
        images = _to_format(images, spec, device)
        sync = contextlib.nullcontext() if last_micro or not isinstance(run.net, nn.parallel.DistributedDataParallel) \
            else run.net.no_sync()
        with sync:
            with recipe.autocast(device, tc):
                loss = run.loss_fn(run.net(images), targets)
            finite = torch.isfinite(loss.detach())
            scaled = loss / group_size
            (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
        bad += (~finite).long()
        loss_sum += torch.where(finite, loss.detach().double(), 0.0) * len(labels)
        loss_count += finite.long() * len(labels)
        run.partial.images += len(labels)
        run.logger.micro_batch(loss, len(labels))
        batch += 1
        state = run.state
        state.epoch, state.batch, state.images, state.targets = epoch, batch, images, targets
        if not last_micro:
            continue
        bad_total, stop_total = _all_reduce_sum([bad.item(), int(_stop_requested(run.ctx))], run.ctx, device,
                                                dtype=torch.int64)
        nonfinite, stop = bad_total > 0, stop_total > 0
        bad.zero_()
        if nonfinite and not tc.skip_nonfinite:
            last = run.ctx.latest_checkpoint() if run.ctx.rank == 0 else None
            raise NonFiniteLossError(
                f"non-finite training loss at epoch {epoch + 1} batch {batch} (update {num_updates + 1}); "
                f"stopped, last good checkpoint: {last or 'none'}. Lower train.lr, set train.clip_grad, "
                f"or set train.skip_nonfinite=true to skip such updates"
            )
        if nonfinite:
            run.optimizer.zero_grad(set_to_none=True)
            run.partial.skipped += 1
            run.log("warning", f"skipped update {num_updates + 1} (epoch {epoch + 1} batch {batch}): non-finite loss")
        else:
            if run.hooks.before_update:
                run.hooks.before_update(state)
            if run.scaler is not None:
                run.scaler.unscale_(run.optimizer)
            if tc.clip_grad is not None:
                from timm.utils import dispatch_clip_grad

                dispatch_clip_grad(run.model.parameters(), tc.clip_grad, mode=tc.clip_mode)
            run.logger.before_step(num_updates + 1, run.model)
            if run.scaler is not None:
                run.scaler.step(run.optimizer)
                run.scaler.update()
            else:
                run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            if run.ema is not None:
                run.ema.update(run.model, step=num_updates + 1)
        num_updates += 1
        if run.scheduler is not None:
            run.scheduler.step_update(num_updates=num_updates)
        state.num_updates = num_updates
        run.logger.after_step(num_updates, epoch, float(run.optimizer.param_groups[0]["lr"]))
        every = spec.checkpoint.every_steps
        if stop or (every and num_updates % every == 0 and batch < n_batches):
            run.partial.loss_sum += float(loss_sum)
            run.partial.loss_count += int(loss_count)
            run.partial.train_s += time.perf_counter() - t0
            loss_sum.zero_(), loss_count.zero_()
            t0 = time.perf_counter()
            state.checkpoint = _save_checkpoint(run, epoch, batch, num_updates)
        if stop:
            raise Preempted(f"stop requested by the engine at epoch {epoch + 1} batch {batch}; "
                            f"checkpoint written at update {num_updates}")
        if run.hooks.after_step:
            run.hooks.after_step(state)
    run.partial.loss_sum += float(loss_sum)
    run.partial.loss_count += int(loss_count)
    run.partial.train_s += time.perf_counter() - t0
    if batch != n_batches:
        raise RuntimeError(f"train loader yielded {batch} batches in epoch {epoch + 1}, its len() says {n_batches}")
    return num_updates


def _epoch_row(run: _Run, epoch: int, epoch_s: float, evals: dict, resumed_from: int | None) -> dict:
    p = run.partial
    loss_sum, loss_count, images, train_s = _all_reduce_sum([p.loss_sum, p.loss_count, p.images, p.train_s], run.ctx, run.device)
    train_s_mean = train_s / max(run.ctx.world_size, 1)
    return {
        **run.static,
        "epoch": epoch + 1,
        "lr": float(run.optimizer.param_groups[0]["lr"]),
        "train_loss": loss_sum / loss_count if loss_count else float("nan"),
        **evals,
        "train_img_s": images / train_s_mean if train_s_mean > 0 else None,
        "epoch_s": epoch_s,
        "wall_time": time.time(),
        "resumed_from": resumed_from,
    }


def build_initial_model(spec: RunSpec) -> nn.Module:
    """The run's model at initialisation: the same weights on every rank and in every process."""
    from jobs.models import build_model

    seed_everything(spec.seed)
    return build_model(spec.model.name, spec.strategies, **spec.create_kwargs())


def _build(spec: RunSpec, ctx: EngineContext, hooks: Hooks, log) -> _Run:
    from data.loaders import build_train_loader, build_val_loader

    device = torch.device(ctx.device)
    _setup_determinism(spec, device)
    model = build_initial_model(spec)
    static = _static_columns(spec, model)
    model.to(device)
    if spec.train.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    ema = recipe.build_ema(model, spec.train)
    optimizer = recipe.build_optimizer(model, spec.train, ctx.world_size)
    with rng_isolated(device):
        kw = dict(rank=ctx.rank, world_size=ctx.world_size, device=device)
        train_loader = build_train_loader(spec.data, batch_size=spec.train.batch_size, seed=spec.seed, **kw)
        val_loader = build_val_loader(spec.data, batch_size=spec.train.batch_size, **kw)
    updates_per_epoch = math.ceil(len(train_loader) / spec.train.grad_accum)
    scheduler = recipe.build_scheduler(optimizer, spec.train, updates_per_epoch)
    net: nn.Module = model
    if ctx.world_size > 1:
        if not _distributed(ctx):
            raise RuntimeError(f"world_size is {ctx.world_size} but torch.distributed is not initialized by the engine")
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if spec.train.compile and device.type == "cuda":
        net = torch.compile(net)
    best_metric = spec.checkpoint.best_metric
    if best_metric == "auto":
        best_metric = "ema_top1" if spec.train.ema else "top1"
    run = _Run(
        spec=spec, ctx=ctx, device=device, model=model, net=net, ema=ema, optimizer=optimizer, scheduler=scheduler,
        scaler=recipe.build_scaler(device, spec.train), mixup=recipe.build_mixup(spec.train, spec.model.num_classes),
        loss_fn=recipe.build_train_loss(spec.train), train_loader=train_loader, val_loader=val_loader,
        updates_per_epoch=updates_per_epoch, static=static, log=log, hooks=hooks, best=_Best(best_metric),
    )
    run.state = LoopState(spec=spec, ctx=ctx, model=model, ema=ema, optimizer=optimizer)
    return run


def _quarantine_corrupt(run_dir: Path, chosen: Path | None, log) -> None:
    """Move corrupt checkpoints newer than the one resumed from aside, so numbering and pruning skip them."""
    _, skipped = ckpt.scan(run_dir / CHECKPOINT_DIR)
    for bad, reason in skipped:
        if chosen is None or (ckpt.checkpoint_number(bad) or 0) > (ckpt.checkpoint_number(chosen) or 0):
            target = bad.parent / f"corrupt-{bad.name}-{int(time.time())}"
            bad.rename(target)
            log("warning", f"corrupt checkpoint {bad.name} moved to {target.name}: {reason}")


def _choose_checkpoint(ctx: EngineContext, run_dir: Path) -> tuple[Path | None, str | None]:
    """(checkpoint to resume from, None), or (None, error) when every checkpoint of the run is damaged:
    starting over would silently discard the run's progress, so the run stops and nothing is moved."""
    chosen = ctx.latest_checkpoint()
    if chosen is not None:
        return chosen, None
    _, skipped = ckpt.scan(run_dir / CHECKPOINT_DIR)
    if not skipped:
        return None, None
    reasons = "; ".join(f"{bad.name}: {reason}" for bad, reason in skipped)
    return None, (f"all {len(skipped)} checkpoints in {run_dir / CHECKPOINT_DIR} are damaged ({reasons}); "
                  f"nothing was deleted. Restore them from a copy, or move the folder aside to start the run over")


def train_loop(spec: RunSpec, ctx: EngineContext, hooks: Hooks | None = None) -> dict:
    """Train `spec` under engine `ctx` (resuming from ctx.latest_checkpoint()); returns the last row."""
    hooks = hooks or Hooks()
    run_dir = Path(ctx.run_dir)
    rank0 = ctx.rank == 0
    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
    events = run_files.EventLog(run_dir, ctx.rank)

    def log(kind: str, text: str) -> None:
        if rank0:
            events(kind, text)

    epochs = spec.train.epochs
    epoch = 0
    run = None
    try:
        data_errors = spec.data.check(spec.model.num_classes)
        if data_errors:
            raise SpecError(data_errors)
        if rank0:
            (run_dir / SPEC_FILE).write_text(spec.to_yaml())
            run_files.write_status(run_dir, "running", 0, epochs)
        run = _build(spec, ctx, hooks, log)
        # Which process is which rank, per (re)start: what an operator needs to find a hung or dead worker.
        workers = _gather(f"{socket.gethostname()}:{os.getpid()}", ctx)
        log("workers", " ".join(f"rank{r}={w}" for r, w in enumerate(workers)))
        start_epoch, start_batch, num_updates = 0, 0, 0
        chosen, unusable = _broadcast(_choose_checkpoint(ctx, run_dir) if rank0 else (None, None), ctx)
        if unusable:
            raise ckpt.CheckpointError(unusable)
        if rank0:
            _quarantine_corrupt(run_dir, chosen, log)
        if chosen is not None:
            start_epoch, start_batch, num_updates = _resume(run, Path(chosen))
            run.resumed_from = start_epoch
            log("resume", f"from {Path(chosen).name}: epoch {start_epoch} batch {start_batch} update {num_updates}")
            if rank0:
                run_files.truncate_after(run_dir, start_epoch)
        else:
            seed_everything(spec.seed + ctx.rank)  # per-rank streams for drop-path / mixup (timm's rule)
            log("start", f"{spec.condition_label} {spec.model.name} seed {spec.seed} on {ctx.world_size} worker(s), "
                         f"device {run.device}, {run.static['params']} params, lr {spec.train.scaled_lr(ctx.world_size):.3g}")
        if run.scheduler is not None:
            run.scheduler.step_update(num_updates=num_updates)
        run.state.num_updates = num_updates
        run.logger = RunLogger(spec, run_dir, rank=ctx.rank, world_size=ctx.world_size, start_step=num_updates,
                               steps_per_epoch=run.updates_per_epoch, log_event=log)
        run.logger.attach(run.model)
        row: dict = {}
        for epoch in range(start_epoch, epochs):
            t_epoch = time.perf_counter()
            num_updates = _train_epoch(run, epoch, start_batch if epoch == start_epoch else 0, num_updates)
            if run.scheduler is not None:
                run.scheduler.step(epoch + 1)
            top1, top5, n_val = evaluate(run.model, run.val_loader, spec, ctx, run.device)
            evals = {"top1": top1, "top5": top5, "ema_top1": None, "ema_top5": None}
            if run.ema is not None:
                evals["ema_top1"], evals["ema_top5"], _ = evaluate(run.ema.module, run.val_loader, spec, ctx, run.device)
            row = _epoch_row(run, epoch, time.perf_counter() - t_epoch, evals, run.resumed_from)
            if rank0:
                run_files.append_row(run_dir, row)
            run.logger.epoch_end(num_updates, row)
            improved = row[run.best.metric] is not None and row[run.best.metric] > run.best.value
            if improved:
                run.best.value, run.best.epoch = row[run.best.metric], epoch + 1
            # best before the numbered checkpoint: a kill in between recomputes this epoch and
            # exports it again, while the other order could record a best that was never exported.
            if improved and spec.checkpoint.best and rank0:
                weights = run.ema.module if run.best.metric.startswith("ema") and run.ema is not None else run.model
                ckpt.export_best(run_dir / CHECKPOINT_DIR, weights.state_dict(), {
                    "epoch": epoch + 1, "metric": run.best.metric, "value": run.best.value,
                    "model": spec.model.name, "create_kwargs": spec.create_kwargs(),
                    "strategies": [s.model_dump(mode="json") for s in spec.strategies],
                })
            path = None
            if (epoch + 1) % spec.checkpoint.every_epochs == 0 or epoch + 1 == epochs:
                path = _save_checkpoint(run, epoch + 1, 0, num_updates)
            if rank0:
                run_files.write_status(run_dir, "running", epoch + 1, epochs)
            ema_text = f"{evals['ema_top1']:.2f}" if evals["ema_top1"] is not None else "-"
            log("epoch", f"{epoch + 1}/{epochs} loss {row['train_loss']:.4f} top1 {top1:.2f} "
                         f"ema_top1 {ema_text} lr {row['lr']:.3g} "
                         f"({row['epoch_s']:.1f} s, {n_val} val samples)")
            ctx.report(row, path if rank0 else None)
            run.state.row, run.state.val_count, run.state.checkpoint = row, n_val, path or run.state.checkpoint
            if hooks.after_epoch:
                hooks.after_epoch(run.state)
        if not row:  # resumed a finished run: nothing trained, hand back its last row
            rows = run_files.read_metrics(run_dir).to_pylist()
            row = rows[-1] if rows else {}
        if rank0:
            run_files.write_status(run_dir, "finished", epochs, epochs)
        log("finish", f"best {run.best.metric} {run.best.value:.2f} at epoch {run.best.epoch}")
        run.logger.close()
        return row
    except BaseException as exc:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        if run is not None and run.logger is not None:
            with contextlib.suppress(Exception):  # flush what was logged; never hide `exc`
                run.logger.close()
        if rank0 and run_dir.exists():
            # best effort: on a full or read-only disk these writes fail too and must not hide `exc`
            with contextlib.suppress(OSError):
                run_files.write_status(run_dir, "failed", epoch, epochs, message)
            with contextlib.suppress(OSError):
                events("error", message)
        raise


# ---- `python -m jobs train CONFIG [key=value ...]` --------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs train",
        description="Train one run spec in this process (single process, or one rank under torchrun).",
    )
    parser.add_argument("config", type=Path, help="run spec YAML, e.g. configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="console verbosity; INFO prints a step line every logging.every_steps updates")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        spec = load_spec(args.config, args.overrides)
    except SpecError as exc:
        print(f"error: {args.config} is not a valid run spec:", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return 2
    from jobs.local import LocalContext

    with LocalContext(spec.run_dir, use_gpu=spec.resources.use_gpu) as ctx:
        try:
            with logging_redirect_tqdm():  # step lines above the progress bar, not through it
                row = train_loop(spec, ctx)
        except (NonFiniteLossError, SpecError, ckpt.CheckpointError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except Exception:
            traceback.print_exc()
            return 1
    if ctx.rank == 0:
        ema = f", ema top1 {row['ema_top1']:.2f}" if row.get("ema_top1") is not None else ""
        print(f"finished {spec.run_dir}: epoch {row['epoch']}, train loss {row['train_loss']:.4f}, "
              f"top1 {row['top1']:.2f}{ema}")
    return 0
