"""The one place this project reaches into Ray's internals, for one Ray minor version (pyproject.toml pins it).

Ray Train starts two actors per run that a run reading FFCV files never uses, one Python process each next to
the Train controller (BENCHMARKS.md, "Control plane at scale"), and offers no public switch for either:
- Ray Data's DatasetManager (~0.1 GB), created for every run whether or not it has Ray datasets; it only
  serves `ray.train.get_dataset_shard`, which the loop never calls. `NoDatasetsTrainer` drops the callback that
  creates it (an override of a private method, `_create_default_callbacks`, and a private class).
- The PreemptionWatcher (~0.11 GB), which only hands the train function a drain notice it does not read (a
  preempted worker's failure is classified from Ray core's actor error without it): off through an environment
  variable that Ray reads but does not document, copied by Ray to the Train controller.

On any other Ray minor both are left alone (the public trainer, Ray's defaults: correct, ~0.2 GB more per
concurrent multi-worker run) and `tests/test_ray_private.py` fails, naming the version to check these against.
"""
from __future__ import annotations

import os

import ray
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

RAY_MINOR = "2.60"
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def ray_minor(version: str = ray.__version__) -> str:
    return ".".join(version.split(".")[:2])


def internals_known(version: str = ray.__version__) -> bool:
    """Whether this module was written against the installed Ray (its internals can differ in any minor)."""
    return ray_minor(version) == RAY_MINOR


class NoDatasetsTrainer(DataParallelTrainer):
    """A DataParallelTrainer without Ray Data's per-run DatasetManager actor when the run has no Ray datasets.
    Workers then get no shard provider, which only `ray.train.get_dataset_shard` (never called here) needs."""

    def _create_default_callbacks(self):
        from ray.train.v2._internal.callbacks import DatasetsCallback

        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]


def trainer_class() -> type[DataParallelTrainer]:
    """The trainer class for a run, and (on the pinned minor) the PreemptionWatcher turned off for the Train
    controllers this process starts."""
    if not internals_known():
        return DataParallelTrainer
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    return NoDatasetsTrainer
