"""The training loop every run executes, whatever engine starts it (Ray Train, Slurm, torchrun, tests).

`train_loop(spec, ctx)` talks to its engine only through `ctx` (jobs.context.EngineContext): build the
run, resume it (jobs.checkpointer), then per epoch train (mixup, autocast, accumulation, clipping,
schedule, EMA), evaluate the model and its EMA on the whole val set (counts all-reduced), record one
metrics row, checkpoint, and `ctx.report`.

Exact resume: the checkpoint stores every rank's generator states (jobs.rng), its partial-epoch sums and
the loader position, so a resumed run replays the uninterrupted one bit for bit on CPU.

Stops: a NaN/inf loss raises NonFiniteLossError (no checkpoint is written after it; `train.skip_nonfinite`
skips such updates instead); an engine that defines `stop_requested() -> bool` gets a checkpoint at the
next optimizer update and a Preempted exception. `Hooks` let tests watch the loop and kill it by raising.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import socket
import time
from pathlib import Path
from typing import Iterator

import torch
from timm.utils import dispatch_clip_grad
from torch import nn

import rundir as run_files
from jobs import checkpoint as ckpt
from jobs import recipe, weights
from jobs.checkpointer import Position
from jobs.context import EngineContext
from jobs.distill.teacher import resume_error, teacher_identity
from jobs.distributed import all_reduce_sum, broadcast, gather
from jobs.loop_state import EpochSums, Hooks, LoopState, build_state
from jobs.rng import isolated_batches, rng_isolated, seed_everything
from jobs.run_logger import RunLogger
from jobs.spec import RunSpec, SpecError


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stops and its last good checkpoint is kept."""


class Preempted(RuntimeError):
    """The engine asked the run to stop (e.g. Slurm's pre-timeout signal); a checkpoint was just written."""


def _stop_requested(ctx: EngineContext) -> bool:
    # Optional engine member (not in the EngineContext protocol): `stop_requested() -> bool`, polled at
    # every optimizer update. A Slurm engine sets it from its signal handler and requeues on Preempted.
    fn = getattr(ctx, "stop_requested", None)
    return bool(fn()) if callable(fn) else False


def _resume_or_start(state: LoopState) -> None:
    """Continue from the chosen checkpoint, or seed this rank's training stream for a fresh start."""
    spec, ctx = state.spec, state.ctx
    chosen = state.checkpointer.choose()
    if chosen is not None:
        pos, sums = state.checkpointer.restore(chosen, state.updates_per_epoch)
        state.epoch, state.batch, state.num_updates = pos.epoch, pos.batch, pos.num_updates
        state.sums = EpochSums(**sums) if sums is not None else EpochSums()
        if ctx.rank == 0:
            run_files.truncate_after(ctx.run_dir, pos.epoch)
    else:
        seed_everything(spec.seed + ctx.rank)  # per-rank streams for drop-path / mixup (timm's rule)
        state.log("start", f"{spec.condition_label} {spec.model.name} seed {spec.seed} on {ctx.world_size} worker(s), "
                           f"device {state.device}, {state.static['params']} params, "
                           f"lr {spec.train.scaled_lr(ctx.world_size):.3g}")
    scheduler = state.parts.scheduler
    if scheduler is not None:  # the lr of where training continues (timm ignores the step kind it does not use)
        scheduler.step(state.epoch)
        scheduler.step_update(num_updates=state.num_updates)
    rule = spec.train.lr_rule(ctx.world_size)
    state.log("lr", rule)
    if ctx.rank == 0:
        print(f"{spec.study}/{spec.run_id}: {rule}", flush=True)


# ---- train ------------------------------------------------------------------------------------


def _to_format(images: torch.Tensor, spec: RunSpec, device: torch.device) -> torch.Tensor:
    if spec.train.channels_last and device.type == "cuda":
        return images.contiguous(memory_format=torch.channels_last)
    return images


