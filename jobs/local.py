"""LocalContext: the engine for `python -m jobs train`, tests, and torchrun.

One process writes to `run_dir`. Its stop request (`stop`, jobs.stop) is set by the signals the caller installs
it for (`python -m jobs train`: SIGTERM and SIGINT). Under torchrun (or anything that sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) it joins the process group itself (gloo on CPU, nccl on GPU) so the loop
runs DDP; it leaves the group on close.
"""
from __future__ import annotations

import os
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Mapping

import torch
import torch.distributed as dist

from jobs import checkpoint_files
from jobs.stop import StopRequest
from rundir import CHECKPOINT_DIR


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


class LocalContext:
    """EngineContext for a single process or one torchrun rank."""

    def __init__(
        self,
        run_dir: Path | str,
        use_gpu: bool = True,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 600.0,
    ):
        env = os.environ if env is None else env
        self.run_dir = Path(run_dir)
        self.rank = _env_int(env, "RANK", 0)
        self.world_size = _env_int(env, "WORLD_SIZE", 1)
        self.local_rank = _env_int(env, "LOCAL_RANK", 0)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"RANK={self.rank} is outside WORLD_SIZE={self.world_size}")
        cuda = use_gpu and torch.cuda.is_available()
        if use_gpu and not cuda:
            warnings.warn("resources.use_gpu is set but no CUDA device is visible: training on CPU", RuntimeWarning,
                          stacklevel=2)
        self.device = torch.device("cuda", self.local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        self.reports: list[tuple[dict, Path | None]] = []
        self.stop = StopRequest()
        self._owns_group = False
        if self.world_size > 1 and not dist.is_initialized():
            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
            if missing:
                raise ValueError(f"WORLD_SIZE={self.world_size} needs {' and '.join(missing)} (as torchrun sets them)")
            dist.init_process_group(
                backend="nccl" if cuda else "gloo",
                init_method=f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}",
                rank=self.rank,
                world_size=self.world_size,
                timeout=timedelta(seconds=timeout_s),
            )
            self._owns_group = True

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        # The loop already wrote metrics.parquet; keep the rows for callers (tests, main).
        self.reports.append((dict(metrics), checkpoint_dir))

    def latest_checkpoint(self) -> Path | None:
        return checkpoint_files.latest_valid(self.run_dir / CHECKPOINT_DIR)

    def stop_requested(self) -> bool:
        return self.stop.requested()

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False

    def __enter__(self) -> "LocalContext":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
