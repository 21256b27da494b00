"""`python -m orchestrator slurm CONFIG` and `slurm-status STUDY_DIR`: runs and studies through submitit, no Ray.

One run = one submitit job of `nodes x tasks_per_node` tasks (one per GPU; on CPU the tasks are the run's
`resources.num_workers`); a study = one job array over the same expanded grid as the Ray sweep. Every task
runs `jobs.train.train_loop` with a `SlurmContext` (orchestrator.slurm_job), writing the same run directories
as the Ray path. Preemption / time limit: USR2 -> `SlurmRun.checkpoint()` -> requeue -> exact resume.

The study directory gets `slurm_jobs.json` (run -> job id, history of job ids) and `slurm/` (submitit's
scripts, pickles and logs). `--resume` resubmits only runs whose status is not finished and whose job is not
still in squeue. `--local` runs the same jobs on this machine with submitit's LocalExecutor.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from analysis.schema import METRICS_FILE, STATUS_FILE
from jobs.spec import RunSpec, SpecError, load_spec, read_yaml

JOBS_FILE = "slurm_jobs.json"
SUBMITIT_DIR = "slurm"
# Slurm states in which a job may still run (or run again): never submit a duplicate of these.
LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
               "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "PREEMPTED", "RESV_DEL_HOLD"}


class SlurmOptions(BaseModel):
    """Scheduler options of one `slurm` invocation (the run specs are untouched by them)."""

    model_config = ConfigDict(extra="forbid")
    partition: str | None = Field(None, description="Slurm partition (sbatch --partition); None = the cluster default")
    time_min: int = Field(48 * 60, ge=1, description="time limit per job in minutes (sbatch --time)")
    nodes: int = Field(1, ge=1, description="nodes per run")
    gpus_per_node: int | None = Field(None, ge=0, description="GPUs (= tasks) per node; None = num_workers / nodes")
    cpus_per_task: int | None = Field(None, ge=1, description="CPUs per task; None = resources.cpus_per_worker")
    mem_gb: float | None = Field(None, gt=0, description="memory per node in GB; None = the partition default")
    account: str | None = Field(None, description="sbatch --account")
    qos: str | None = Field(None, description="sbatch --qos")
    constraint: str | None = Field(None, description="sbatch --constraint (node features)")
    array_parallelism: int = Field(256, ge=1, description="runs of a study running at once (the array's %K)")
    signal_delay_s: int = Field(120, ge=1, description="USR2 is sent this long before the time limit")
    max_num_timeout: int = Field(3, ge=0, description="requeues after a time limit before a run is given up")
    extra: dict[str, str] = Field(default_factory=dict, description="further sbatch options (--sbatch KEY=VALUE)")
    local: bool = Field(False, description="run with submitit's LocalExecutor on this machine instead of sbatch")
    resume: bool = Field(False, description="resubmit only unfinished runs that have no live job")
    wait: bool = Field(False, description="wait for every job and report how each ended (always with --local)")


@dataclass(frozen=True)
class Layout:
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node


class SlurmError(RuntimeError):
    """A problem the user must fix; the message is one line per problem."""


# ---- parsing ---------------------------------------------------------------------------------------


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


def load_runs(config: Path, overrides: list[str]) -> tuple[list[RunSpec], Path]:
    """A study YAML (has seeds/conditions/grid/base/sweep) -> its expanded runs; a run spec -> that one run."""
    from orchestrator.study import STUDY_KEYS, load_study

    raw = read_yaml(config)
    is_study = any(k in raw for k in STUDY_KEYS) or any(o.split("=", 1)[0].split(".")[0] in STUDY_KEYS
                                                       for o in overrides)
    if is_study:
        study = load_study(config, overrides)
        study.write_index()
        runs = study.expand()
    else:
        runs = [load_spec(config, overrides)]
    # Jobs may start in another working directory (requeues, --chdir): make every path absolute now.
    runs = [_absolute(r) for r in runs]
    return runs, runs[0].run_dir.parent


def _absolute(spec: RunSpec) -> RunSpec:
    data = spec.data.model_copy(update={"train_path": Path(spec.data.train_path).absolute(),
                                        "val_path": Path(spec.data.val_path).absolute()})
    return spec.model_copy(update={"output_root": Path(spec.output_root).absolute(), "data": data})


# ---- the job -> run map ----------------------------------------------------------------------------


def read_jobs(study_dir: Path) -> dict[str, Any]:
    path = Path(study_dir) / JOBS_FILE
    if not path.exists():
        return {"runs": {}}
    return json.loads(path.read_text())


def write_jobs(study_dir: Path, data: dict[str, Any]) -> None:
    path = Path(study_dir) / JOBS_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def run_state(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


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
        raise SlurmError(f"squeue failed: {_first_error(r.stderr or r.stdout)}")
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


def _first_error(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no output"])[-1 if errors else 0]


# ---- time limit check ------------------------------------------------------------------------------


def epoch_seconds_estimate(study_dir: Path) -> float | None:
    """Median epoch duration of the study's runs so far (a resumed or re-used study), if any."""
    import pyarrow.parquet as pq

    values: list[float] = []
    for path in Path(study_dir).glob(f"*/{METRICS_FILE}"):
        try:
            values += [v for v in pq.read_table(path, columns=["epoch_s"]).column("epoch_s").to_pylist() if v]
        except Exception:  # a file being rewritten by a live job: skip it
            continue
    return statistics.median(values) if values else None


