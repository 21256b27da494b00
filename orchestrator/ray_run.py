"""`run` and `sweep` on Ray: the shared plan submitted as one TorchTrainer, or a Tune grid with one trial per run
to train (a TorchTrainer per multi-worker run; a one-worker run trains inside its trial: orchestrator.ray_in_trial).

Layout of a study dir: `<output_root>/<study>/<run_id>/{spec.yaml, metrics.parquet, checkpoints/, events.log,
status.json}` (rundir), plus `runs.json`, `.study.lock` while a driver runs, and `.ray/` (Ray's own state:
`tune/` experiment, `train/<run_id>/` pointer checkpoints) unless `sweep.storage_path` puts Ray's state
elsewhere (e.g. a cloud URI).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

from jobs.spec import RunSpec, SpecError
from jobs.study import StudySpec, SweepOptions
from orchestrator.cluster import quiet_env, ray_session, resolve_address
from orchestrator.lock import StudyLocked, study_lock
from orchestrator.plan import Kind, Plan, current_states, load_config, make_plan
from orchestrator.ray_stop import DriverStop
from orchestrator.resources import ClusterShape, check_fits
from orchestrator.tune_domains import tuning_started
from rundir import (
    EVENTS_FILE,
    EXIT_LOCKED,
    EXIT_PREEMPTED,
    State,
    error_line,
    print_error,
    print_errors,
    read_metrics,
    run_state,
    write_status,
)

RAY_DIR = ".ray"
TUNE_NAME = "tune"
TABLE_COLUMNS = {"epoch": "epoch", "train_loss": "loss", "top1": "top1", "ema_top1": "ema_top1", "epoch_s": "epoch_s"}


def ray_root(study_dir: Path, storage_path: str | None) -> str:
    return storage_path.rstrip("/") if storage_path else str(Path(study_dir).resolve() / RAY_DIR)


def concurrency(runs: list[RunSpec], shape) -> int:
    """Runs that fit side by side, each with its whole worker group (never a partial GPU set)."""
    cpu = max(r.resources.num_workers * r.resources.cpus_per_worker for r in runs)
    gpu = max(r.resources.num_workers * (r.resources.gpus_per_worker if r.resources.use_gpu else 0) for r in runs)
    fits = math.floor(shape.cpus / cpu) if cpu else len(runs)
    if gpu:
        fits = min(fits, math.floor(shape.gpus / gpu))
    return max(1, min(fits, len(runs)))


def tune_loggers() -> list:
    """Tune's CSV and JSON result files per trial, without its TensorBoard copy (cluster.QUIET_ENV turns
    the automatic loggers off): the runs log their own curves, per update, into their run folders."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [CSVLoggerCallback(), JsonLoggerCallback()]


def plan_without_queue(kind: Kind, config: Path, runs: list[RunSpec], study: StudySpec | None, *, resume: bool) -> Plan:
    """Ray keeps no queue of its own between drivers (the study lock excludes a second one): the shared plan."""
    plan = make_plan(kind, config, runs, study, resume=resume)
    if study is not None and study.axes.tune is not None and not resume:
        plan.errors += [e for e in [tuning_started(plan.study_dir)] if e]
    return plan


def run_config(config: Path, overrides: list[str], kind: Kind, *, address: str | None, resume: bool,
               options: SweepOptions | None = None, dashboard: bool = True,
               entry: str | None = None) -> tuple[int, Path | None]:
    """Validate, lock the study, plan, then (only then) start or join Ray and submit the plan. `entry`: the
    function the runs' processes train with (module:function), jobs.train's loop unless a test substitutes one.
    Returns (exit code, study dir or None when nothing was planned)."""
    embedded = resolve_address(address) is None
    what = "run spec" if kind == "run" else "study"
    try:
        kind, runs, study = load_config(config, overrides, kind=kind,
                                        cluster=ClusterShape.this_machine() if embedded else None)
    except SpecError as exc:
        return print_errors(f"{config} is not a valid {what}", exc.errors), None
    errors = check_fits(runs, ClusterShape.this_machine()) if embedded and kind == "run" else []
    if errors:
        return print_errors(f"{config} cannot run", errors), None
    options = options or (study.sweep if study is not None else SweepOptions())
    study_dir = Path(runs[0].run_dir).parent
    try:
        with study_lock(study_dir):
            plan = plan_without_queue(kind, config, runs, study, resume=resume)
            if plan.errors:
                return print_errors(f"{config} cannot start", plan.errors), study_dir
            print(f"live curves: tensorboard --logdir {study_dir.resolve()}", flush=True)
            with ray_session(address, dashboard=dashboard) as session:
                errors = [] if embedded else check_fits(runs, session.shape)
                if errors:
                    return print_errors(f"{config} does not fit the cluster", errors), study_dir
                return submit_plan(plan, session, options, entry), study_dir
    except StudyLocked as exc:
        print_error(str(exc))
        return EXIT_LOCKED, study_dir


