"""Torch's process group on Ray Train's workers, through Ray Train's documented extension points only.

Ray Train's "Developer APIs" (DataParallelTrainer, Backend, BackendConfig) build a trainer for any framework.
TorchTrainer is one such trainer, but it imports torch in the process that builds it (the Tune trial driver)
and its TorchConfig imports torch in the Train controller that unpickles it: ~0.2-0.3 GB of private memory
each, per concurrent run, only to start a process group on the workers (BENCHMARKS.md, "Control plane at
scale"). So this module, torch-free at import, names the worker-side setup instead; it runs on each worker
around the train function (BackendConfig.train_func_context), where torch is loaded anyway, with public calls
only: `ray.train.get_context()` for the ranks, `ray.train.torch.get_device()` for the device,
`ray.train.collective.broadcast_from_rank_zero` to hand rank 0's TCPStore address to the others, and
`torch.distributed`. What the workers end up with is what TorchTrainer sets up: RANK/LOCAL_RANK/WORLD_SIZE...,
MASTER_ADDR/PORT, the CUDA device set per worker (every GPU of the run on a node visible to its workers, for
NCCL's peer-to-peer paths), one process group (nccl with GPUs, gloo without), left at the end.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from ray.train.backend import Backend, BackendConfig

# Same default as Ray's TorchConfig: a rank that never answers fails the run after this long.
PROCESS_GROUP_TIMEOUT_S = 1800


class TorchProcessGroup:
    """On each worker, around its train function: torchrun's environment, the worker's device, and (with more
    than one worker) one process group, destroyed when the function returns. A failed function leaves the
    group as it is: a peer may be gone, and Ray tears the worker processes down."""

    def __enter__(self) -> TorchProcessGroup:
        import ray.train
        import ray.train.torch
        import torch
        import torch.distributed as dist

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(ctx.get_local_rank()),
                          LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()), NODE_RANK=str(ctx.get_node_rank()))
        device = ray.train.torch.get_device()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if world > 1:
            self._join(dist, rank, world, "nccl" if device.type == "cuda" else "gloo")
        return self

    def _join(self, dist, rank: int, world: int, backend: str) -> None:
        import ray.util
        from ray.train.collective import broadcast_from_rank_zero

        timeout = timedelta(seconds=PROCESS_GROUP_TIMEOUT_S)
        store = None
        if rank == 0:
            # Port 0: the store takes a free port itself (no window in which another process could take it).
            addr = ray.util.get_node_ip_address()
            store = dist.TCPStore(addr, 0, world_size=world, is_master=True, wait_for_workers=False, timeout=timeout)
        addr, port = broadcast_from_rank_zero((addr, store.port) if rank == 0 else None)
        if store is None:
            store = dist.TCPStore(addr, port, world_size=world, is_master=False, timeout=timeout)
        os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)

    def __exit__(self, exc_type, *exc) -> bool:
        import torch.distributed as dist

        if exc_type is None and dist.is_initialized():
            dist.destroy_process_group()
        return False


class _SharedGpus(Backend):
    """Nothing to do on the controller side; the workers of a run on one node see all of its GPUs on that node
    (Backend's documented switch, as TorchTrainer's backend sets it)."""

    share_cuda_visible_devices: bool = True


@dataclass
class LazyTorchConfig(BackendConfig):
    """TorchConfig's process-group setup, with torch imported only on the workers."""

    @property
    def backend_cls(self):
        return _SharedGpus

    @property
    def train_func_context(self):
        return TorchProcessGroup
