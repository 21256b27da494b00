"""The engine interface: all the training loop knows about who runs it.

Ray Train (orchestrator.ray_engine) and Slurm (orchestrator.slurm) each provide an object with
these members; `LocalContext` (jobs.local) is the single-process / torchrun one. The loop never
imports Ray or submitit.

Optional member: `stop_requested() -> bool`, true once the engine was asked to stop (its signal handler sets a
flag, jobs.stop); the loop then checkpoints at the next update the ranks agree on and raises jobs.stop.Preempted.
An engine without a handler in the training process (Ray) asks through a file in the run folder instead (jobs.stop).
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class EngineContext(Protocol):
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    run_dir: Path

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        """Hand one epoch's metrics (and the checkpoint just written, if any) to the engine."""

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint to resume from, or None to start fresh."""
