"""A one-worker run trained inside its own Tune trial, without a TorchTrainer.

A TorchTrainer adds three processes per run beside its worker and its trial driver: the Train controller, the
synchronization actor and the placement-group cleaner (with the driver, ~0.46 GB of PSS per run; BENCHMARKS.md,
"Control plane at scale"). A one-worker run needs none of them: it has no process group to set up and no
barrier, its reports can go to Tune directly, and its checkpoints are the loop's own folders. So its trial
reserves the worker's resources and runs the loop itself.

Failure handling is Tune's: a trial whose process died (a worker crash, a lost node) is started again
(tune.FailureConfig; `ray_run.tune_max_failures` gives it the run's worker restarts too), and the loop resumes
from the newest valid checkpoint in its run folder, as a restarted Train worker does. Imported only by a trial
that trains, never by the trial drivers of multi-worker runs (this module imports torch through jobs.local).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jobs.local import LocalContext
from jobs.stop import Preempted, StoppedEarly
from orchestrator.ray_engine import TRAIN_ENTRY, resolve_entry, scalar_metrics


class TrialContext(LocalContext):
    """jobs.context.EngineContext for a run trained by its Tune trial: rank 0 of 1, reports go to Tune."""

    def __init__(self, run_dir: Path | str, use_gpu: bool, cpu_threads: int | None = None):
        # env={}: the trial's environment may carry a launcher's RANK/WORLD_SIZE; this run is one process.
        super().__init__(run_dir, use_gpu=use_gpu, env={})
        if cpu_threads and self.device.type == "cpu":
            import torch

            torch.set_num_threads(cpu_threads)  # as a Train worker pinned by OMP_NUM_THREADS

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        from ray import tune

        # The checkpoint stays the loop's own folder (latest_checkpoint finds it); Tune gets the metrics only.
        try:
            tune.report(scalar_metrics(metrics))
        except SystemExit as exc:
            # Tune's function trainable blocks in report until Tune has decided on the row; a trial it stops there
            # (its scheduler, a stop criterion) is ended by SystemExit(0) out of report. For the loop that is the
            # end of the run, not a failure: StoppedEarly records it `stopped` at this epoch.
            if exc.code not in (0, None):
                raise
            raise StoppedEarly("stopped by Tune (its scheduler or a stop criterion)") from None


def replay_rows(spec, rows: list[dict]) -> bool:
    """Report `rows` (already in the run's folder: a trial restarted by a restore) to Tune in epoch order, so its
    scheduler sees every epoch once; False when Tune stopped the trial on one of them: short of the run's epochs,
    the run's Lifecycle records it `stopped` at that epoch (as the loop would have)."""
    from jobs.train import Lifecycle

    ctx = TrialContext(spec.run_dir, use_gpu=False)
    try:
        for row in sorted(rows, key=lambda r: r["epoch"]):
            try:
                ctx.report(row, None)
            except StoppedEarly as exc:
                if row["epoch"] < spec.train.epochs:
                    life = Lifecycle(spec, ctx)
                    life.epochs_done = row["epoch"]
                    life.stopped(str(exc))
                return False
    finally:
        ctx.close()
    return True


def train_in_trial(job: dict[str, Any]) -> None:
    """Run the loop named by `job["entry"]` on `job` (ray_engine.trainer_job with in_trial=True) in this process."""
    os.environ.update(job["env"])  # what a Train worker would get through its runtime env
    from jobs.spec import RunSpec

    spec = RunSpec.model_validate(job["spec"])
    threads = spec.resources.cpus_per_worker if not spec.resources.use_gpu else None
    ctx = TrialContext(spec.run_dir, use_gpu=spec.resources.use_gpu, cpu_threads=threads)
    try:
        resolve_entry(job.get("entry", TRAIN_ENTRY))(spec, ctx)
    except Preempted:
        return  # stopped on request, recorded as preempted by the loop: an end, not a failure for Tune to retry
    except StoppedEarly:
        raise SystemExit(0) from None  # recorded by the loop; end the trial's thread the way Tune ends it
    finally:
        ctx.close()

