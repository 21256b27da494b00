"""What Slurm knows about a study's jobs: the run -> job record (slurm_jobs.json) and the state poller.

The queue (`squeue`) is the authority on jobs that may still run; accounting (`sacct`) lags it by up to a
few seconds and only tells how a job ended. A job that has left the queue is therefore never reported as
live (RUNNING, PENDING, ...), whatever accounting says yet: its state then comes from accounting when that
has caught up, else from submitit's result files.
"""
from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

from orchestrator.slurm_options import SlurmError
from rundir import atomic_write_json, error_line

JOBS_FILE = "slurm_jobs.json"
SUBMITIT_DIR = "slurm"
# Slurm states in which a job may still run (or run again): never submit a duplicate of these.
LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
               "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "PREEMPTED", "RESV_DEL_HOLD"}
# Out of the queue, with neither up-to-date accounting nor a result file: it ended, how is not known yet.
ENDED = "ENDED"


def read_jobs(study_dir: Path) -> dict[str, Any]:
    path = Path(study_dir) / JOBS_FILE
    if not path.exists():
        return {"runs": {}}
    return json.loads(path.read_text())


def write_jobs(study_dir: Path, data: dict[str, Any]) -> None:
    atomic_write_json(Path(study_dir) / JOBS_FILE, data)


def recorded_jobs(record: dict[str, Any]) -> dict[str, str]:
    """run_id -> its latest job id."""
    return {run: e["job_id"] for run, e in record.get("runs", {}).items() if e.get("job_id")}


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """Job id (array tasks as A_i) -> Slurm state, for those jobs squeue still lists."""
    if not job_ids:
        return {}
    bases = sorted({j.split("_")[0] for j in job_ids})
    r = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(bases)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        # squeue exits non-zero when none of the ids is known any more (all left the queue).
        if "Invalid job id" in r.stderr:
            return {}
        raise SlurmError(f"squeue failed: {error_line(r.stderr or r.stdout)}")
    states = {}
    for line in r.stdout.splitlines():
        jid, _, state = line.partition("|")
        states[jid.strip()] = state.strip()
    return states


def sacct_states(job_ids: list[str]) -> dict[str, str] | None:
    """Job id -> state from accounting; None when accounting is not available on this cluster."""
    if not job_ids or shutil.which("sacct") is None:
        return None
    bases = sorted({j.split("_")[0] for j in job_ids})
    r = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(bases)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return None
    states = {}
    for line in r.stdout.splitlines():
        jid, _, state = line.partition("|")
        states[jid.strip()] = state.split()[0] if state.strip() else "UNKNOWN"  # "CANCELLED by 0"
    return states


def live_jobs(record: dict[str, Any], local: bool) -> dict[str, str]:
    """run_id -> `job N (STATE)` for the runs whose job is still in the queue (never for --local jobs)."""
    if local or record.get("executor") == "local":
        return {}
    jobs = recorded_jobs(record)
    queued = squeue_states(list(jobs.values()))
    return {run: f"job {job} ({queued[job]})" for run, job in jobs.items() if queued.get(job) in LIVE_STATES}


def state_from_files(folder: Path, job_id: str, local: bool) -> str:
    """Without the queue or accounting: submitit's result pickle says how the job ended."""
    result = Path(folder) / f"{job_id}_0_result.pkl"
    if not result.exists():
        if local and job_id.isdigit() and Path(f"/proc/{job_id}").exists():
            return "RUNNING"  # a LocalExecutor job id is its controller's pid
        return "UNKNOWN"
    try:
        outcome = pickle.loads(result.read_bytes())[0]
    except Exception:
        return "UNKNOWN"
    return "COMPLETED" if outcome == "success" else "FAILED"


def job_states(record: dict[str, Any], study_dir: Path) -> dict[str, str]:
    """job id -> the state to show for every recorded job (see the module doc for the rules)."""
    jobs = list(recorded_jobs(record).values())
    folder = Path(record.get("folder", str(Path(study_dir) / SUBMITIT_DIR)))
    local = record.get("executor") == "local"
    if local or not shutil.which("squeue"):
        return {job: state_from_files(folder, job, local) for job in jobs}
    accounted = sacct_states(jobs) or {}
    try:
        queued: dict[str, str] | None = squeue_states(jobs)
    except SlurmError:
        queued = None  # the queue cannot be asked: accounting is all there is
    return merge_states(jobs, queued, accounted, lambda job: state_from_files(folder, job, local=False))


def merge_states(jobs: list[str], queued: dict[str, str] | None, accounted: dict[str, str],
                 from_files: Callable[[str], str]) -> dict[str, str]:
    """The state of each job from the queue (None: it could not be asked), accounting and the result files."""
    out = {}
    for job in jobs:
        if queued is not None and job in queued:
            out[job] = queued[job]
            continue
        state = accounted.get(job)
        if queued is not None and (state is None or state in LIVE_STATES):
            # Out of the queue: accounting still calling it live (or silent) has not caught up yet.
            files = from_files(job)
            state = files if files != "UNKNOWN" else ENDED
        out[job] = state or from_files(job)
    return out
