"""Scheduler options of `python -m orchestrator slurm` (the one source of its flags), a run's task layout, and
the time-limit checks made before submission."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.spec import RunSpec


class SlurmError(RuntimeError):
    """A problem the user must fix; the message is one line per problem."""


def parse_time(text: str) -> int:
    """Slurm's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) -> whole minutes (rounded up)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise ValueError(f"--time {text!r}: use minutes, H:MM:SS or D-HH:MM:SS (e.g. 48:00:00)")
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # H:M:S
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # M:S
        seconds = int(a) * 60 + int(b)
    else:  # M
        seconds = int(a) * 60
    if seconds <= 0:
        raise ValueError(f"--time {text!r}: must be positive")
    return math.ceil(seconds / 60)


class SlurmOptions(BaseModel):
    """Scheduler options of one `slurm` invocation (the run specs are untouched by them)."""

    model_config = ConfigDict(extra="forbid")
    partition: str | None = Field(None, description="Slurm partition (sbatch --partition); none = the cluster default",
                                  json_schema_extra={"aliases": ["-p"]})
    time_min: int = Field(48 * 60, ge=1, description="time limit per job, Slurm format (minutes, H:MM:SS, D-HH:MM:SS); "
                          "jobs requeue themselves at the limit",
                          json_schema_extra={"flag": "--time", "aliases": ["-t"], "text": True,
                                             "shown_default": "48:00:00"})
    nodes: int = Field(1, ge=1, description="nodes per run", json_schema_extra={"aliases": ["-N"]})
    gpus_per_node: int | None = Field(None, ge=0, description="GPUs = tasks per node; none = resources.num_workers / nodes")
    cpus_per_task: int | None = Field(None, ge=1, description="CPUs per task; none = resources.cpus_per_worker")
    mem_gb: float | None = Field(None, gt=0, description="memory per node in GB; none = the partition default")
    account: str | None = Field(None, description="sbatch --account", json_schema_extra={"aliases": ["-A"]})
    qos: str | None = Field(None, description="sbatch --qos", json_schema_extra={"aliases": ["-q"]})
    constraint: str | None = Field(None, description="sbatch --constraint (node features)",
                                   json_schema_extra={"aliases": ["-C"]})
    array_parallelism: int = Field(256, ge=1, description="runs of a study running at once (the job array's parallelism limit)")
    signal_delay_s: int = Field(120, ge=1, description="seconds before the time limit that USR2 asks the job to "
                                "stop: it checkpoints within checkpoint.sync_every updates and requeues",
                                json_schema_extra={"flag": "--signal-delay"})
    max_num_timeout: int = Field(3, ge=0, description="requeues after a time limit before a run is given up")
    extra: dict[str, str | bool] = Field(default_factory=dict, description="any other sbatch option, e.g. --sbatch "
                                         "exclusive=true --sbatch mail-type=END",
                                         json_schema_extra={"flag": "--sbatch", "repeat": True})
    local: bool = Field(False, description="no Slurm: run the same jobs here (submitit LocalExecutor); always waits")
    resume: bool = Field(False, description="keep finished runs, continue unfinished ones from their checkpoints, "
                         "start runs added since; never resubmit a run whose job is still queued")
    wait: bool = Field(False, description="wait for every job and report how each ended")

    @field_validator("time_min", mode="before")
    @classmethod
    def _slurm_time(cls, value):
        return parse_time(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _local_waits(self) -> SlurmOptions:
        if self.local:
            self.wait = True
        return self

    def conflicts(self) -> list[str]:
        """Options that are valid one by one but not together."""
        if self.local and self.nodes > 1:
            return [f"--local runs on this machine only: drop --nodes {self.nodes}"]
        return []


@dataclass(frozen=True)
class Layout:
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node


def layout(spec: RunSpec, opts: SlurmOptions) -> Layout:
    """Tasks of one run's job: one per GPU on GPU runs, the run's workers on CPU runs."""
    r = spec.resources
    if r.use_gpu:
        gpus = opts.gpus_per_node if opts.gpus_per_node is not None else _per_node(r.num_workers, opts.nodes)
        if gpus < 1:
            raise SlurmError(f"run {spec.run_id}: resources.use_gpu is true but --gpus-per-node is 0; "
                             "set resources.use_gpu=false for a CPU run")
        return Layout(opts.nodes, gpus, gpus, opts.cpus_per_task or r.cpus_per_worker)
    if opts.gpus_per_node:
        raise SlurmError(f"run {spec.run_id}: --gpus-per-node {opts.gpus_per_node} given but resources.use_gpu is "
                         "false; drop the option or set resources.use_gpu=true")
    return Layout(opts.nodes, _per_node(r.num_workers, opts.nodes), 0, opts.cpus_per_task or r.cpus_per_worker)


def _per_node(workers: int, nodes: int) -> int:
    if workers % nodes:
        raise SlurmError(f"resources.num_workers={workers} does not split over --nodes {nodes}; "
                         "make it a multiple of the node count")
    return workers // nodes


# slurmctld looks at time limits and --signal every 30 s: USR2 comes up to this much before --signal-delay.
SIGNAL_SLACK_S = 30
# A job needs about this long (imports, unpickling, data) before submitit's USR2 handler is in place.
STARTUP_S = 30


def time_warnings(opts: SlurmOptions) -> list[str]:
    """A --time / --signal-delay pair that lets USR2 come before the job trains. (Any later signal loses nothing:
    the job checkpoints at the update it stops at, so even a limit shorter than an epoch makes progress.)"""
    usable = opts.time_min * 60 - opts.signal_delay_s
    earliest = usable - SIGNAL_SLACK_S
    out = []
    if usable <= 0:
        out.append(f"--time {opts.time_min} min is not longer than --signal-delay {opts.signal_delay_s} s: the job is "
                   "signalled to checkpoint before it trains at all; give more time")
    elif earliest < STARTUP_S:
        out.append(f"--time {opts.time_min} min with --signal-delay {opts.signal_delay_s} s: Slurm checks signals every "
                   f"{SIGNAL_SLACK_S} s, so USR2 may come {max(earliest, 0)} s after a job starts, while it is still "
                   "starting up (killed, or requeued before it trains); raise --time or lower --signal-delay")
    return out
