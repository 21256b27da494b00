"""THE definition of where a run stands, used by both engines' --resume, `slurm-status` and the analysis.

- finished:   status.json says finished (or is absent) and the metrics hold every epoch the spec now asks for. A finished
              run whose `train.epochs` was raised since is unfinished: it continues from its last checkpoint.
- unfinished: anything else that can continue: never started, running, killed, requeued, stopped early.
- failed:     the run's own process recorded an error (status.json `failed`); a resume retries it from its
              checkpoints.
- blocked:    the run folder cannot be read (status.json or metrics.parquet corrupt): no engine may start it
              until the user repairs or moves the folder; the reason says which file.
A run of a later stage whose dependency (rundir.stages) failed or is blocked is `blocked by <run>`: its own state
stays what its folder says, `blocked_by` names the run, and no engine starts it while that run is stuck.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from rundir.metrics import check_metrics, epochs_done, footer_rows
from rundir.names import CHECKPOINT_DIR, METRICS_FILE, SPEC_FILE, SPEC_JSON, STATUS_FILE
from rundir.status import check_status


class State(str, Enum):
    FINISHED = "finished"
    UNFINISHED = "unfinished"
    FAILED = "failed"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class RunState:
    state: State
    epochs_done: int          # highest epoch in metrics.parquet or status.json
    epochs_total: int | None  # what the spec asks for now (else what status.json, else the metrics recorded)
    started: bool             # the folder holds any of the run's files
    reason: str | None = None  # the recorded error of a failed run, the problem of a blocked one
    blocked_by: str | None = None  # the failed or blocked run of an earlier stage this run needs

    def unreadable(self, problem: str | None) -> "RunState":
        """This state, or blocked by `problem` when a reader found the folder's files unusable (e.g. a metrics
        column of the wrong type that the footer alone does not show)."""
        return self if problem is None else replace(self, state=State.BLOCKED, reason=problem)

    def waiting_for(self, run_id: str | None) -> "RunState":
        """This state, blocked by `run_id` (a finished run is never blocked)."""
        return self if self.finished or run_id is None else replace(self, blocked_by=run_id)

    @property
    def finished(self) -> bool:
        return self.state is State.FINISHED

    def describe(self) -> str:
        """`finished (3/3 epochs)`, `unfinished (1/5 epochs)`, `failed at 2/5: <error>`, `blocked: <why>`."""
        total = "?" if self.epochs_total is None else self.epochs_total
        if self.blocked_by is not None and not self.finished:
            return f"blocked by {self.blocked_by}"
        if self.state is State.BLOCKED:
            return f"blocked: {self.reason}; repair or move the run folder aside"
        if self.state is State.FAILED:
            return f"failed at {self.epochs_done}/{total} epochs: {self.reason or 'no error recorded'}"
        if not self.started:
            return "not started"
        return f"{self.state.value} ({self.epochs_done}/{total} epochs)"


def classify(status: dict | None, done: int, epochs_wanted: int | None) -> State:
    """The state from what the run recorded (status.json, epochs in its metrics) and the epochs wanted now."""
    recorded = (status or {}).get("state")
    if recorded == "failed":
        return State.FAILED
    total = epochs_wanted if epochs_wanted is not None else (status or {}).get("epochs_total")
    # No status.json at all but every epoch in the metrics: a folder whose status file was not copied.
    if recorded in ("finished", None) and total is not None and done >= total:
        return State.FINISHED
    return State.UNFINISHED


def _finished_per_footer(run_dir: Path, status: dict | None, epochs_wanted: int | None) -> bool:
    if not status or status.get("state") != "finished":
        return False
    total = epochs_wanted if epochs_wanted is not None else status.get("epochs_total")
    epoch = int(status.get("epoch") or 0)
    if total is None or epoch < total:
        return False
    rows = footer_rows(run_dir)
    return rows is not None and rows >= total


def run_state(run_dir: Path | str, epochs_wanted: int | None = None) -> RunState:
    """Where the run in `run_dir` stands; `epochs_wanted` is the spec's train.epochs today (None: the run's
    own record decides, as for a study folder copied off the cluster)."""
    run_dir = Path(run_dir)
    started = any((run_dir / name).exists() for name in (STATUS_FILE, METRICS_FILE, CHECKPOINT_DIR, SPEC_JSON, SPEC_FILE))
    status, problem = check_status(run_dir)
    if not problem and _finished_per_footer(run_dir, status, epochs_wanted):
        # A large study's --resume or status: a finished run is known from status.json and the metrics file's
        # footer (one row per epoch) without reading its rows.
        return RunState(State.FINISHED, int(status["epoch"]), epochs_wanted or status.get("epochs_total"), True)
    table, errors, _ = check_metrics(run_dir)
    total = epochs_wanted if epochs_wanted is not None else (status or {}).get("epochs_total")
    if total is None and table is not None and table.num_rows:
        # No spec and no status.json (a folder whose status file was not copied): the rows say what was planned.
        total = max((t for t in table.column("epochs_total").to_pylist() if t is not None), default=None)
    if problem or errors:
        return RunState(State.BLOCKED, int((status or {}).get("epoch") or 0), total, True,
                        problem or errors[0])
    # status.json is written after the epoch's row, so the metrics normally hold at least its epoch; a status
    # written around a requeue may know a checkpoint's epoch before any row of this job exists.
    done = max(epochs_done(table), int((status or {}).get("epoch") or 0))
    state = classify(status, done, total)
    if state is State.FINISHED and (table is None or table.num_rows == 0) and not done:
        # `train.epochs: 0` is done by its one row at epoch 0; an empty folder has done nothing.
        state = State.UNFINISHED
    reason = (status or {}).get("error") if state is State.FAILED else None
    return RunState(state, done, total, started, reason)