def submit_plan(plan: Plan, session, options: SweepOptions, entry: str | None = None) -> int:
    """Train what the plan says (the caller holds the study lock); 0 when every run is finished."""
    quiet_env()
    if plan.study is not None and plan.study.axes.tune is not None:
        from orchestrator.tune_study import RayPlace, tune_then_plan

        place = RayPlace(session, ray_root(plan.study_dir, options.storage_path),
                         lambda runs: concurrency(runs, session.shape), tune_loggers())
        plan = tune_then_plan(plan, place, options)  # the tuning stage; the plan of the winners' confirm runs
    plan.write_index()
    if plan.resume:
        print(plan.summary())
    for line in plan.lines():
        print(f"  {line}")
    todo = plan.to_submit
    stop = DriverStop(r.run_dir for r in todo)
    if todo:
        if plan.kind == "run":
            stop.run(lambda: _fit_one(todo[0], plan.study_dir, options, entry))
        else:
            stop.run(lambda: _fit_grid(todo, plan, session, options, entry, stopping=stop.requested))
    code = _summary(plan)
    if stop.requested() and code:
        print(f"stopped on request ({stop.request.signal_name}): the unfinished runs continue from where they "
              f"stopped with the same command and --resume", file=sys.stderr)
        return EXIT_PREEMPTED
    return code


def _fit_one(spec: RunSpec, study_dir: Path, options: SweepOptions, entry: str | None = None) -> None:
    from orchestrator.ray_engine import TRAIN_ENTRY, build_trainer, trainer_job

    trainer = build_trainer(trainer_job(spec, entry or TRAIN_ENTRY), storage_path=f"{ray_root(study_dir, options.storage_path)}/train",
                            max_failures=options.max_failures)
    t0 = time.time()
    try:
        trainer.fit()
    except Exception as exc:  # TrainingFailedError and friends: one line, details in events.log
        print_error(f"run {spec.run_id} failed: {error_line(str(exc))}")
        _record_failure(spec, str(exc))  # e.g. a worker ended by a SIGTERM, before the loop could say so
        print(f"  details: {Path(spec.run_dir) / EVENTS_FILE}", file=sys.stderr)
        return
    print(f"{spec.run_dir}: {run_state(spec.run_dir, spec.train.epochs).describe()} in {time.time() - t0:.0f} s")


def tune_max_failures(options: SweepOptions, jobs: dict[str, dict[str, Any]]) -> int:
    """Tune's retries per trial. A run trained inside its trial has no worker group to restart, so its trial
    gets the run's worker restarts as well (Tune's FailureConfig is one number for every trial of a study)."""
    if not any(job["in_trial"] for job in jobs.values()):
        return options.trial_max_failures
    return -1 if options.max_failures == -1 else options.max_failures + options.trial_max_failures


def _trial_name(trial) -> str:
    """Tune's table and folders show the run id rather than a generated trial name."""
    return trial.config["run_id"]


def _stage_graph(plan: Plan | Path) -> tuple[Path, dict, dict, list[str]]:
    """Study dir, dependencies, stage numbers and already finished runs; a bare study dir (benchmarks) has no stages."""
    if isinstance(plan, Plan):
        return plan.study_dir, plan.deps, plan.stages, [p.run_id for p in plan.runs if p.state.finished]
    return Path(plan), {}, {}, []


