"""`python -m orchestrator slurm CONFIG`: runs and studies through submitit, no Ray.

One run = one submitit job of `nodes x tasks_per_node` tasks (one per GPU; on CPU the tasks are the run's
`resources.num_workers`); a study = one job array over the same expanded grid as the Ray sweep. A study with
stages (`run:<condition>`) gets an array for the runs that wait for no job, and for each run that needs a run
still to be trained a job with Slurm's own `--dependency=afterok:` on exactly the jobs it needs. Every task
runs `jobs.train.train_loop` with a `SlurmContext` (orchestrator.slurm_job), writing the same run directories
as the Ray path. Preemption / time limit: USR2 -> stop flag -> checkpoint at the next agreed update -> run
`preempted` -> submitit's `checkpoint()` and requeue -> resume from exactly that update.
A tuned study (`tune:`) is submitted by orchestrator.slurm_tune: trials sampled ahead, a selection job, then
the confirm runs, chained by Slurm dependencies.

What is submitted is the shared plan (orchestrator.plan), with the runs whose job is still queued left to
it. The study directory gets `slurm_jobs.json` (run -> job id, history of job ids) and `slurm/` (submitit's
scripts, pickles and logs). `--local` runs the same jobs on this machine with submitit's LocalExecutor.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from jobs.configdoc import add_print_config
from jobs.spec import RunSpec, SpecError
from jobs.study import StudySpec
from orchestrator.lock import StudyLocked, study_lock
from orchestrator.options import add_options, options_from_args
from orchestrator.plan import Action, Kind, Plan, load_config, make_plan, print_resolved
from orchestrator.slurm_options import SlurmError, SlurmOptions, layout, time_warnings
from orchestrator.slurm_queue import JOBS_FILE, SUBMITIT_DIR, live_jobs, read_jobs, recorded_jobs
from orchestrator.slurm_submit import submit, wait_for
from orchestrator.slurm_tune import is_tuned, submit_tuned
from rundir import EXIT_LOCKED, print_error, print_errors


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator slurm",
        description="Run a run spec or a study through Slurm with submitit (a job per run, a job array per study).",
    )
    p.add_argument("config", type=Path, help="run spec or study YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=10 seeds=[0,1]")
    p.add_argument("--as", dest="kind", choices=("run", "study"), default=None,
                   help="read CONFIG as a run spec or a study (default: a study when it has seeds/conditions/grid/"
                        "base/sweep)")
    add_options(p, SlurmOptions)
    add_print_config(p)
    return p


def plan_against_queue(kind: Kind, config: Path, runs: list[RunSpec], study: StudySpec | None, *,
                       opts: SlurmOptions, record: dict) -> Plan:
    """The shared plan, with the runs whose job is still in the queue left to it (a study submitted before is
    existing output too: without --resume it is refused like a run folder with output)."""
    plan = make_plan(kind, config, runs, study, resume=opts.resume,
                     live=live_jobs(record, opts.local) if opts.resume else None)
    if record.get("runs") and not opts.resume:
        plan.errors.append(f"{Path(runs[0].run_dir).parent} was already submitted ({len(recorded_jobs(record))} "
                           f"job(s) in {JOBS_FILE}); pass --resume to continue, or set another study/run_id")
    return plan


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    if args.print_config:
        return print_resolved(args.config, args.overrides, args.kind)
    opts, errors = options_from_args(SlurmOptions, args)
    if args.local and (args.nodes or 1) > 1:
        # checked here too, so that it is reported together with a bad value of another option
        errors += SlurmOptions(local=True, nodes=args.nodes).conflicts()
    if not args.local and shutil.which("sbatch") is None:
        errors.append("sbatch not found: this machine has no Slurm client; add --local to run the same jobs here "
                      "with submitit's LocalExecutor")
    try:
        kind, runs, study = load_config(args.config, args.overrides, kind=args.kind)
    except SpecError as exc:
        errors += exc.errors
        runs, kind, study = [], "run", None
    if opts is not None:
        for r in runs:
            try:
                layout(r, opts)
            except SlurmError as exc:
                if str(exc) not in errors:
                    errors.append(str(exc))
    if errors:
        return print_errors(f"cannot submit {args.config}", errors)
    assert opts is not None
    study_dir = runs[0].run_dir.parent
    try:
        with study_lock(study_dir):
            if is_tuned(study):
                return submit_tuned(study, opts)
            record = read_jobs(study_dir)
            plan = plan_against_queue(kind, args.config, runs, study, opts=opts, record=record)
            if plan.errors:
                return print_errors(f"cannot submit {args.config}", plan.errors)
            return _submit_plan(plan, record, opts)
    except StudyLocked as exc:
        print_error(str(exc))
        return EXIT_LOCKED
    except SlurmError as exc:
        print_error(str(exc))
        return 1


def _submit_plan(plan: Plan, record: dict, opts: SlurmOptions) -> int:
    study_dir = plan.study_dir
    if opts.resume and record.get("executor", "slurm") != ("local" if opts.local else "slurm"):
        print(f"warning: {study_dir} was submitted with the {record.get('executor')} executor; resuming with the "
              "other one", file=sys.stderr)
    plan.write_index()
    print(f"study {study_dir} ({len(plan.runs)} run(s))")
    if opts.resume:
        print(plan.summary())
    for line in plan.lines():
        print(f"  {line}")
    todo = plan.to_submit
    if not todo:
        print("nothing to submit: every run is finished, still queued or blocked")
        return 1 if plan.held else 0
    for line in time_warnings(opts):
        print(f"warning: {line}", file=sys.stderr)
    where = ("locally (submitit LocalExecutor)" if opts.local
             else f"to Slurm{f' partition {opts.partition}' if opts.partition else ''}")
    print(f"submitting {len(todo)} run(s) {where}:")
    live = recorded_jobs(record)
    queued = {p.run_id: live[p.run_id] for p in plan.runs if p.action is Action.QUEUED and p.run_id in live}
    jobs = submit(todo, study_dir, opts, deps=plan.deps, queued=queued)
    print(f"job ids in {study_dir / JOBS_FILE}; logs in {study_dir / SUBMITIT_DIR}")
    if not opts.wait:
        print(f"follow with: python -m orchestrator slurm-status {study_dir}")
        return 1 if plan.held else 0
    failed = wait_for(jobs, print, plan.deps)
    if failed:
        print(f"{failed} run(s) failed; fix the cause and rerun them with: python -m orchestrator slurm {plan.config} "
              f"--resume{' --local' if opts.local else ''}")
    return 1 if failed or plan.held else 0
