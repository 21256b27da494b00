"""A run's status.json: what the run's own processes last said about it.

`{"state": "running|finished|failed|preempted|stopped", "epoch": epochs done, "epochs_total": planned epochs, "error": one
line or null, "update": the optimizer update a preempted run stopped at (its checkpoint) or null, "updated": unix
time}`, written atomically by rank 0 through `write_status` (jobs.train's lifecycle; the engines only for what
happens outside the loop: a trial or a job that ended without it).

`preempted`: the run stopped on request (Slurm's USR2, SIGTERM/SIGINT) after writing a checkpoint at `update`;
it is unfinished and continues from exactly there.
`stopped`: the engine ended the run early for good after epoch `epoch` (a tuning trial stopped by its scheduler,
e.g. ASHA): short of `epochs_total`, not a failure, and not continued by its tuning experiment.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rundir.atomic import atomic_write_text
from rundir.errors import exception_line
from rundir.names import STATUS_FILE

RECORDED_STATES = ("running", "finished", "failed", "preempted", "stopped")


def write_status(run_dir: Path | str, state: str, epoch: int, epochs_total: int, error: str | None = None,
                 update: int | None = None) -> None:
    if state not in RECORDED_STATES:
        raise ValueError(f"status state {state!r} is not one of {', '.join(RECORDED_STATES)}")
    status = {"state": state, "epoch": epoch, "epochs_total": epochs_total, "error": error, "update": update,
              "updated": time.time()}
    atomic_write_text(Path(run_dir) / STATUS_FILE, json.dumps(status, indent=1))


def check_status(run_dir: Path | str) -> tuple[dict[str, Any] | None, str | None]:
    """(status, problem): (None, None) when there is no status.json; a problem line when it cannot be used
    (unreadable, not an object, an unknown state; the parsed object is still returned in the last case)."""
    path = Path(run_dir) / STATUS_FILE
    if not path.exists():
        return None, None
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"{STATUS_FILE} unreadable ({exception_line(exc, path)})"
    if not isinstance(status, dict):
        return None, f"{STATUS_FILE} is not a JSON object"
    if status.get("state") not in RECORDED_STATES:
        return status, f"{STATUS_FILE} has state {status.get('state')!r}, expected one of {', '.join(RECORDED_STATES)}"
    return status, None


def read_status(run_dir: Path | str) -> dict[str, Any] | None:
    """The status object, or None when it is absent or unusable (check_status says why)."""
    status, problem = check_status(run_dir)
    return None if problem else status