# slurmctld looks at time limits and --signal every 30 s: USR2 comes up to this much before --signal-delay.
SIGNAL_SLACK_S = 30
# A job needs about this long (imports, unpickling, data) before submitit's USR2 handler is in place.
STARTUP_S = 30


def time_warnings(runs: list[RunSpec], opts: SlurmOptions, epoch_s: float | None) -> list[str]:
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
    elif epoch_s is not None:
        every = max(r.checkpoint.every_epochs for r in runs)
        interval = epoch_s * every
        if usable < interval:
            out.append(f"--time {opts.time_min} min leaves {usable:.0f} s before the USR2 signal, shorter than one "
                       f"checkpoint interval (~{interval:.0f} s = {every} epoch(s) x {epoch_s:.0f} s measured in this "
                       "study): every requeue would restart from the same checkpoint; raise --time or set "
                       "checkpoint.every_steps")
    return out


# ---- submission ------------------------------------------------------------------------------------


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


def submit(runs: list[RunSpec], study_dir: Path, opts: SlurmOptions, log: Callable[[str], None] = print) -> list:
    """Submit `runs` (one array per distinct layout); records the job ids in slurm_jobs.json."""
    import submitit

    from orchestrator.slurm_job import SlurmRun

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
        if opts.local:
            submitted = _submit_local(ex, group, opts.array_parallelism)
        else:
            try:
                # submitit also prints sbatch's stderr: keep just our one line.
                with contextlib.redirect_stderr(io.StringIO()), ex.batch():
                    submitted = [ex.submit(SlurmRun(r.model_dump(mode="json"))) for r in group]
            except submitit.core.utils.FailedJobError as exc:
                raise SlurmError(f"sbatch refused the job: {_first_error(str(exc))}") from None
        for r, job in zip(group, submitted):
            entry = record["runs"].setdefault(r.run_id, {"history": []})
            entry.update(job_id=str(job.job_id), submitted=time.time(), tasks=lay.world_size)
            entry["history"].append(str(job.job_id))
            log(f"  {r.run_id}: job {job.job_id} ({lay.nodes} node(s) x {lay.tasks_per_node} task(s)"
                f"{f', {lay.gpus_per_node} GPU(s)/node' if lay.gpus_per_node else ''})")
        jobs += list(zip(group, submitted))
        write_jobs(study_dir, record)
    return jobs


