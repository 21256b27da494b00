"""The life of a run, whatever engine starts it (Ray Train, Slurm, torchrun, `python -m jobs train`, tests).

`train_loop(spec, ctx)` talks to its engine only through `ctx` (jobs.context.EngineContext) and owns the run's
life, from one place:

    start:   choose the checkpoint to resume from, once (its checksums verified once), refuse one made with
             another teacher (nothing is written then), build the run, restore it or seed a fresh start;
    running: per epoch train (jobs.train_step), evaluate the model and its EMA on the whole val set, record
             one metrics row, checkpoint, `ctx.report`;
    end:     finished | failed (with the error) | preempted (a stop request: checkpoint at the update the
             ranks agreed on, then `Preempted`; the same command, or the engine's requeue, continues from
             exactly there) | stopped (the engine ended the run early for good at an epoch's report:
             `StoppedEarly`, e.g. an ASHA-stopped tuning trial).

Every status change goes through `Lifecycle.status` (rank 0; rundir.write_status underneath).

Exact resume: the checkpoint stores every rank's generator states (jobs.rng), its partial-epoch sums and
the loader position, so a resumed run replays the uninterrupted one bit for bit on CPU. `Hooks` let tests
watch the loop and kill it by raising.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

import rundir as run_files
from jobs import checkpoint_files as ckpt
from jobs import recipe, weights
from jobs.checkpoint_policy import Position, choose
from jobs.context import EngineContext
from jobs.distill.teacher import resume_error, teacher_identity
from jobs.distributed import all_reduce_sum, gather
from jobs.loop_state import EpochSums, Hooks, LoopState, build_state
from jobs.rng import isolated_batches, seed_everything
from jobs.run_logger import RunLogger
from jobs.spec import RunSpec, SpecError
from jobs.stop import Preempted, StoppedEarly, withdraw_request
from jobs.train_step import NonFiniteLossError, agree, to_format, train_epoch

__all__ = ["Hooks", "Lifecycle", "NonFiniteLossError", "Preempted", "StoppedEarly", "evaluate", "train_loop"]


class Lifecycle:
    """A run's status and events, written by rank 0: the one place where a run's state changes."""

    def __init__(self, spec: RunSpec, ctx: EngineContext):
        self.run_dir, self.rank0, self.epochs = Path(ctx.run_dir), ctx.rank == 0, spec.train.epochs
        if self.rank0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.events = run_files.EventLog(self.run_dir, ctx.rank)
        self.epochs_done = 0
        self.logger: RunLogger | None = None

    def log(self, kind: str, text: str) -> None:
        if self.rank0:
            self.events(kind, text)

    def status(self, state: str, error: str | None = None, update: int | None = None) -> None:
        if self.rank0:
            run_files.write_status(self.run_dir, state, self.epochs_done, self.epochs, error, update)

    @contextlib.contextmanager
    def recorded(self) -> Iterator[None]:
        """How the block ended, recorded: a stop request as `preempted` (resumable), the engine ending the run
        early as `stopped` (at the epoch it last reported), anything else as `failed`."""
        try:
            yield
        except StoppedEarly as exc:
            self.stopped(str(exc))
            raise
        except Preempted as exc:
            self._close_logger()
            self.epochs_done = exc.epoch
            where = exc.checkpoint.name if exc.checkpoint is not None else "the start"
            self.status("preempted", update=exc.update)
            if self.rank0:
                withdraw_request(self.run_dir)
            self.log("preempted", f"{exc}; continues from {where} (update {exc.update})")
            raise
        except BaseException as exc:
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            self._close_logger()
            if self.rank0 and self.run_dir.exists():
                # best effort: on a full or read-only disk these writes fail too and must not hide `exc`
                with contextlib.suppress(OSError):
                    self.status("failed", message)
                with contextlib.suppress(OSError):
                    self.events("error", message)
            raise

    def stopped(self, reason: str) -> None:
        """The engine ended the run for good after `epochs_done` epochs, short of its planned ones."""
        self._close_logger()
        self.status("stopped")
        self.log("stopped", f"{reason} after epoch {self.epochs_done}/{self.epochs}")

    def _close_logger(self) -> None:
        if self.logger is not None:
            with contextlib.suppress(Exception):  # flush what was logged; never hide the exception
                self.logger.close()


def _resume_or_start(state: LoopState, chosen: Path | None) -> None:
    """Continue from the chosen checkpoint, or seed this rank's training stream for a fresh start."""
    spec, ctx = state.spec, state.ctx
    state.checkpointer.quarantine(chosen)
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
            logits = model(to_format(images, spec, device))
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


