"""Collectives the training loop needs, written so that a single process (world size 1, or no process
group) runs the same code without torch.distributed."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from jobs.context import EngineContext


def is_distributed(ctx: EngineContext) -> bool:
    return ctx.world_size > 1 and dist.is_available() and dist.is_initialized()


def all_reduce_sum(values: list[float | int], ctx: EngineContext, device: torch.device,
                   dtype: torch.dtype = torch.float64) -> list:
    """Element-wise sums over all ranks (the values themselves on one process)."""
    t = torch.tensor(values, dtype=dtype, device=device)
    if is_distributed(ctx):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def gather(obj: Any, ctx: EngineContext) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not is_distributed(ctx):
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, ctx: EngineContext) -> Any:
    """Rank 0's `obj` on every rank."""
    if not is_distributed(ctx):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: EngineContext) -> None:
    if is_distributed(ctx):
        dist.barrier()
