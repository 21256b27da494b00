"""Submitting a plan's runs through submitit (sbatch job arrays, or LocalExecutor) and waiting for them."""
from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Any, Callable

from jobs.spec import RunSpec
from orchestrator.slurm_options import Layout, SlurmError, SlurmOptions, layout
from orchestrator.slurm_queue import SUBMITIT_DIR, read_jobs, write_jobs
from rundir import blocker, error_line, run_state, stage_of


def make_executor(folder: Path, opts: SlurmOptions, lay: Layout, name: str):
    import submitit

    if opts.local:
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=opts.max_num_timeout)
        ex.update_parameters(timeout_min=opts.time_min, tasks_per_node=lay.tasks_per_node,
                             gpus_per_node=lay.gpus_per_node, signal_delay_s=opts.signal_delay_s)
        return ex
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=opts.max_num_timeout)
    params: dict[str, Any] = dict(
        job_name=name, time=opts.time_min, nodes=lay.nodes, ntasks_per_node=lay.tasks_per_node,
        cpus_per_task=lay.cpus_per_task, signal_delay_s=opts.signal_delay_s,
        array_parallelism=opts.array_parallelism, stderr_to_stdout=True,
        # One task failing ends the others at once instead of leaving them in a collective until its timeout.
        srun_args=["--kill-on-bad-exit=1"],
    )
    if lay.gpus_per_node:
        params["gpus_per_node"] = lay.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(opts, key):
            params[key] = getattr(opts, key)
    if opts.mem_gb:
        params["mem"] = f"{int(opts.mem_gb * 1024)}MB"
    # Requeue on node failure and preemption even where the cluster's JobRequeue default is off.
    params["additional_parameters"] = {"requeue": True, **opts.extra}
    ex.update_parameters(**params)
    return ex


def submit(runs: list[RunSpec], study_dir: Path, opts: SlurmOptions, log: Callable[[str], None] = print,
           deps: dict[str, list[str]] | None = None, queued: dict[str, str] | None = None) -> list:
    """Submit `runs` stage by stage; records the job ids in slurm_jobs.json.

    A stage's runs that wait for no job form one array per layout. A run that needs runs with a job in the queue
    (submitted now, or still `queued`: run_id -> job id) is its own job with `--dependency=afterok:<those jobs>`
    and `--kill-on-invalid-dep=yes`, so it starts when exactly what it needs has succeeded and leaves the queue
    when one of them failed. The LocalExecutor has no dependencies: it waits for each stage instead and skips
    the runs a failed dependency blocks."""
    deps = deps or {}
    ids = {r.run_id for r in runs}
    stages = stage_of({r.run_id: [d for d in deps.get(r.run_id, ()) if d in ids] for r in runs})
    job_of = dict(queued or {})
    jobs: list = []
    for stage in sorted(set(stages.values())):
        group = [r for r in runs if stages[r.run_id] == stage]
        if opts.local and stage:
            group = _skip_blocked(group, jobs, deps, log)
        plain = [r for r in group if not _after(r, deps, job_of)]
        submitted = submit_arrays(plain, study_dir, opts, log)
        for r in group:
            after = _after(r, deps, job_of)
            if after:
                submitted += submit_arrays([r], study_dir, opts, log, after)
        job_of.update({spec.run_id: str(job.job_id) for spec, job in submitted})
        jobs += submitted
    return jobs


def _after(run: RunSpec, deps: dict[str, list[str]], job_of: dict[str, str]) -> list[str]:
    return [job_of[d] for d in deps.get(run.run_id, ()) if d in job_of]


def _skip_blocked(group: list[RunSpec], jobs: list, deps: dict[str, list[str]], log: Callable[[str], None]) -> list:
    """LocalExecutor: wait for the jobs so far, then drop the runs a dependency that did not finish blocks."""
    for _, job in jobs:
        with contextlib.suppress(Exception):  # a failure is read from the run folder below
            job.results()
    stuck = {spec.run_id: "" for spec, _ in jobs if not run_state(spec.run_dir, spec.train.epochs).finished}
    keep = []
    for r in group:
        by = blocker(r.run_id, deps, stuck)
        if by is None:
            keep.append(r)
        else:
            stuck[r.run_id] = ""
            log(f"  {r.run_id}: not submitted, blocked by {by}")
    return keep