def _train_epoch(state: LoopState, epoch: int, start_batch: int) -> None:
    spec, device, parts = state.spec, state.device, state.parts
    n_batches, accum = len(state.train_loader), spec.train.grad_accum
    with rng_isolated(device):
        state.train_loader.set_epoch(epoch, start_batch)
    state.net.train()
    if start_batch == 0:
        state.sums = EpochSums()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    loss_count = torch.zeros((), dtype=torch.int64, device=device)
    bad = torch.zeros((), dtype=torch.int64, device=device)
    t0 = time.perf_counter()

    def flush_sums() -> None:
        nonlocal t0
        state.sums.loss_sum += float(loss_sum)
        state.sums.loss_count += int(loss_count)
        state.sums.train_s += time.perf_counter() - t0
        loss_sum.zero_(), loss_count.zero_()
        t0 = time.perf_counter()

    batch = start_batch
    # len() is the contract (every rank runs the same number of batches); never read past it.
    batches = itertools.islice(isolated_batches(state.train_loader, device), n_batches - start_batch)
    for images, labels in state.logger.timed(batches):
        group_start = (batch // accum) * accum
        group_size = min(accum, n_batches - group_start)
        last_micro = batch + 1 == group_start + group_size
        if state.mixup is not None and len(labels) % 2:
            # timm Mixup pairs samples; an odd final batch loses its last image.
            images, labels = images[:-1], labels[:-1]
        if parts.distiller is not None:
            labels = parts.distiller.train_labels(labels)
        targets = labels
        if state.mixup is not None:
            images, targets = state.mixup(images, labels)
        images = state.train_loader.after_mixup(images, batch)  # data.erase_order after_mixup: timm's order
        images = _to_format(images, spec, device)
        sync = contextlib.nullcontext() if last_micro or not isinstance(state.net, nn.parallel.DistributedDataParallel) \
            else state.net.no_sync()
        with sync:
            with recipe.autocast(device, spec.train):
                if parts.distiller is not None:
                    loss = parts.distiller(state.net, images, targets, state.loss_fn)
                else:
                    loss = state.loss_fn(state.net(images), targets)
            finite = torch.isfinite(loss.detach())
            scaled = loss / group_size
            (parts.scaler.scale(scaled) if parts.scaler is not None else scaled).backward()
        bad += (~finite).long()
        loss_sum += torch.where(finite, loss.detach().double(), 0.0) * len(labels)
        loss_count += finite.long() * len(labels)
        state.sums.images += len(labels)
        state.logger.micro_batch(loss, len(labels))
        batch += 1
        state.epoch, state.batch, state.images, state.targets = epoch, batch, images, targets
        if not last_micro:
            continue
        bad_total, stop_total = all_reduce_sum([bad.item(), int(_stop_requested(state.ctx))], state.ctx, device,
                                               dtype=torch.int64)
        bad.zero_()
        stop = stop_total > 0
        _update(state, nonfinite=bad_total > 0)
        state.logger.after_step(state.num_updates, epoch, float(parts.optimizer.param_groups[0]["lr"]))
        if stop or state.checkpointer.due_mid_epoch(state.num_updates, batch, n_batches):
            flush_sums()
            state.checkpointer.save(Position(epoch, batch, state.num_updates), dict(state.sums.__dict__))
        if stop:
            raise Preempted(f"stop requested by the engine at epoch {epoch + 1} batch {batch}; "
                            f"checkpoint written at update {state.num_updates}")
        if state.hooks.after_step:
            state.hooks.after_step(state)
    flush_sums()
    if batch != n_batches:
        raise RuntimeError(f"train loader yielded {batch} batches in epoch {epoch + 1}, its len() says {n_batches}")


def _update(state: LoopState, nonfinite: bool) -> None:
    """One optimizer update from the accumulated gradients (skipped, or the run stopped, on a NaN/inf loss)."""
    tc, parts, n = state.spec.train, state.parts, state.num_updates
    if nonfinite and not tc.skip_nonfinite:
        last = state.ctx.latest_checkpoint() if state.ctx.rank == 0 else None
        raise NonFiniteLossError(
            f"non-finite training loss at epoch {state.epoch + 1} batch {state.batch} (update {n + 1}); "
            f"stopped, last good checkpoint: {last or 'none'}. Lower train.lr, set train.clip_grad, "
            f"or set train.skip_nonfinite=true to skip such updates"
        )
    if nonfinite:
        parts.optimizer.zero_grad(set_to_none=True)
        state.sums.skipped += 1
        state.log("warning", f"skipped update {n + 1} (epoch {state.epoch + 1} batch {state.batch}): non-finite loss")
    else:
        if state.hooks.before_update:
            state.hooks.before_update(state)
        if tc.weight_decay_end is not None:
            recipe.set_weight_decay(parts.optimizer, recipe.weight_decay_at(tc, n, tc.epochs * state.updates_per_epoch))
        if parts.scaler is not None:
            parts.scaler.unscale_(parts.optimizer)
        if tc.clip_grad is not None:
            dispatch_clip_grad(parts.model.parameters(), tc.clip_grad, mode=tc.clip_mode)
        state.logger.before_step(n + 1, parts.model)
        if parts.scaler is not None:
            parts.scaler.step(parts.optimizer)
            parts.scaler.update()
        else:
            parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
        if parts.ema is not None:
            parts.ema.update(parts.model, step=n + 1)
    state.num_updates = n + 1
    if parts.scheduler is not None:
        parts.scheduler.step_update(num_updates=state.num_updates)


# ---- evaluate and record ----------------------------------------------------------------------


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
    c1, c5, n = all_reduce_sum([correct1, correct5, total], ctx, device, dtype=torch.int64)
    if n == 0:
        raise RuntimeError(f"the validation loader of {spec.data.val_path} yielded no samples")
    return 100.0 * c1 / n, 100.0 * c5 / n, int(n)


def _evaluate_all(state: LoopState) -> dict:
    spec, ctx, device = state.spec, state.ctx, state.device
    top1, top5, state.val_count = evaluate(state.model, state.val_loader, spec, ctx, device)
    evals = {"top1": top1, "top5": top5, "ema_top1": None, "ema_top5": None}
    if state.ema is not None:
        evals["ema_top1"], evals["ema_top5"], _ = evaluate(state.ema.module, state.val_loader, spec, ctx, device)
    return evals


def _epoch_row(state: LoopState, epoch: int, epoch_s: float, evals: dict) -> dict:
    s = state.sums
    loss_sum, loss_count, images, train_s = all_reduce_sum([s.loss_sum, s.loss_count, s.images, s.train_s],
                                                           state.ctx, state.device)
    train_s_mean = train_s / max(state.ctx.world_size, 1)
    return {
        **state.static,
        "epoch": epoch + 1,
        "lr": float(state.optimizer.param_groups[0]["lr"]),
        "train_loss": loss_sum / loss_count if loss_count else float("nan"),
        **evals,
        "train_img_s": images / train_s_mean if train_s_mean > 0 else None,
        "epoch_s": epoch_s,
        "wall_time": time.time(),
        "resumed_from": state.checkpointer.resumed_from,
    }


def _evaluate_as_built(state: LoopState) -> dict:
    """`train.epochs: 0`: the model as loaded and reduced, evaluated once; row `epoch 0` and its best export
    (what a later stage can start from or learn from)."""
    t0 = time.perf_counter()
    evals = _evaluate_all(state)
    row = _epoch_row(state, -1, time.perf_counter() - t0, evals)
    if state.ctx.rank == 0:
        run_files.append_row(state.ctx.run_dir, row)
    state.checkpointer.record(row)
    state.log("epoch", f"0/0 (as built) top1 {evals['top1']:.2f} ({state.val_count} val samples)")
    state.ctx.report(row, None)
    return row


# ---- the loop -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _weights_errors() -> Iterator[None]:
    """Starting weights or a teacher that cannot be used are spec errors: one line, no traceback."""
    try:
        yield
    except weights.WeightsError as exc:
        raise SpecError([str(exc)]) from None


def _refuse_changed_teacher(spec: RunSpec, ctx: EngineContext) -> None:
    """A checkpoint trained with another teacher (or none) is not resumed."""
    latest = broadcast(ctx.latest_checkpoint() if ctx.rank == 0 else None, ctx)
    if latest is None:
        return
    recorded = ckpt.read_manifest(Path(latest)).get("teacher")
    current = teacher_identity(spec.distill, spec.model.name, weights.Place.of(spec), spec.model.init)
    problem = resume_error(recorded, current)
    if problem:
        raise SpecError([f"{problem} (checkpoint {latest})"])


def train_loop(spec: RunSpec, ctx: EngineContext, hooks: Hooks | None = None) -> dict:
    """Train `spec` under engine `ctx` (resuming from ctx.latest_checkpoint()); returns the last row."""
    run_dir, rank0, epochs = Path(ctx.run_dir), ctx.rank == 0, spec.train.epochs
    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
    events = run_files.EventLog(run_dir, ctx.rank)

    def log(kind: str, text: str) -> None:
        if rank0:
            events(kind, text)

    epoch, state = 0, None
    # Before the try: a refused resume writes nothing, not even a failed status.
    with _weights_errors():
        _refuse_changed_teacher(spec, ctx)
    try:
        data_errors = spec.data.check(spec.model.num_classes)
        if data_errors:
            raise SpecError(data_errors)
        if rank0:
            spec.record(run_dir)
            run_files.write_status(run_dir, "running", 0, epochs)
        with _weights_errors():
            state = build_state(spec, ctx, hooks or Hooks(), log)
        # Which process is which rank, per (re)start: what an operator needs to find a hung or dead worker.
        workers = gather(f"{socket.gethostname()}:{os.getpid()}", ctx)
        log("workers", " ".join(f"rank{r}={w}" for r, w in enumerate(workers)))
        _resume_or_start(state)
        state.logger = RunLogger(spec, run_dir, rank=ctx.rank, world_size=ctx.world_size, start_step=state.num_updates,
                                 steps_per_epoch=state.updates_per_epoch, log_event=log)
        state.logger.attach(state.model)
        start_epoch, start_batch = state.epoch, state.batch
        for epoch in range(start_epoch, epochs):
            t_epoch = time.perf_counter()
            _train_epoch(state, epoch, start_batch if epoch == start_epoch else 0)
            if state.parts.scheduler is not None:
                state.parts.scheduler.step(epoch + 1)
            evals = _evaluate_all(state)
            state.row = row = _epoch_row(state, epoch, time.perf_counter() - t_epoch, evals)
            if rank0:
                run_files.append_row(run_dir, row)
            state.logger.epoch_end(state.num_updates, row)
            state.checkpointer.record(row)
            path = None
            if state.checkpointer.due_at_epoch_end(epoch + 1, epochs):
                path = state.checkpointer.save(Position(epoch + 1, 0, state.num_updates), dict(state.sums.__dict__))
            if rank0:
                run_files.write_status(run_dir, "running", epoch + 1, epochs)
            ema_text = f"{evals['ema_top1']:.2f}" if evals["ema_top1"] is not None else "-"
            log("epoch", f"{epoch + 1}/{epochs} loss {row['train_loss']:.4f} top1 {evals['top1']:.2f} "
                         f"ema_top1 {ema_text} lr {row['lr']:.3g} ({row['epoch_s']:.1f} s, {state.val_count} val samples)")
            ctx.report(row, path if rank0 else None)
            if state.hooks.after_epoch:
                state.hooks.after_epoch(state)
        if epochs == 0 and state.row is None and not run_files.read_metrics(run_dir).num_rows:
            state.row = _evaluate_as_built(state)
        if state.row is None:  # resumed a finished run: nothing trained, hand back its last row
            rows = run_files.read_metrics(run_dir).to_pylist()
            state.row = rows[-1] if rows else {}
        if rank0:
            run_files.write_status(run_dir, "finished", epochs, epochs)
        best = state.checkpointer.best
        log("finish", f"best {best.metric} {best.value:.2f} at epoch {best.epoch}")
        state.logger.close()
        return state.row
    except BaseException as exc:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        if state is not None and state.logger is not None:
            with contextlib.suppress(Exception):  # flush what was logged; never hide `exc`
                state.logger.close()
        if rank0 and run_dir.exists():
            # best effort: on a full or read-only disk these writes fail too and must not hide `exc`
            with contextlib.suppress(OSError):
                run_files.write_status(run_dir, "failed", epoch, epochs, message)
            with contextlib.suppress(OSError):
                events("error", message)
        raise


# ---- `python -m jobs train CONFIG [key=value ...]` --------------------------------------------