def _fit_grid(todo: list[RunSpec], plan: Plan | Path, session, options: SweepOptions, entry: str | None = None,
              trial=None, stopping: Callable[[], bool] | None = None) -> None:
    """One Tune trial per run to train, each suggested by the StageSearcher once the runs it needs have finished.
    A fresh experiment each time rather than Tuner.restore: the run folders hold all the state that matters, and
    runs added to the study since are included. `plan`: the plan (its stage graph), or just the study dir when the
    runs need no other run. `entry` (module:function run on the workers) is the training loop and `trial` (the
    function of each Tune trial) is `trial_driver`, unless a test or a benchmark substitutes its own. `stopping`:
    true once the driver was asked to stop (orchestrator.ray_stop): no further trial starts."""
    from ray import tune

    from orchestrator.ray_engine import TRAIN_ENTRY, trainer_job
    from orchestrator.ray_progress import StudyReporter
    from orchestrator.ray_stages import StageSearcher
    from orchestrator.ray_trial import TrialResources, trial_driver

    study_dir, deps, stages, finished = _stage_graph(plan)
    root = ray_root(study_dir, options.storage_path)
    run_specs = {r.run_id: r for r in todo}
    specs = {r.run_id: trainer_job(r, entry or TRAIN_ENTRY,
                                   in_trial=options.one_worker_in_trial and r.resources.num_workers == 1) for r in todo}
    searcher = StageSearcher(
        sorted(specs, key=lambda r: stages.get(r, 0)), deps,
        finished=finished,
        is_finished=lambda r: run_state(run_specs[r].run_dir, run_specs[r].train.epochs).finished,
        stopping=stopping)
    k = concurrency(todo, session.shape)
    if options.max_concurrent_trials:
        k = min(k, options.max_concurrent_trials)
    trainable = tune.with_resources(
        tune.with_parameters(trial or trial_driver, jobs=specs, storage_path=f"{root}/train",
                             max_failures=options.max_failures),
        TrialResources(specs, session.driver_resources()),
    )
    reporter = StudyReporter({r.run_id: r.condition_label for r in todo}, metric_columns=TABLE_COLUMNS,
                             parameter_columns=[], max_report_frequency=int(options.progress_every_s),
                             print_intermediate_tables=False)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=len(specs), max_concurrent_trials=k,
                                    reuse_actors=False,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(name=TUNE_NAME, storage_path=root, progress_reporter=reporter, verbose=1,
                                  callbacks=tune_loggers(),
                                  failure_config=tune.FailureConfig(max_failures=tune_max_failures(options, specs))),
    )
    n_stages = 1 + max((stages.get(r, 0) for r in specs), default=0)
    print(f"study {study_dir}: {len(todo)} runs to train in {n_stages} stage(s), up to {k} at once")
    grid = tuner.fit()
    for result in grid:
        run_id = (result.config or {}).get("run_id")
        if result.error is not None and run_id:
            print_error(f"run {run_id}: {error_line(str(result.error))}")
            _record_failure(run_specs[run_id], str(result.error))


def _record_failure(spec: RunSpec, error: str) -> None:
    """A trial that failed for good (e.g. its workers were killed before the loop could say so) is recorded as
    failed, so every reader of the folder (a resume, `analysis status`, later stages) knows it will not finish."""
    state = run_state(spec.run_dir, spec.train.epochs)
    if state.started and state.state is State.UNFINISHED:
        write_status(spec.run_dir, "failed", state.epochs_done, spec.train.epochs, f"trial failed: {error_line(error)}")


def _summary(plan: Plan) -> int:
    """One line per run as its folder now says; 1 unless every run is finished."""
    bad = 0
    print(f"{'run':<40} {'state':<10} {'epochs':>7}  top1")
    states = current_states(plan)
    for p in plan.runs:
        spec = p.spec
        state = states[p.run_id]
        rows = read_metrics(spec.run_dir).to_pylist() if state.state.value != "blocked" else []
        top1: Any = max(rows, key=lambda r: r["epoch"])["top1"] if rows else None
        shown = "blocked" if state.blocked_by else state.state.value
        print(f"{spec.run_id:<40} {shown:<10} {state.epochs_done:>3}/{spec.train.epochs:<3}  "
              f"{'' if top1 is None else f'{top1:.2f}'}")
        if not state.finished:
            bad += 1
            if state.reason or state.blocked_by:
                print(f"  {spec.run_id}: {state.describe()}", file=sys.stderr)
    return 1 if bad else 0
