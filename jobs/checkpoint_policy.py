"""What a run checkpoints, when, which checkpoint it resumes from, and its best export.

`Checkpointer` is configured by the run spec's `checkpoint:` block (`CheckpointConfig`) and holds the
objects a checkpoint restores (`Trainables`). The file format (numbered atomic folders, checksums,
shared-tensor packing) is jobs.checkpoint_files'; this module decides:

- what: the model, its EMA, optimizer, schedule, grad scaler, the best value so far, the position
  (epoch, batch, optimizer updates) and, per rank, the generator states and the partial-epoch sums
  the caller hands over, so a resumed run replays the uninterrupted one bit for bit on CPU;
- when: every `every_epochs` epochs and after the last one, and every `every_steps` optimizer updates
  inside an epoch (`due_at_epoch_end`, `due_mid_epoch`);
- which: the engine's latest valid checkpoint, decided once per process start (`choose`: rank 0 asks the
  engine, which verifies its checksums once; every rank gets the answer); corrupt checkpoints newer than it
  are moved aside (`quarantine`); when every checkpoint is damaged the run stops instead of silently
  starting over;
- best: `checkpoints/best/` holds the weights of the best epoch by `best_metric`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from jobs import checkpoint_files as ckpt
from jobs.context import EngineContext
from jobs.distributed import barrier, broadcast, gather
from jobs.rng import rng_state, seed_everything, set_rng_state
from rundir import CHECKPOINT_DIR, best_metric_column


class CheckpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    every_epochs: int = Field(1, ge=1, description="write a checkpoint every N epochs (and always after the last)")
    every_steps: int = Field(0, ge=0, description="also every N optimizer updates, mid-epoch; 0 = off")
    sync_every: int = Field(20, ge=1, description="the ranks agree on a stop request (a checkpoint is written "
                            "there) and on non-finite losses every N updates: one host sync per N updates")
    keep_last: int = Field(2, ge=2, description="numbered checkpoints kept (>= 2 so a corrupt latest has a fallback)")
    best: bool = Field(True, description="export the best weights as checkpoints/best/model.pt (plain state dict)")
    best_metric: Literal["auto", "ema_top1", "top1"] = Field("auto", description="auto = ema_top1 when EMA is on")

    def resolved_best_metric(self, ema: bool) -> str:
        return best_metric_column(self.best_metric, ema)


@dataclass
class Trainables:
    """The objects whose state a checkpoint holds (`ema`, `scheduler`, `scaler` may be None)."""

    model: nn.Module                      # unwrapped (no DDP, not compiled)
    ema: Any                              # timm ModelEmaV3
    optimizer: torch.optim.Optimizer
    scheduler: Any                        # timm Scheduler
    scaler: Any                           # torch.amp.GradScaler
    distiller: Any = None                 # jobs.distill Distiller: its projection's state, its teacher's identity


@dataclass
class Position:
    epoch: int = 0        # 0-based epoch to train next (or being trained, when batch > 0)
    batch: int = 0        # micro-batches of that epoch already done
    num_updates: int = 0  # optimizer updates done in the whole run


@dataclass
class Best:
    metric: str
    value: float = -math.inf
    epoch: int = 0


class Checkpointer:
    def __init__(self, config: CheckpointConfig, ctx: EngineContext, device: torch.device, parts: Trainables,
                 identity: dict[str, Any], best_metric: str, log: Callable[[str, str], None]):
        """`identity`: model name, strategies (JSON form), create_kwargs and seed, written into manifests
        so a checkpoint says what it is."""
        self.config, self.ctx, self.device, self.parts, self.identity, self.log = config, ctx, device, parts, identity, log
        self.dir = Path(ctx.run_dir) / CHECKPOINT_DIR
        self.number = 0                          # the last checkpoint number used in this run's folder
        self.best = Best(best_metric)
        self.resumed_from: int | None = None     # epoch this process resumed from
        self.resumed_path: Path | None = None    # the checkpoint it resumed from
        self.last: Path | None = None            # the last checkpoint this process wrote

    # ---- which ---------------------------------------------------------------------------------

    def quarantine(self, chosen: Path | None) -> None:
        """Move aside (rank 0) the checkpoints newer than `chosen`: the engine found them corrupt, and numbering
        and pruning must skip them. Only those are verified again, for the reason logged."""
        if self.ctx.rank != 0:
            return
        newer = [p for p in ckpt.numbered(self.dir)
                 if chosen is None or (ckpt.checkpoint_number(p) or 0) > (ckpt.checkpoint_number(chosen) or 0)]
        for bad in newer:
            reason = ckpt.verify(bad)
            if reason is None:  # valid after all (an engine may prefer its own record): keep it
                continue
            target = bad.parent / f"corrupt-{bad.name}-{int(time.time())}"
            bad.rename(target)
            self.log("warning", f"corrupt checkpoint {bad.name} moved to {target.name}: {reason}")

    # ---- restore -------------------------------------------------------------------------------

    def restore(self, path: Path, updates_per_epoch: int) -> tuple[Position, dict | None]:
        """Load `path` into the trainables and this rank's generators. Returns the position to continue
        from and this rank's saved partial-epoch sums (None: the epoch restarts from its first batch)."""
        parts = self.parts
        state = ckpt.load_file(path, "train_state.pt")
        ckpt.load_model_state(parts.model, ckpt.load_file(path, "model.pt"))
        if parts.ema is not None:
            if (path / "ema.pt").exists():
                ckpt.load_model_state(parts.ema.module, ckpt.load_file(path, "ema.pt"))
            else:
                parts.ema.set(parts.model)
                self.log("warning", f"{path.name} has no EMA; EMA restarts from the model weights")
        if parts.distiller is not None and (path / "distill.pt").exists():
            parts.distiller.load_state_dict(ckpt.load_file(path, "distill.pt"))
        parts.optimizer.load_state_dict(state["optimizer"])
        if parts.scaler is not None and state.get("scaler"):
            parts.scaler.load_state_dict(state["scaler"])
        self.best = Best(**state["best"])
        # Continue numbering after everything already in this run's folder (the engine may hand us a
        # checkpoint stored elsewhere, e.g. Ray's storage), so a new checkpoint never replaces a newer one.
        existing = [ckpt.checkpoint_number(p) for p in ckpt.numbered(self.dir)]
        self.number = max([ckpt.read_manifest(path).get("number", 0)] + existing)
        pos = Position(**state["position"])
        rank = self.ctx.rank
        partial = None
        if state["world_size"] == self.ctx.world_size:
            set_rng_state(state["ranks"][rank]["rng"], self.device)
            partial = state["ranks"][rank]["partial"]
        else:
            # Another sharding: positions and generator streams do not carry over; restart the epoch.
            self.log("warning", f"{path.name} was written by {state['world_size']} workers, now {self.ctx.world_size}: "
                                f"restarting epoch {pos.epoch + 1} with fresh generator streams (not bitwise-exact)")
            seed_everything(self.identity["seed"] + 1000 * (pos.epoch + 1) + rank)
            pos = Position(pos.epoch, 0, pos.epoch * updates_per_epoch)
        self.resumed_from, self.resumed_path = pos.epoch, path
        self.log("resume", f"from {path.name}: epoch {pos.epoch} batch {pos.batch} update {pos.num_updates}")
        return pos, partial

    # ---- when ----------------------------------------------------------------------------------

    def due_mid_epoch(self, num_updates: int, batch: int, batches: int) -> bool:
        """After an optimizer update: a step checkpoint, except on the epoch's last batch (the epoch's
        own checkpoint follows its evaluation)."""
        every = self.config.every_steps
        return bool(every) and num_updates % every == 0 and batch < batches

    def due_at_epoch_end(self, epochs_done: int, epochs: int) -> bool:
        return epochs_done % self.config.every_epochs == 0 or epochs_done == epochs

    # ---- what ----------------------------------------------------------------------------------

    def save(self, position: Position, partial: dict) -> Path | None:
        """Write a numbered checkpoint (rank 0 writes every rank's state); returns its path on rank 0."""
        per_rank = gather({"rng": rng_state(self.device), "partial": partial}, self.ctx)
        path = None
        if self.ctx.rank == 0:
            self.number += 1
            path = ckpt.save(self.dir, self.number, self._files(position, per_rank), {
                **position.__dict__, "world_size": self.ctx.world_size, "model": self.identity["model"],
                "strategies": self.identity["strategies"], "seed": self.identity["seed"],
                **({"teacher": self.parts.distiller.identity} if self.parts.distiller is not None else {}),
            }, self.config.keep_last)
            self.log("checkpoint", f"{path.name} at epoch {position.epoch} batch {position.batch} "
                                   f"(update {position.num_updates})")
        barrier(self.ctx)  # no rank runs ahead of a checkpoint it could be killed before
        if path is not None:
            self.last = path
        return path

    def _files(self, position: Position, per_rank: list[dict]) -> dict[str, Any]:
        parts = self.parts
        files = {
            "model.pt": ckpt.pack_state(parts.model.state_dict()),
            "train_state.pt": {
                "optimizer": parts.optimizer.state_dict(),
                "scheduler": parts.scheduler.state_dict() if parts.scheduler is not None else None,
                "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
                "ranks": per_rank,
                "best": dict(self.best.__dict__),
                "position": dict(position.__dict__),
                "world_size": self.ctx.world_size,
                "resumed_from": self.resumed_from,
            },
        }
        if parts.ema is not None:
            files["ema.pt"] = ckpt.pack_state(parts.ema.module.state_dict())
        if parts.distiller is not None:
            files["distill.pt"] = parts.distiller.state_dict()
        return files

    # ---- best ----------------------------------------------------------------------------------

    def record(self, row: dict) -> bool:
        """Track the best epoch by the best metric and export its weights; True when `row` improved it.
        Call before the epoch's numbered checkpoint: a kill in between recomputes this epoch and exports
        it again, while the other order could record a best that was never exported."""
        best = self.best
        value = row[best.metric]
        if value is None or not value > best.value:  # NaN never improves
            return False
        best.value, best.epoch = value, row["epoch"]
        if self.config.best and self.ctx.rank == 0:
            ema = self.parts.ema
            weights = ema.module if best.metric.startswith("ema") and ema is not None else self.parts.model
            ckpt.export_best(self.dir, weights.state_dict(), {
                "epoch": best.epoch, "metric": best.metric, "value": best.value, "model": self.identity["model"],
                "create_kwargs": self.identity["create_kwargs"], "strategies": self.identity["strategies"],
            })
        return True


def choose(ctx: EngineContext) -> Path | None:
    """The checkpoint a run resumes from (None: start fresh), the same on every rank: the one verification of
    a process start (rank 0 asks the engine). Raises CheckpointError when every checkpoint is damaged."""
    chosen, unusable = broadcast(_choose(ctx) if ctx.rank == 0 else (None, None), ctx)
    if unusable:
        raise ckpt.CheckpointError(unusable)
    return Path(chosen) if chosen is not None else None


def _choose(ctx: EngineContext) -> tuple[Path | None, str | None]:
    chosen = ctx.latest_checkpoint()
    if chosen is not None:
        return chosen, None
    folder = Path(ctx.run_dir) / CHECKPOINT_DIR
    if not ckpt.numbered(folder):
        return None, None
    # Starting over would silently discard the run's progress: stop, and move nothing.
    reasons = "; ".join(f"{bad.name}: {ckpt.verify(bad)}" for bad in ckpt.numbered(folder))
    return None, (f"all {len(ckpt.numbered(folder))} checkpoints in {folder} are damaged ({reasons}); "
                  f"nothing was deleted. Restore them from a copy, or move the folder aside to start the run over")
