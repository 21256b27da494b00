"""What a cluster can ever give, and the runs that can never fit on it (checked before anything starts)."""
from __future__ import annotations

import contextlib
import os

from pydantic import BaseModel, ConfigDict, Field

from jobs.spec import RunSpec


class ClusterShape(BaseModel):
    """What the cluster can ever give: totals and the biggest single node."""

    model_config = ConfigDict(frozen=True)
    cpus: float = Field(description="Total CPUs of the cluster (or this machine for the embedded Ray).")
    gpus: float = Field(0.0, description="Total GPUs.")
    node_cpus: float = Field(description="CPUs of the largest node.")
    node_gpus: float = Field(0.0, description="GPUs of the largest node.")
    autoscaling: bool = Field(False, description="True when more nodes may appear (only totals are unknowable then).")

    @classmethod
    def this_machine(cls) -> ClusterShape:
        cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        gpus = 0.0
        with contextlib.suppress(Exception):
            import torch

            gpus = float(torch.cuda.device_count())
        return cls(cpus=cpus, gpus=gpus, node_cpus=cpus, node_gpus=gpus)


def fits_on(cluster: ClusterShape | None):
    """A study loader's `judge` (jobs.study.load_study): check_fits against `cluster`; None judges nothing."""
    return None if cluster is None else (lambda runs: check_fits(runs, cluster))


def check_fits(runs: list[RunSpec], cluster: ClusterShape) -> list[str]:
    """One line per distinct resource request the cluster can never satisfy."""
    errors: list[str] = []
    seen: set[tuple] = set()
    for run in runs:
        r = run.resources
        gpus_per_worker = (r.gpus_per_worker if r.use_gpu else 0.0) or 0.0
        key = (r.num_workers, r.cpus_per_worker, gpus_per_worker)
        if key in seen:
            continue
        seen.add(key)
        where = f"run {run.run_id}: resources"
        if r.cpus_per_worker > cluster.node_cpus:
            errors.append(f"{where}.cpus_per_worker={r.cpus_per_worker:g} but the largest node has {cluster.node_cpus:g} CPUs; lower it")
        if gpus_per_worker > cluster.node_gpus:
            errors.append(f"{where}.gpus_per_worker={gpus_per_worker:g} but the largest node has {cluster.node_gpus:g} GPUs; "
                          + ("set resources.use_gpu=false" if cluster.gpus == 0 else "lower it"))
        if not cluster.autoscaling:
            if r.num_workers * r.cpus_per_worker > cluster.cpus:
                errors.append(f"{where}: {r.num_workers} workers x {r.cpus_per_worker:g} CPUs = {r.num_workers * r.cpus_per_worker:g} "
                              f"> {cluster.cpus:g} CPUs in the cluster; lower resources.num_workers or resources.cpus_per_worker")
            if gpus_per_worker and r.num_workers * gpus_per_worker > cluster.gpus:
                errors.append(f"{where}: {r.num_workers} workers x {gpus_per_worker:g} GPUs > {cluster.gpus:g} GPUs in the cluster; "
                              "lower resources.num_workers")
    return errors
