"""One training epoch: the train step (forward, loss, backward, update) and where the ranks agree.

No host sync per update. Every micro-batch's finite check stays on the device (a counter, and where the
first non-finite loss was); the ranks agree, in one small all-reduce (`agree`), on that counter and on a stop
flag only at an *agreement point*: every `checkpoint.sync_every` updates, before every mid-epoch checkpoint
and at the epoch's last update. Consequences, by choice:

- default (`train.skip_nonfinite: false`): an update with a NaN/inf loss is taken, and the run stops with
  NonFiniteLossError at the next agreement point, before anything is written: no checkpoint, no metrics
  row, no best export holds its weights, so the last good checkpoint is the one a resume uses (as before).
- `train.skip_nonfinite: true` must know before the optimizer step whether to skip it, so the ranks agree
  before every update (one host sync per update, as torch's GradScaler does for fp16).
- a stop request (jobs.stop) is acted on at the next agreement point: a checkpoint at that update, then
  `Preempted`. It waits at most `sync_every` updates.
"""
from __future__ import annotations

import contextlib
import itertools
import time

import torch
from timm.utils import dispatch_clip_grad
from torch import nn

from jobs import recipe
from jobs.checkpoint_policy import Position
from jobs.distributed import gather, is_distributed
from jobs.loop_state import EpochSums, LoopState
from jobs.rng import isolated_batches, rng_isolated
from jobs.spec import RunSpec
from jobs.stop import Preempted, stop_requested


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stops and its last good checkpoint is kept."""


def agree(state: LoopState, bad: torch.Tensor | None = None) -> tuple[int, bool]:
    """(non-finite micro-batches on all ranks since the last agreement, whether any rank was asked to stop):
    the one host sync of an agreement point, and the only place the ranks agree on a stop (`bad` None: outside
    an epoch, where nothing was counted)."""
    if bad is None:
        bad = torch.zeros((), dtype=torch.int64, device=state.device)
    counts = torch.stack([bad, torch.full_like(bad, int(stop_requested(state.ctx)))])
    if is_distributed(state.ctx):
        torch.distributed.all_reduce(counts)
    bad_total, stop_total = counts.tolist()
    return bad_total, stop_total > 0


def to_format(images: torch.Tensor, spec: RunSpec, device: torch.device) -> torch.Tensor:
    if spec.train.channels_last and device.type == "cuda":
        return images.contiguous(memory_format=torch.channels_last)
    return images


def train_epoch(state: LoopState, epoch: int, start_batch: int) -> None:
    spec, device, parts, ckpt = state.spec, state.device, state.parts, state.checkpointer
    n_batches, accum, every = len(state.train_loader), spec.train.grad_accum, ckpt.config.sync_every
    with rng_isolated(device):
        state.train_loader.set_epoch(epoch, start_batch)
    state.net.train()
    if start_batch == 0:
        state.sums = EpochSums()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    loss_count = torch.zeros((), dtype=torch.int64, device=device)
    bad = torch.zeros((), dtype=torch.int64, device=device)        # non-finite micro-batches since agreeing
    first_batch = torch.full((), -1, dtype=torch.int64, device=device)   # where the first of them was
    first_update = torch.full((), -1, dtype=torch.int64, device=device)
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
        loss, n_images = _forward_backward(state, images, labels, batch, group_size, last_micro)
        finite = torch.isfinite(loss.detach())
        # Where the first non-finite loss since the last agreement was: device ops, python scalars, no sync.
        new_bad = (bad == 0) & ~finite
        first_batch = torch.where(new_bad, batch + 1, first_batch)
        first_update = torch.where(new_bad, state.num_updates + 1, first_update)
        bad += (~finite).long()
        loss_sum += torch.where(finite, loss.detach().double(), 0.0) * n_images
        loss_count += finite.long() * n_images
        state.sums.images += n_images
        state.logger.micro_batch(loss, n_images)
        batch += 1
        state.epoch, state.batch = epoch, batch
        if not last_micro:
            continue
        verdict = agree(state, bad) if spec.train.skip_nonfinite else None  # the skip needs it before the step
        update(state, skip=verdict is not None and verdict[0] > 0)
        state.logger.after_step(state.num_updates, epoch, float(parts.optimizer.param_groups[0]["lr"]))
        due = ckpt.due_mid_epoch(state.num_updates, batch, n_batches)
        if verdict is None and (due or state.num_updates % every == 0 or batch == n_batches):
            verdict = agree(state, bad)
            if verdict[0]:
                raise _nonfinite_error(state, first_batch, first_update)
        stop = verdict is not None and verdict[1]
        if verdict is not None:
            bad.zero_(), first_batch.fill_(-1), first_update.fill_(-1)
        if stop or due:
            flush_sums()
            path = ckpt.save(Position(epoch, batch, state.num_updates), dict(state.sums.__dict__))
        if stop:
            raise Preempted(f"stopped on request at epoch {epoch + 1} batch {batch}/{n_batches}, update "
                            f"{state.num_updates}", path, state.num_updates, epoch)
        if state.hooks.after_step:
            state.hooks.after_step(state)
    flush_sums()
    if batch != n_batches:
        raise RuntimeError(f"train loader yielded {batch} batches in epoch {epoch + 1}, its len() says {n_batches}")


def _forward_backward(state: LoopState, images, labels, batch: int, group_size: int, last_micro: bool):
    """One micro-batch: mixup, forward, loss, backward (gradients all-reduced only on a group's last one).
    Returns (the loss, detached for the caller's sums, the images it counted)."""
    spec, parts, mixup = state.spec, state.parts, state.mixup
    if mixup is not None and len(labels) % 2:
        # timm Mixup pairs samples; an odd final batch loses its last image.
        images, labels = images[:-1], labels[:-1]
    if parts.distiller is not None:
        labels = parts.distiller.train_labels(labels)
    targets = labels
    if mixup is not None:
        images, targets = mixup(images, labels)
    images = state.train_loader.after_mixup(images, batch)  # data.erase_order after_mixup: timm's order
    images = to_format(images, spec, state.device)
    ddp = isinstance(state.net, nn.parallel.DistributedDataParallel)
    sync = state.net.no_sync() if ddp and not last_micro else contextlib.nullcontext()
    with sync:
        with recipe.autocast(state.device, spec.train):
            if parts.distiller is not None:
                loss = parts.distiller(state.net, images, targets, state.loss_fn)
            else:
                loss = state.loss_fn(state.net(images), targets)
        scaled = loss / group_size
        (parts.scaler.scale(scaled) if parts.scaler is not None else scaled).backward()
    state.images, state.targets = images, targets
    return loss, len(labels)


def update(state: LoopState, skip: bool) -> None:
    """One optimizer update from the accumulated gradients (`skip`: a non-finite loss, train.skip_nonfinite)."""
    tc, parts, n = state.spec.train, state.parts, state.num_updates
    if skip:
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


def _nonfinite_error(state: LoopState, first_batch: torch.Tensor, first_update: torch.Tensor) -> NonFiniteLossError:
    # The earliest (batch, update) over the ranks that saw one (every rank calls gather: all raise together).
    seen = [x for x in gather((int(first_batch), int(first_update)), state.ctx) if x[0] >= 0]
    batch, update_no = min(seen, key=lambda x: x[1]) if seen else (state.batch, state.num_updates)
    last = state.checkpointer.last or state.checkpointer.resumed_path
    return NonFiniteLossError(
        f"non-finite training loss at epoch {state.epoch + 1} batch {batch} (update {update_no}); "
        f"stopped, last good checkpoint: {last or 'none'}. Lower train.lr, set train.clip_grad, "
        f"or set train.skip_nonfinite=true to skip such updates"
    )
