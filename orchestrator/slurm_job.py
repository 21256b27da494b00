"""What runs inside a Slurm (or submitit-local) job: the engine context and the checkpointable callable.

Kept apart from `orchestrator.slurm` (the submitting side) so that unpickling a job in the compute node
imports only this, jobs.train and submitit.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import submitit
import torch
from submitit.core.utils import UncompletedJobError

from jobs import checkpoint as ckpt
from jobs.local import LocalContext
from jobs.spec import RunSpec
from rundir import CHECKPOINT_DIR, EventLog, read_status, write_status


class SlurmContext(LocalContext):
    """EngineContext of one Slurm task: rank / world / local rank from submitit's JobEnvironment, the process
    group joined through the env:// variables submitit's TorchDistributedEnvironment exports (gloo on CPU,
    NCCL on GPU), checkpoints in the run directory."""

    def __init__(self, run_dir: Path | str, use_gpu: bool, timeout_s: float = 600.0):
        job_env = submitit.JobEnvironment()
        self.job_id = job_env.job_id
        self.hostname = job_env.hostname
        # CUDA_VISIBLE_DEVICES stays as Slurm set it: with --gpus-per-node every task of a node sees the
        # node's GPUs and picks cuda:<local_rank>.
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and cpus.isdigit():
            # Without task binding torch would start one thread per core of the node in every task.
            torch.set_num_threads(int(cpus))
        env = dict(os.environ)
        visible = torch.cuda.device_count() if use_gpu and torch.cuda.is_available() else 0
        if visible and job_env.local_rank >= visible:
            # The cluster binds GPUs per task (--gpu-bind / gpus-per-task): each task sees only its own.
            env["LOCAL_RANK"] = str(job_env.local_rank % visible)
        super().__init__(run_dir, use_gpu=use_gpu, env=env, timeout_s=timeout_s)
        self.local_rank = job_env.local_rank
        assert (self.rank, self.world_size) == (dist_env.rank, dist_env.world_size)
        self.last_checkpoint: Path | None = None

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        super().report(metrics, checkpoint_dir)
        if checkpoint_dir is not None:
            self.last_checkpoint = Path(checkpoint_dir)
        if self.rank == 0:
            # One line per epoch in the job's submitit log (slurm-status reads run files, not this).
            print(f"[{self.job_id}] epoch {metrics.get('epoch')}/{metrics.get('epochs_total')} "
                  f"loss {metrics.get('train_loss')} top1 {metrics.get('top1')} checkpoint {checkpoint_dir}", flush=True)


class SlurmRun(submitit.helpers.Checkpointable):
    """One run as a submitit job. On the preemption / time-limit signal (USR2) submitit calls `checkpoint()` on
    rank 0, requeues the job and exits; the requeued job calls this again and resumes from the newest complete
    checkpoint (jobs.train's exact resume). Atomic checkpoints mean an interrupted write leaves the previous
    checkpoint as the latest; at most one checkpoint interval is recomputed."""

    def __init__(self, spec: dict[str, Any]):
        # A plain dict survives code changes between submission and a requeue better than a pickled model.
        self.spec = spec
        self._requeueing = False

    @property
    def run_spec(self) -> RunSpec:
        return RunSpec.model_validate(self.spec)

    def __call__(self) -> dict:
        from jobs.train import train_loop

        spec = self.run_spec
        self._requeueing = False  # the pickled copy of a requeued job carries the flag set in checkpoint()
        # Slurm counts requeues (preemption, USR2, scontrol requeue, node failure) itself.
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        with SlurmContext(spec.run_dir, use_gpu=spec.resources.use_gpu) as ctx:
            if ctx.rank == 0:
                spec.run_dir.mkdir(parents=True, exist_ok=True)
                EventLog(spec.run_dir, 0)("slurm", f"job {ctx.job_id} restart {restarts} on {socket.gethostname()}, "
                                                   f"{ctx.world_size} task(s), device {ctx.device}")
            try:
                return train_loop(spec, ctx)
            except SystemExit:
                # submitit exits the task after requeueing it; the loop recorded that as a failure, but the
                # run is only waiting to resume.
                if self._requeueing and ctx.rank == 0 and spec.run_dir.is_dir():
                    _, epoch = _newest_checkpoint(spec.run_dir)
                    write_status(spec.run_dir, "running", _epochs_done(spec.run_dir, epoch), spec.train.epochs)
                raise
            except UncompletedJobError as exc:
                # submitit's signal handler gives the job up instead of requeueing it once it has hit its time
                # limit more than --max-num-timeout times: say where the run stands and how to go on.
                if ctx.rank == 0 and spec.run_dir.is_dir():
                    where, epoch = _newest_checkpoint(spec.run_dir)
                    message = (f"not requeued at the time limit ({exc}); its checkpoints are kept: "
                               f"`python -m orchestrator slurm CONFIG --resume` continues from "
                               f"{where}, give it a longer --time or a higher --max-num-timeout")
                    write_status(spec.run_dir, "failed", _epochs_done(spec.run_dir, epoch), spec.train.epochs, message)
                    EventLog(spec.run_dir, 0)("not-requeued", message)
                raise

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        spec = self.run_spec
        run_dir = spec.run_dir
        # The signal may have interrupted a checkpoint write: that one is a temp folder and is never picked;
        # verifying here (checksums) means the requeued job starts from a checkpoint known to be complete.
        status = read_status(run_dir)
        done = status.get("epoch") if status else None
        if run_dir.is_dir():
            # submitit requeues the job after this returns, unless the job has used up --max-num-timeout.
            EventLog(run_dir, 0)("requeue", f"signal received after epoch {done}: requeueing, will resume from "
                                            f"{_newest_checkpoint(run_dir)[0]}")
        self._requeueing = True
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _newest_checkpoint(run_dir: Path) -> tuple[str, int]:
    """(where a resumed job starts, e.g. 'ckpt-000004 (epoch 3)' or 'the start'; the epochs that checkpoint
    holds), found once per call: verifying the checksums reads every checkpoint file."""
    latest = ckpt.latest_valid(Path(run_dir) / CHECKPOINT_DIR)
    if latest is None:
        return "the start", 0
    epoch = ckpt.read_manifest(latest).get("epoch")
    return f"{latest.name} (epoch {'?' if epoch is None else epoch})", int(epoch or 0)


def _epochs_done(run_dir: Path, checkpoint_epoch: int) -> int:
    # A signal during start-up comes before the loop has resumed (its status still says epoch 0).
    return max((read_status(run_dir) or {}).get("epoch", 0), checkpoint_epoch)
