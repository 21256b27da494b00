"""Ray Train's torch process-group backend, reachable without importing torch in the Train controller.

`ray.train.torch.TorchConfig` lives in a module that imports torch at its top, and the Train controller
unpickles the backend config and runs the backend's hooks in its own process: with the stock config every
controller (one per concurrent run) loads torch (~0.2-0.3 GB of private memory) only to ship a few functions
to the workers. Here the controller-side hooks only name module-level functions of this module; each
imports Ray's torch helpers on the worker, where torch is loaded anyway. What the workers end up with is
what TorchConfig sets up: MASTER_ADDR/PORT, RANK/LOCAL_RANK/WORLD_SIZE..., one process group (nccl with
GPUs, gloo without), the CUDA device set per worker, the process group torn down at the end.
TPU setup is not carried over (this project trains on GPUs or CPUs).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import ray
from ray.train._internal.utils import get_address_and_port
from ray.train.backend import Backend, BackendConfig
from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train.v2._internal.util import TrainingFramework
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

# Same default as Ray's TorchConfig: a rank that never answers fails the run after this long.
PROCESS_GROUP_TIMEOUT_S = 1800
SHUTDOWN_TIMEOUT_S = 30.0


def _set_master(addr: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)


def _set_rank_env() -> None:
    from ray.train.torch.config import _set_torch_distributed_env_vars

    _set_torch_distributed_env_vars()


def _init_process_group(**kwargs) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(**kwargs)


def _shutdown(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)


class _CudaDevice:
    """Around the worker's train function: the worker's CUDA device is the current one (as TorchConfig does)."""

    def __enter__(self):
        import torch

        if torch.cuda.is_available():
            import ray.train.torch

            device = ray.train.torch.get_device()
            if device.type == "cuda":
                torch.cuda.set_device(device)

    def __exit__(self, *exc) -> bool:
        return False


class _LazyTorchBackend(Backend):
    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group, backend_config: LazyTorchConfig) -> None:
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_master, addr=addr, port=port)
        worker_group.execute(_set_rank_env)
        world = len(worker_group)
        ray.get([worker_group.execute_single_async(i, _init_process_group, backend=backend, world_rank=i,
                                                   world_size=world, init_method="env://",
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(world)])

    def on_shutdown(self, worker_group, backend_config) -> None:
        futures = worker_group.execute_async(_shutdown, destroy_process_group=len(worker_group) > 1)
        try:
            ray.get(futures, timeout=SHUTDOWN_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            pass  # the workers are being torn down anyway; a hung destroy must not hold the run


@dataclass
class LazyTorchConfig(BackendConfig):
    """TorchConfig's process-group setup, with torch imported only on the workers."""

    backend: str | None = None  # None: nccl with GPUs, gloo without
    timeout_s: int = PROCESS_GROUP_TIMEOUT_S

    @property
    def backend_cls(self):
        return _LazyTorchBackend

    @property
    def train_func_context(self):
        return _CudaDevice

    @property
    def framework(self):
        return TrainingFramework.TORCH


class NoDatasetsTrainer(DataParallelTrainer):
    """A DataParallelTrainer without Ray Data's per-run DatasetManager actor when the run has no Ray datasets
    (ours read FFCV files): Ray creates that actor for every run regardless, one more Python process
    (~0.1 GB) next to each Train controller that would never be asked for a shard. Workers then get no
    shard provider, which only `ray.train.get_dataset_shard` (never called here) would need."""

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]