def _submit_local(ex, runs: list[RunSpec], parallelism: int) -> list:
    """LocalExecutor starts every job at once; keep at most `parallelism` running (a local array's %K)."""
    from orchestrator.slurm_job import SlurmRun

    jobs: list = []
    for r in runs:
        while sum(not j.done() for j in jobs) >= parallelism:
            time.sleep(0.5)
        jobs.append(ex.submit(SlurmRun(r.model_dump(mode="json"))))
    return jobs


def select_unfinished(runs: list[RunSpec], record: dict[str, Any], live: dict[str, str],
                      log: Callable[[str], None]) -> list[RunSpec]:
    todo = []
    for r in runs:
        state = run_state(r.run_dir) or {}
        job = record.get("runs", {}).get(r.run_id, {}).get("job_id")
        if state.get("state") == "finished":
            log(f"  {r.run_id}: finished ({state.get('epoch')}/{state.get('epochs_total')} epochs), kept")
        elif job and job in live:
            log(f"  {r.run_id}: job {job} is still {live[job]}, not resubmitted")
        else:
            todo.append(r)
    return todo


def wait_for(jobs: list, log: Callable[[str], None]) -> int:
    """Wait for every job; one line per run; the number of runs that did not finish."""
    failed = 0
    for spec, job in jobs:
        try:
            job.results()  # one result per task
            state = run_state(spec.run_dir) or {}
            log(f"  {spec.run_id}: finished ({state.get('epoch')}/{state.get('epochs_total')} epochs) "
                f"in {spec.run_dir}")
        except Exception as exc:  # submitit's FailedJobError / UncompletedJobError carry the task's traceback
            failed += 1
            state = run_state(spec.run_dir) or {}
            reason = state.get("error") if state.get("state") == "failed" else None
            log(f"  {spec.run_id}: FAILED (job {job.job_id}): {reason or _error_line(str(exc))}")
    return failed


