"""Ray Train as an engine of the training loop: the worker-side context and the TorchTrainer.

Checkpoints stay where the loop writes them (`run_dir/checkpoints/ckpt-N`, atomic and checksummed by
jobs.checkpoint_files). Ray is handed a *pointer* checkpoint (a few bytes naming that folder) so that its
checkpoint manager, failure handling and `get_checkpoint()` work as designed without copying
gigabytes per epoch, and without Ray ever deleting or referencing the loop's own pruned folders.
On restart the newer of Ray's pointer and the newest valid folder on disk wins: the last checkpoint
written may not have been registered with Ray's controller before a crash.
"""
from __future__ import annotations

import importlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

POINTER_FILE = "pointer.json"
TRAIN_ENTRY = "jobs.train:train_loop"

# Environment every Ray worker gets: quiet logs, no print patching (the loop's own logging is enough).
WORKER_ENV = {
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "PYTHONUNBUFFERED": "1",
}


def _quiet_ray_train_loggers() -> None:
    """Some Ray Train modules log per report at INFO under their file path (not `ray.train.*`), which
    LoggingConfig(log_level) does not reach; one line per epoch per worker would drown the trial table."""
    for name in list(logging.root.manager.loggerDict):
        if "/ray/train/" in name:
            logging.getLogger(name).setLevel(logging.WARNING)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Ray ships metrics through its object store: plain scalars and strings only."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if hasattr(value, "item") and callable(value.item):
            value = value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value
    return out


class RayContext:
    """jobs.context.EngineContext for a Ray Train worker."""

    def __init__(self, run_dir: Path):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.local_rank = ctx.get_local_rank()
        self.device = ray.train.torch.get_device()
        self.run_dir = Path(run_dir)
        _quiet_ray_train_loggers()

    # -- reporting ---------------------------------------------------------------------------

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        """Every rank must call this once per epoch: ray.train.report is a barrier across workers."""
        import ray.train

        pointer_dir = None
        if checkpoint_dir is not None and self.rank == 0:
            pointer_dir = Path(tempfile.mkdtemp(prefix="vitreduce-ptr-"))
            (pointer_dir / POINTER_FILE).write_text(json.dumps({
                "checkpoint": str(Path(checkpoint_dir).resolve()), "epoch": metrics.get("epoch")}))
        try:
            ray.train.report(
                scalar_metrics(metrics),
                checkpoint=ray.train.Checkpoint.from_directory(str(pointer_dir)) if pointer_dir else None,
                checkpoint_dir_name=f"pointer-{Path(checkpoint_dir).name}" if checkpoint_dir is not None else None,
            )
        finally:
            if pointer_dir is not None:
                shutil.rmtree(pointer_dir, ignore_errors=True)

    # -- resuming ----------------------------------------------------------------------------

    def latest_checkpoint(self) -> Path | None:
        import ray.train

        from jobs.checkpoint_files import checkpoint_number, latest_valid, verify

        ours = latest_valid(self.run_dir / "checkpoints")
        pointed = None
        ray_ckpt = ray.train.get_checkpoint()
        if ray_ckpt is not None:
            try:
                with ray_ckpt.as_directory() as d:
                    pointed = Path(json.loads((Path(d) / POINTER_FILE).read_text())["checkpoint"])
            except (OSError, KeyError, ValueError) as exc:
                log.warning("ignoring Ray's checkpoint %s: %s", ray_ckpt, exc)
        if pointed is not None and (ours is None or (checkpoint_number(pointed) or -1) > (checkpoint_number(ours) or -1)):
            problem = verify(pointed) if pointed.exists() else f"{pointed} does not exist"
            if problem is None:
                return pointed
            log.warning("Ray's latest checkpoint is unusable (%s); using %s", problem, ours)
        return ours


def train_fn_per_worker(config: dict) -> None:
    """Entry point of every Ray Train worker: the engine-agnostic loop (named by `entry`, imported here, on the
    worker) with a RayContext. The spec travels as a plain dict so that no driver-side process has to import
    the spec's model code to unpickle it."""
    from jobs.spec import RunSpec
    from jobs.stop import Preempted

    spec = RunSpec.model_validate(config["spec"])
    loop = resolve_entry(config.get("entry", TRAIN_ENTRY))
    try:
        loop(spec, RayContext(spec.run_dir))
    except Preempted:
        # Every rank stopped at the same update (the loop recorded the run as preempted): a normal end for Ray,
        # which must not restart the group as after a failure (orchestrator.ray_stop).
        return


def resolve_entry(entry: str):
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


def trainer_job(spec, entry: str = TRAIN_ENTRY, *, in_trial: bool = False) -> dict[str, Any]:
    """What a trial driver needs to start one run's trainer, in plain data (JSON types only). `in_trial`: a
    one-worker run that the trial trains itself (orchestrator.ray_in_trial) instead of starting a TorchTrainer."""
    if in_trial and spec.resources.num_workers != 1:
        raise ValueError(f"run {spec.run_id}: only a one-worker run can train inside its Tune trial")
    r = spec.resources
    per_worker: dict[str, float] = {"CPU": float(r.cpus_per_worker)}
    if r.use_gpu:
        per_worker["GPU"] = float(r.gpus_per_worker)
    return {"run_id": spec.run_id, "run_dir": str(spec.run_dir), "epochs": spec.train.epochs,
            "num_workers": r.num_workers, "use_gpu": r.use_gpu, "resources_per_worker": per_worker,
            "env": worker_env(spec), "entry": entry, "spec": spec.model_dump(mode="json"), "in_trial": in_trial}


def worker_env(spec=None) -> dict[str, str]:
    env = dict(WORKER_ENV)
    if spec is not None and not spec.resources.use_gpu:
        # CPU training: intra-op threads = the CPUs reserved for the worker (as a bare run pinned alike).
        env["OMP_NUM_THREADS"] = str(spec.resources.cpus_per_worker)
    return env


def build_trainer(job: dict[str, Any], *, storage_path: str, max_failures: int):
    """A data-parallel trainer with torch's process group (LazyTorchConfig: torch stays out of the trial driver
    and the Train controller) running `job` (see trainer_job), named by its run_id so a restart with the same
    storage path reloads Ray's checkpoint-manager snapshot of the same run (no timestamps in the name)."""
    import ray.train

    from orchestrator.ray_backend import LazyTorchConfig
    from orchestrator.ray_private import trainer_class

    return trainer_class()(
        train_fn_per_worker,
        train_loop_config={"spec": job["spec"], "entry": job["entry"]},
        backend_config=LazyTorchConfig(),
        scaling_config=ray.train.ScalingConfig(num_workers=job["num_workers"], use_gpu=job["use_gpu"],
                                               resources_per_worker=job["resources_per_worker"]),
        run_config=ray.train.RunConfig(
            name=job["run_id"],
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            # Ray's folders hold only pointers; the loop prunes its own checkpoint folders.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": job["env"]},
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
