"""What runs inside a Slurm (or submitit-local) job: the engine context and the checkpointable callable.

Kept apart from `orchestrator.slurm` (the submitting side) so that unpickling a job in the compute node
imports only this, jobs.train and submitit.
"""
from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

import submitit
import torch
from submitit.core.utils import UncompletedJobError

from jobs import checkpoint_files as ckpt
from jobs.local import LocalContext
from jobs.spec import RunSpec
from jobs.stop import Preempted
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

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        super().report(metrics, checkpoint_dir)
        if self.rank == 0:
            # One line per epoch in the job's submitit log (slurm-status reads run files, not this).
            print(f"[{self.job_id}] epoch {metrics.get('epoch')}/{metrics.get('epochs_total')} "
                  f"loss {metrics.get('train_loss')} top1 {metrics.get('top1')} checkpoint {checkpoint_dir}", flush=True)


class SlurmRun(submitit.helpers.Checkpointable):
    """One run as a submitit job. The preemption / time-limit signal (USR2; Slurm sends it --signal-delay
    seconds before the limit, and on preemption) only sets the stop flag: submitit's own handler, which would
    requeue at once and lose every update since the last checkpoint, is set aside while the loop runs. The loop
    writes a checkpoint at the next update the ranks agree on, records the run as preempted and raises
    Preempted; then rank 0 hands over to submitit's handler, which calls `checkpoint()`, counts a time-out
    against --max-num-timeout, requeues the job and exits. The requeued job resumes from exactly that update.
    A signal before the loop started (imports, start-up) reaches submitit's handler directly: nothing was
    trained yet. A plain `scontrol requeue` or `scancel` (SIGTERM, which submitit ignores, then SIGKILL) loses
    the updates since the last checkpoint."""

    def __init__(self, spec: dict[str, Any]):
        # A plain dict survives code changes between submission and a requeue better than a pickled model.
        self.spec = spec
        self._stopped: Preempted | None = None

    @property
    def run_spec(self) -> RunSpec:
        return RunSpec.model_validate(self.spec)

    def __call__(self) -> dict | None:
        from jobs.train import train_loop

        spec = self.run_spec
        self._stopped = None  # the pickled copy of a requeued job carries the one set before its requeue
        # Slurm counts requeues (preemption, USR2, scontrol requeue, node failure) itself.
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        usr2 = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        with SlurmContext(spec.run_dir, use_gpu=spec.resources.use_gpu) as ctx:
            if ctx.rank == 0:
                spec.run_dir.mkdir(parents=True, exist_ok=True)
                EventLog(spec.run_dir, 0)("slurm", f"job {ctx.job_id} restart {restarts} on {socket.gethostname()}, "
                                                   f"{ctx.world_size} task(s), device {ctx.device}")
            requeue = signal.getsignal(usr2)  # submitit's: checkpoint() + requeue + exit (rank 0 only)
            try:
                with ctx.stop.installed(usr2):
                    return train_loop(spec, ctx)
            except Preempted as exc:
                self._stopped = exc
                if callable(requeue):
                    try:
                        requeue(usr2, None)  # raises SystemExit after requeueing
                    except UncompletedJobError as given_up:
                        self._record_given_up(spec, ctx.rank, given_up)
                        raise
                return None  # other ranks: the requeue ends this job step

    def _record_given_up(self, spec: RunSpec, rank: int, exc: UncompletedJobError) -> None:
        """submitit's handler gives the job up instead of requeueing it once it has hit its time limit more than
        --max-num-timeout times: say where the run stands and how to go on."""
        if rank != 0 or not spec.run_dir.is_dir():
            return
        message = (f"not requeued at the time limit ({exc}); its checkpoints are kept: "
                   f"`python -m orchestrator slurm CONFIG --resume` continues from "
                   f"{self._resume_point(spec)}, give it a longer --time or a higher --max-num-timeout")
        status = read_status(spec.run_dir) or {}
        write_status(spec.run_dir, "failed", status.get("epoch", 0), spec.train.epochs, message, status.get("update"))
        EventLog(spec.run_dir, 0)("not-requeued", message)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Called by submitit's USR2 handler: after the loop stopped with a checkpoint (self._stopped), or
        # before it started. submitit requeues the job after this returns, unless it used up --max-num-timeout.
        spec = self.run_spec
        if spec.run_dir.is_dir():
            EventLog(spec.run_dir, 0)("requeue", f"signal received: requeueing, will resume from "
                                                 f"{self._resume_point(spec)}")
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def _resume_point(self, spec: RunSpec) -> str:
        """Where the requeued job continues, e.g. `ckpt-000004 (epoch 3 batch 12, update 40)`: the checkpoint
        the loop just wrote, else the newest one on disk (verified by the requeued job, not here)."""
        stopped = self._stopped
        path = stopped.checkpoint if stopped is not None else next(iter(ckpt.numbered(spec.run_dir / CHECKPOINT_DIR)),
                                                                    None)
        if path is None:
            return "the start"
        meta = ckpt.read_manifest(path)
        return f"{path.name} (epoch {meta.get('epoch')} batch {meta.get('batch')}, update {meta.get('num_updates')})"