def _error_line(text: str) -> str:
    """The exception line of a traceback in submitit's error text."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    found = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b", ln)]
    return (found or lines or ["no message"])[-1]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator slurm",
        description="Run a run spec or a study through Slurm with submitit (a job per run, a job array per study).",
    )
    p.add_argument("config", type=Path, help="run spec or study YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=10 seeds=[0,1]")
    p.add_argument("--partition", "-p", help="Slurm partition")
    p.add_argument("--time", "-t", default="48:00:00", help="time limit per job (Slurm format, default 48:00:00); "
                                                            "jobs requeue themselves at the limit")
    p.add_argument("--nodes", "-N", type=int, default=1, help="nodes per run (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=None,
                   help="GPUs = tasks per node (default: resources.num_workers / nodes)")
    p.add_argument("--cpus-per-task", type=int, default=None, help="default: resources.cpus_per_worker")
    p.add_argument("--mem-gb", type=float, default=None, help="memory per node in GB")
    p.add_argument("--account", "-A")
    p.add_argument("--qos", "-q")
    p.add_argument("--constraint", "-C")
    p.add_argument("--array-parallelism", type=int, default=256, help="runs of a study at once (default 256)")
    p.add_argument("--signal-delay", type=int, default=120,
                   help="seconds before the time limit that USR2 asks the job to checkpoint and requeue (default 120)")
    p.add_argument("--max-num-timeout", type=int, default=3, help="requeues after hitting the time limit (default 3)")
    p.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --sbatch exclusive=true --sbatch mail-type=END")
    p.add_argument("--local", action="store_true", help="no Slurm: run the same jobs here (submitit LocalExecutor)")
    p.add_argument("--resume", action="store_true", help="resubmit only unfinished runs without a live job")
    p.add_argument("--wait", action="store_true", help="wait for the jobs and report how each ended")
    return p


def _options(args: argparse.Namespace) -> tuple[SlurmOptions | None, list[str]]:
    errors: list[str] = []
    time_min = 48 * 60
    try:
        time_min = parse_time(args.time)
    except ValueError as exc:
        errors.append(str(exc))
    extra: dict[str, str] = {}
    for item in args.sbatch:
        key, sep, value = item.partition("=")
        if not sep or not key:
            errors.append(f"--sbatch {item!r}: expected KEY=VALUE (e.g. --sbatch mail-type=END)")
        else:
            extra[key.strip().lstrip("-")] = True if value.lower() == "true" else value
    checks = [("--nodes", args.nodes, 1), ("--array-parallelism", args.array_parallelism, 1),
              ("--signal-delay", args.signal_delay, 1), ("--max-num-timeout", args.max_num_timeout, 0),
              ("--gpus-per-node", args.gpus_per_node, 0), ("--cpus-per-task", args.cpus_per_task, 1)]
    for flag, value, low in checks:
        if value is not None and value < low:
            errors.append(f"{flag} {value}: must be >= {low}")
    if args.mem_gb is not None and args.mem_gb <= 0:
        errors.append(f"--mem-gb {args.mem_gb}: must be > 0")
    if args.local and args.nodes > 1:
        errors.append(f"--local runs on this machine only: drop --nodes {args.nodes}")
    if errors:
        return None, errors
    return SlurmOptions(
        partition=args.partition, time_min=time_min, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, account=args.account, qos=args.qos,
        constraint=args.constraint, array_parallelism=args.array_parallelism, signal_delay_s=args.signal_delay,
        max_num_timeout=args.max_num_timeout, extra=extra, local=args.local, resume=args.resume,
        wait=args.wait or args.local,
    ), []


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    opts, errors = _options(args)
    if not args.local and shutil.which("sbatch") is None:
        errors.append("sbatch not found: this machine has no Slurm client; add --local to run the same jobs here "
                      "with submitit's LocalExecutor")
    try:
        runs, study_dir = load_runs(args.config, args.overrides)
    except SpecError as exc:
        errors += exc.errors
        runs, study_dir = [], None
    if opts is not None:
        for r in runs:
            try:
                layout(r, opts)
            except SlurmError as exc:
                if str(exc) not in errors:
                    errors.append(str(exc))
    if errors:
        print(f"error: cannot submit {args.config}:", file=sys.stderr)
        for line in errors:
            print(f"  {line}", file=sys.stderr)
        return 2
    assert opts is not None and study_dir is not None
    from orchestrator.study import StudyLocked, study_lock

    try:
        with study_lock(study_dir):
            return _submit_study(runs, study_dir, opts, args.config)
    except (SlurmError, StudyLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _submit_study(runs: list[RunSpec], study_dir: Path, opts: SlurmOptions, config: Path) -> int:
    record = read_jobs(study_dir)
    known = [e["job_id"] for e in record.get("runs", {}).values() if e.get("job_id")]
    if record.get("runs") and not opts.resume:
        raise SlurmError(f"{study_dir} was already submitted ({len(known)} job(s) in {JOBS_FILE}); add --resume to "
                         "resubmit its unfinished runs, or use another study name")
    if opts.resume and record.get("executor", "slurm") != ("local" if opts.local else "slurm"):
        print(f"warning: {study_dir} was submitted with the {record.get('executor')} executor; resuming with the "
              "other one", file=sys.stderr)
    live = {} if opts.local or not opts.resume else squeue_states(known)
    live = {job: state for job, state in live.items() if state in LIVE_STATES}
    print(f"study {study_dir} ({len(runs)} run(s))")
    todo = select_unfinished(runs, record, live, print) if opts.resume else runs
    if not todo:
        print("nothing to submit: every run is finished or still queued")
        return 0
    for line in time_warnings(todo, opts, epoch_seconds_estimate(study_dir)):
        print(f"warning: {line}", file=sys.stderr)
    where = "locally (submitit LocalExecutor)" if opts.local else f"to Slurm{f' partition {opts.partition}' if opts.partition else ''}"
    print(f"submitting {len(todo)} run(s) {where}:")
    jobs = submit(todo, study_dir, opts)
    print(f"job ids in {study_dir / JOBS_FILE}; logs in {study_dir / SUBMITIT_DIR}")
    if not opts.wait:
        print(f"follow with: python -m orchestrator slurm-status {study_dir}")
        return 0
    failed = wait_for(jobs, print)
    if failed:
        print(f"{failed} run(s) failed; fix the cause and rerun them with: python -m orchestrator slurm {config} "
              f"--resume{' --local' if opts.local else ''}")
    return 1 if failed else 0


# ---- slurm-status -----------------------------------------------------------------------------------


def study_status(study_dir: Path) -> list[dict[str, Any]]:
    """One dict per run of the study: run_id, job_id, Slurm state, run state, epochs done / total."""
    study_dir = Path(study_dir)
    record = read_jobs(study_dir)
    entries = record.get("runs", {})
    ids = [e["job_id"] for e in entries.values() if e.get("job_id")]
    states: dict[str, str] = {}
    if record.get("executor") != "local" and shutil.which("squeue"):
        states = sacct_states(ids) or {}
        # squeue is authoritative for jobs still in the queue (sacct lags a requeue by a moment).
        try:
            states.update(squeue_states(ids))
        except SlurmError:
            pass
    folder = Path(record.get("folder", str(study_dir / SUBMITIT_DIR)))
    rows = []
    for run_id, entry in sorted(entries.items()):
        job = entry.get("job_id", "")
        slurm = states.get(job) or _state_from_files(folder, job, local=record.get("executor") == "local")
        st = run_state(study_dir / run_id) or {}
        rows.append({"run_id": run_id, "job_id": job, "slurm_state": slurm, "run_state": st.get("state", "-"),
                     "epoch": st.get("epoch", 0), "epochs_total": st.get("epochs_total"),
                     "error": st.get("error"), "resubmits": len(entry.get("history", [])) - 1})
    return rows


def _state_from_files(folder: Path, job_id: str, local: bool) -> str:
    """Without accounting/queue: submitit's result pickle says how the job ended."""
    result = folder / f"{job_id}_0_result.pkl"
    if not result.exists():
        if local and job_id.isdigit() and Path(f"/proc/{job_id}").exists():
            return "RUNNING"  # a LocalExecutor job id is its controller's pid
        return "UNKNOWN"
    try:
        import pickle

        outcome = pickle.loads(result.read_bytes())[0]
    except Exception:
        return "UNKNOWN"
    return "COMPLETED" if outcome == "success" else "FAILED"


