"""`python -m orchestrator slurm-status STUDY_DIR`: each run's Slurm job state next to where the run stands."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from orchestrator.slurm_queue import JOBS_FILE, LIVE_STATES, job_states, read_jobs
from rundir import State, print_error, run_state


def study_status(study_dir: Path) -> list[dict[str, Any]]:
    """One dict per submitted run: run_id, job_id, Slurm state, run state, epochs done / total, note."""
    study_dir = Path(study_dir)
    record = read_jobs(study_dir)
    states = job_states(record, study_dir)
    rows = []
    for run_id, entry in sorted(record.get("runs", {}).items()):
        job = entry.get("job_id", "")
        st = run_state(study_dir / run_id)
        rows.append({"run_id": run_id, "job_id": job, "slurm_state": states.get(job, "UNKNOWN"),
                     "run_state": st.state.value if st.started else "-", "epoch": st.epochs_done,
                     "epochs_total": st.epochs_total, "error": st.reason,
                     "resubmits": len(entry.get("history", [])) - 1})
    return rows


def _note(row: dict[str, Any]) -> str:
    if row["error"]:
        return row["error"]
    if row["run_state"] in (State.UNFINISHED.value, "-") and row["slurm_state"] not in LIVE_STATES | {"UNKNOWN"}:
        # Killed without a word from the run (a hard time limit, SIGKILL, a lost node): its checkpoints remain.
        return f"job ended ({row['slurm_state']}) before the run finished: --resume continues it"
    return f"resubmitted {row['resubmits']}x" if row["resubmits"] else ""


def status_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator slurm-status",
                                description="Each run's Slurm job state next to its epochs done.")
    p.add_argument("study_dir", type=Path, help="the study directory (output_root/study)")
    args = p.parse_args(argv)
    if not (args.study_dir / JOBS_FILE).exists():
        print_error(f"{args.study_dir / JOBS_FILE} not found: submit the study with "
                    "`python -m orchestrator slurm CONFIG` first")
        return 2
    rows = study_status(args.study_dir)
    width = max([len(r["run_id"]) for r in rows] + [3])
    print(f"{'run':<{width}}  {'job':<10} {'slurm':<12} {'run':<10} {'epochs':>7}  note")
    for r in rows:
        epochs = f"{r['epoch']}/{r['epochs_total'] if r['epochs_total'] is not None else '?'}"
        print(f"{r['run_id']:<{width}}  {r['job_id']:<10} {r['slurm_state']:<12} {r['run_state']:<10} {epochs:>7}  "
              f"{_note(r)}")
    return 0