def _refuse_changed_teacher(spec: RunSpec, chosen: Path | None) -> None:
    """A checkpoint trained with another teacher (or none) is not resumed."""
    if chosen is None:
        return
    recorded = ckpt.read_manifest(chosen).get("teacher")
    current = teacher_identity(spec.distill, spec.model.name, weights.Place.of(spec), spec.model.init)
    problem = resume_error(recorded, current)
    if problem:
        raise SpecError([f"{problem} (checkpoint {chosen})"])


def train_loop(spec: RunSpec, ctx: EngineContext, hooks: Hooks | None = None) -> dict:
    """Train `spec` under engine `ctx`, resuming from its newest valid checkpoint; returns the last row.
    Raises Preempted after a stop request (a checkpoint was written at the update it names)."""
    life = Lifecycle(spec, ctx)
    with life.recorded():
        chosen = choose(ctx)
    # Outside `recorded`: a refused resume writes nothing, not even a failed status.
    with _weights_errors():
        _refuse_changed_teacher(spec, chosen)
    with life.recorded():
        return _train(spec, ctx, hooks or Hooks(), life, chosen)


def _train(spec: RunSpec, ctx: EngineContext, hooks: Hooks, life: Lifecycle, chosen: Path | None) -> dict:
    run_dir, epochs = life.run_dir, spec.train.epochs
    data_errors = spec.data.check(spec.model.num_classes)
    if data_errors:
        raise SpecError(data_errors)
    if life.rank0:
        spec.record(run_dir)
    life.status("running")
    with _weights_errors():
        state = build_state(spec, ctx, hooks, life.log)
    # Which process is which rank, per (re)start: what an operator needs to find a hung or dead worker.
    workers = gather(f"{socket.gethostname()}:{os.getpid()}", ctx)
    life.log("workers", " ".join(f"rank{r}={w}" for r, w in enumerate(workers)))
    _resume_or_start(state, chosen)
    life.epochs_done = state.epoch
    state.logger = life.logger = RunLogger(
        spec, run_dir, rank=ctx.rank, world_size=ctx.world_size, start_step=state.num_updates,
        steps_per_epoch=state.updates_per_epoch, log_event=life.log)
    state.logger.attach(state.model)
    if agree(state)[1]:  # asked to stop while starting up: nothing trained since `chosen`
        raise Preempted("stopped on request before the first update", chosen, state.num_updates, state.epoch)
    start_epoch, start_batch = state.epoch, state.batch
    for epoch in range(start_epoch, epochs):
        t_epoch = time.perf_counter()
        train_epoch(state, epoch, start_batch if epoch == start_epoch else 0)
        if state.parts.scheduler is not None:
            state.parts.scheduler.step(epoch + 1)
        evals = _evaluate_all(state)
        state.row = row = _epoch_row(state, epoch, time.perf_counter() - t_epoch, evals)
        if life.rank0:
            run_files.append_row(run_dir, row)
        state.logger.epoch_end(state.num_updates, row)
        state.checkpointer.record(row)
        path = None
        stop = epoch + 1 < epochs and agree(state)[1]  # a request that came during the evaluation
        if stop or state.checkpointer.due_at_epoch_end(epoch + 1, epochs):
            path = state.checkpointer.save(Position(epoch + 1, 0, state.num_updates), dict(state.sums.__dict__))
        life.epochs_done = epoch + 1
        life.status("running")
        ema_text = f"{evals['ema_top1']:.2f}" if evals["ema_top1"] is not None else "-"
        life.log("epoch", f"{epoch + 1}/{epochs} loss {row['train_loss']:.4f} top1 {evals['top1']:.2f} "
                          f"ema_top1 {ema_text} lr {row['lr']:.3g} ({row['epoch_s']:.1f} s, {state.val_count} val samples)")
        try:
            ctx.report(row, path if life.rank0 else None)
        except StoppedEarly:
            if epoch + 1 < epochs:
                raise
            # the engine's decision on the last row (ASHA's rung at max_t) has nothing left to stop: finished
        if stop:
            raise Preempted(f"stopped on request after epoch {epoch + 1}", path, state.num_updates, epoch + 1)
        if state.hooks.after_epoch:
            state.hooks.after_epoch(state)
    if epochs == 0 and state.row is None and not run_files.read_metrics(run_dir).num_rows:
        state.row = _evaluate_as_built(state)
    if state.row is None:  # resumed a finished run: nothing trained, hand back its last row
        rows = run_files.read_metrics(run_dir).to_pylist()
        state.row = rows[-1] if rows else {}
    life.epochs_done = epochs
    life.status("finished")
    best = state.checkpointer.best
    life.log("finish", f"best {best.metric} {best.value:.2f} at epoch {best.epoch}")
    state.logger.close()
    life.logger = None
    return state.row