def status_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator slurm-status",
                                description="Each run's Slurm job state next to its epochs done.")
    p.add_argument("study_dir", type=Path, help="the study directory (output_root/study)")
    args = p.parse_args(argv)
    if not (args.study_dir / JOBS_FILE).exists():
        print(f"error: {args.study_dir / JOBS_FILE} not found: submit the study with "
              "`python -m orchestrator slurm CONFIG` first", file=sys.stderr)
        return 2
    rows = study_status(args.study_dir)
    width = max([len(r["run_id"]) for r in rows] + [3])
    print(f"{'run':<{width}}  {'job':<10} {'slurm':<12} {'run':<9} {'epochs':>7}  note")
    for r in rows:
        epochs = f"{r['epoch']}/{r['epochs_total'] if r['epochs_total'] is not None else '?'}"
        note = r["error"] or (f"resubmitted {r['resubmits']}x" if r["resubmits"] else "")
        if r["run_state"] in ("running", "-") and r["slurm_state"] not in LIVE_STATES | {"UNKNOWN"}:
            # Killed without a word from the run (a hard time limit, SIGKILL, a lost node): its checkpoints remain.
            note = f"job ended ({r['slurm_state']}) before the run finished: --resume continues it"
        print(f"{r['run_id']:<{width}}  {r['job_id']:<10} {r['slurm_state']:<12} {r['run_state']:<9} {epochs:>7}  {note}")
    return 0