def submit_arrays(runs: list[RunSpec], study_dir: Path, opts: SlurmOptions, log: Callable[[str], None],
                   after: list[str] | None = None, job_for: Callable[[dict], Any] | None = None) -> list:
    """One array (or job) per distinct layout, each waiting for the jobs `after` when given. `job_for`: the
    callable a run's job runs, from its spec as JSON (default SlurmRun). The record names a run by its folder
    relative to the study (its run_id, or tuning/<trial> for a tuning trial)."""
    import submitit

    from orchestrator.slurm_job import SlurmRun

    job_for = job_for or SlurmRun

    folder = study_dir / SUBMITIT_DIR
    record = read_jobs(study_dir)
    record["executor"] = "local" if opts.local else "slurm"
    record["folder"] = str(folder)
    by_layout: dict[Layout, list[RunSpec]] = {}
    for r in runs:
        lay = layout(r, opts)
        # spec.yaml must tell the truth about the world the run trained with (--nodes/--gpus-per-node win).
        r = r.model_copy(update={"resources": r.resources.model_copy(update={"num_workers": lay.world_size})})
        by_layout.setdefault(lay, []).append(r)
    jobs: list = []
    for lay, group in by_layout.items():
        ex = make_executor(folder, opts, lay, name=f"{group[0].study}")
        if after and not opts.local:
            depend(ex, "afterok", after)
        if opts.local:
            submitted = _submit_local(ex, group, opts.array_parallelism, job_for)
        else:
            try:
                # submitit also prints sbatch's stderr: keep just our one line.
                with contextlib.redirect_stderr(io.StringIO()), ex.batch():
                    submitted = [ex.submit(job_for(r.model_dump(mode="json"))) for r in group]
            except submitit.core.utils.FailedJobError as exc:
                raise SlurmError(f"sbatch refused the job: {error_line(str(exc))}") from None
        for r, job in zip(group, submitted):
            entry = record["runs"].setdefault(str(r.run_dir.relative_to(study_dir)), {"history": []})
            entry.update(job_id=str(job.job_id), submitted=time.time(), tasks=lay.world_size)
            if after:
                entry["after"] = list(after)
            entry["history"].append(str(job.job_id))
            log(f"  {r.run_id}: job {job.job_id} ({lay.nodes} node(s) x {lay.tasks_per_node} task(s)"
                f"{f', {lay.gpus_per_node} GPU(s)/node' if lay.gpus_per_node else ''}"
                f"{f', after {len(after)} job(s)' if after else ''})")
        jobs += list(zip(group, submitted))
        write_jobs(study_dir, record)
    return jobs


def depend(ex, kind: str, after: list[str]) -> None:
    """Slurm starts the executor's jobs after `after` (kind afterok / afterany), and drops them at once when that
    can never happen (--kill-on-invalid-dep)."""
    ex.update_parameters(additional_parameters={
        **ex.parameters.get("additional_parameters", {}),
        "dependency": f"{kind}:" + ":".join(after), "kill_on_invalid_dep": "yes"})


def _submit_local(ex, runs: list[RunSpec], parallelism: int, job_for: Callable[[dict], Any]) -> list:
    """LocalExecutor starts every job at once; keep at most `parallelism` running (a local array's %K)."""
    jobs: list = []
    for r in runs:
        while sum(not j.done() for j in jobs) >= parallelism:
            time.sleep(0.5)
        jobs.append(ex.submit(job_for(r.model_dump(mode="json"))))
    return jobs


def wait_for(jobs: list, log: Callable[[str], None], deps: dict[str, list[str]] | None = None) -> int:
    """Wait for every job; one line per run; the number of runs that did not finish. A job Slurm dropped because
    a job it depended on failed (`--kill-on-invalid-dep`) is reported as `blocked by` that run."""
    errors: dict[str, str] = {}
    for spec, job in jobs:
        try:
            job.results()  # one result per task
        except Exception as exc:  # submitit's FailedJobError / UncompletedJobError carry the task's traceback
            errors[spec.run_id] = error_line(str(exc))
    for spec, job in jobs:
        state = run_state(spec.run_dir, spec.train.epochs)
        if spec.run_id not in errors:
            log(f"  {spec.run_id}: {state.describe()} in {spec.run_dir}")
            continue
        by = blocker(spec.run_id, deps or {}, errors)
        if by is not None and not state.started:
            log(f"  {spec.run_id}: not run (job {job.job_id}), {state.waiting_for(by).describe()}")
        else:
            log(f"  {spec.run_id}: FAILED (job {job.job_id}): {state.reason or errors[spec.run_id]}")
    return len(errors)
