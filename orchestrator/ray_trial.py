"""The Tune trial driver: one process per concurrent run that starts the run's trainer and waits.

It is control plane only, so it must stay small: this module imports neither torch, timm, FFCV nor the
training code (nor jobs.spec, whose strategies import torch), and it receives its run as plain data
(orchestrator.ray_engine.trainer_job). Tune pickles `trial_driver` by reference, so whatever this module
imports at its top every trial driver imports too. tests/test_ray_control_plane.py checks it from outside, on
the processes of a real sweep.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

# ray_engine imports only the standard library at its top (Ray and torch load inside its functions).
from orchestrator.ray_engine import build_trainer, scalar_metrics
from rundir import METRICS_FILE, MetricsError, read_metrics, run_state

FORWARD_EVERY_S = 2.0


def trial_driver(config: dict, jobs: dict[str, dict[str, Any]], storage_path: str, max_failures: int) -> None:
    """One Tune trial: the run's trainer (or, for a one-worker run, the run itself: orchestrator.ray_in_trial);
    a retried trial whose run meanwhile finished reports its last row."""
    from ray import tune

    job = jobs[config["run_id"]]
    if run_state(job["run_dir"], job["epochs"]).finished:
        rows = read_metrics(job["run_dir"]).to_pylist()
        tune.report(scalar_metrics(max(rows, key=lambda r: r["epoch"]) if rows else {}))
        return
    if job["in_trial"]:
        from orchestrator.ray_in_trial import train_in_trial

        train_in_trial(job)
        return
    trainer = build_trainer(job, storage_path=storage_path, max_failures=max_failures)
    forwarder = RowForwarder(job["run_dir"])
    forwarder.start()
    try:
        trainer.fit()
    finally:
        forwarder.stop()


class RowForwarder(threading.Thread):
    """Reports to Tune each metrics row that a TorchTrainer run's loop appends to its folder (one per epoch).

    Ray's TuneReportCallback would carry the rows from the Train controller through a queue actor, one more
    process per concurrent run (~0.06 GB of PSS, BENCHMARKS.md "Control plane at scale"); the run folder holds
    them already. Reporting from a thread of the trial is what Ray's own callback path does (the session is
    per process)."""

    def __init__(self, run_dir: str | Path, every_s: float = FORWARD_EVERY_S):
        super().__init__(daemon=True, name="row-forwarder")
        self.path = Path(run_dir) / METRICS_FILE
        self.every_s = every_s
        self.last_epoch = 0
        self._seen: tuple[int, int] | None = None
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every_s):
            self.forward()

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.forward()  # the rows of the last seconds

    def forward(self) -> None:
        from ray import tune

        try:
            stat = self.path.stat()
            if (stat.st_mtime_ns, stat.st_size) == self._seen:
                return
            rows = read_metrics(self.path.parent).to_pylist()
        except (OSError, MetricsError):
            return  # not written yet, or replaced while read: the next look sees it
        self._seen = (stat.st_mtime_ns, stat.st_size)
        for row in sorted(rows, key=lambda r: r["epoch"]):
            if row["epoch"] > self.last_epoch:
                tune.report(scalar_metrics(row))
                self.last_epoch = row["epoch"]


class TrialResources:
    """What each trial reserves (tune.with_resources calls this with the trial's config): a trial that trains
    its run takes the worker's resources; one that starts a TorchTrainer takes only the driver's token."""

    def __init__(self, jobs: dict[str, dict[str, Any]], driver: dict[str, float]):
        self.by_run = {run_id: dict(job["resources_per_worker"]) if job["in_trial"] else dict(driver)
                       for run_id, job in jobs.items()}

    def __call__(self, config: dict):
        from ray.tune import PlacementGroupFactory

        return PlacementGroupFactory([self.by_run[config["run_id"]]])
