"""`run` and `sweep` on Ray: one TorchTrainer, or a Tune grid with one TorchTrainer per trial.

Layout of a study dir (DESIGN.md): `<output_root>/<study>/<run_id>/{spec.yaml, metrics.parquet,
checkpoints/, events.log, status.json}`, plus `runs.json` (what each run is), `.study.lock` while a
driver runs, and `.ray/` (Ray's own state: `tune/` experiment, `train/<run_id>/` pointer checkpoints)
unless `sweep.storage_path` puts Ray's state elsewhere (e.g. a cloud URI).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from .study import RunSpec, StudySpec, absolute_paths, study_lock

RAY_DIR = ".ray"
TUNE_NAME = "tune"
TABLE_COLUMNS = {"epoch": "epoch", "train_loss": "loss", "top1": "top1", "ema_top1": "ema_top1", "epoch_s": "epoch_s"}


def _last_line(exc: BaseException) -> str:
    """The exception's own message: Ray wraps it in tracebacks of every process it crossed."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[-1] if lines else repr(exc))[:400]


def tune_loggers() -> list:
    """Tune's CSV and JSON result files per trial, without its TensorBoard copy (cluster.QUIET_ENV turns
    the automatic loggers off): the runs log their own curves, per update, into their run folders."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [CSVLoggerCallback(), JsonLoggerCallback()]


def ray_root(study_dir: Path, storage_path: str | None) -> str:
    return storage_path.rstrip("/") if storage_path else str(Path(study_dir).resolve() / RAY_DIR)


def run_state(spec: RunSpec) -> tuple[str, int]:
    """(state, epochs done) from the run dir: 'new' when nothing was written yet."""
    from jobs.metrics import read_metrics, read_status

    status = read_status(spec.run_dir) or {}
    done = 0
    table = read_metrics(spec.run_dir)
    if table.num_rows:
        done = max(table.column("epoch").to_pylist())
    state = status.get("state", "new" if not done else "running")
    if state == "finished" and done < spec.train.epochs:
        state = "running"  # epochs raised since it finished: continue from its last checkpoint
    return state, done


def started_runs(runs: list[RunSpec]) -> list[str]:
    out = []
    for spec in runs:
        state, done = run_state(spec)
        if state != "new" or (Path(spec.run_dir) / "checkpoints").exists():
            out.append(f"{spec.run_id} ({state}, {done}/{spec.train.epochs} epochs)")
    return out


def concurrency(runs: list[RunSpec], shape) -> int:
    """Runs that fit side by side, each with its whole worker group (never a partial GPU set)."""
    cpu = max(r.resources.num_workers * r.resources.cpus_per_worker for r in runs)
    gpu = max(r.resources.num_workers * (r.resources.gpus_per_worker if r.resources.use_gpu else 0) for r in runs)
    fits = math.floor(shape.cpus / cpu) if cpu else len(runs)
    if gpu:
        fits = min(fits, math.floor(shape.gpus / gpu))
    return max(1, min(fits, len(runs)))


# ---------------------------------------------------------------------------------------------- run


def run_one(spec: RunSpec, session, *, max_failures: int, storage_path: str | None = None) -> int:
    """Train one run spec with a TorchTrainer on the connected Ray; 0 when it finished."""
    from .ray_engine import build_trainer

    spec = absolute_paths(spec)
    root = ray_root(Path(spec.run_dir).parent, storage_path)
    trainer = build_trainer(spec, storage_path=f"{root}/train", max_failures=max_failures)
    t0 = time.time()
    try:
        trainer.fit()
    except Exception as exc:  # TrainingFailedError and friends: one line, details in events.log
        print(f"error: run {spec.run_id} failed: {_last_line(exc)}", file=sys.stderr)
        print(f"  details: {Path(spec.run_dir) / 'events.log'}", file=sys.stderr)
        return 1
    state, done = run_state(spec)
    print(f"finished {spec.run_dir}: {done}/{spec.train.epochs} epochs ({state}) in {time.time() - t0:.0f} s")
    return 0 if state == "finished" else 1


# ---------------------------------------------------------------------------------------------- sweep


def trial_driver(config: dict, specs: dict[str, RunSpec], storage_path: str, max_failures: int) -> None:
    """One Tune trial: the run's TorchTrainer, or nothing when the run already finished."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from jobs.metrics import read_metrics

    from .ray_engine import build_trainer

    spec = specs[config["run_id"]]
    state, done = run_state(spec)
    if state == "finished":
        rows = read_metrics(spec.run_dir).to_pylist()
        last = max(rows, key=lambda r: r["epoch"]) if rows else {"epoch": done}
        tune.report({k: v for k, v in last.items() if isinstance(v, (int, float, str)) or v is None})
        return
    trainer = build_trainer(spec, storage_path=storage_path, max_failures=max_failures, callbacks=[TuneReportCallback()])
    trainer.fit()


def _trial_name(trial) -> str:
    """Tune's table and folders show the run id rather than a generated trial name."""
    return trial.config["run_id"]


def sweep(study: StudySpec, session, *, resume: bool, locked: bool = False) -> int:
    """Run every run of the study as a Tune trial; 0 when all finished. `locked`: the caller already
    holds the study lock (taken before Ray started)."""
    import contextlib

    from ray import tune

    from .cluster import quiet_env

    quiet_env()
    runs = [absolute_paths(r) for r in study.runs]
    study_dir = Path(runs[0].run_dir).parent
    root = ray_root(study_dir, study.sweep.storage_path)
    specs = {r.run_id: r for r in runs}
    k = concurrency(runs, session.shape)
    if study.sweep.max_concurrent_trials:
        k = min(k, study.sweep.max_concurrent_trials)
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, specs=specs, storage_path=f"{root}/train", max_failures=study.sweep.max_failures),
        session.driver_resources(),
    )
    with contextlib.nullcontext() if locked else study_lock(study_dir):
        study.write_index()
        if resume:
            # A fresh grid of the study as it is now rather than Tuner.restore: the run folders hold all
            # the state that matters (finished runs return at once, the others continue from their
            # checkpoints), and runs added to the study since (more seeds, a new condition) are included.
            states = [run_state(r)[0] for r in runs]
            print(f"resuming {study_dir}: {states.count('finished')} finished runs kept, "
                  f"{sum(s not in ('finished', 'new') for s in states)} continue from their checkpoints, "
                  f"{states.count('new')} new")
        reporter = tune.CLIReporter(
            metric_columns=TABLE_COLUMNS, parameter_columns=[],
            max_report_frequency=int(study.sweep.progress_every_s), print_intermediate_tables=False)
        tuner = tune.Tuner(
            trainable,
            param_space={"run_id": tune.grid_search(list(specs))},
            tune_config=tune.TuneConfig(max_concurrent_trials=k, reuse_actors=False,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(
                name=TUNE_NAME, storage_path=root, progress_reporter=reporter, verbose=1, callbacks=tune_loggers(),
                failure_config=tune.FailureConfig(max_failures=study.sweep.trial_max_failures),
            ),
        )
        print(f"study {study_dir}: {len(runs)} runs, up to {k} at once")
        grid = tuner.fit()
    return _summary(runs, grid)


def _summary(runs: list[RunSpec], grid: Any) -> int:
    failed = {}
    for result in grid:
        run_id = (result.config or {}).get("run_id")
        if result.error is not None and run_id:
            failed[run_id] = _last_line(result.error)
    bad = 0
    print(f"{'run':<40} {'state':<9} {'epochs':>7}  top1")
    for spec in runs:
        state, done = run_state(spec)
        from jobs.metrics import read_metrics

        rows = read_metrics(spec.run_dir).to_pylist()
        top1 = max(rows, key=lambda r: r["epoch"])["top1"] if rows else None
        print(f"{spec.run_id:<40} {state:<9} {done:>3}/{spec.train.epochs:<3}  {'' if top1 is None else f'{top1:.2f}'}")
        if state != "finished":
            bad += 1
            if spec.run_id in failed:
                print(f"  error: {failed[spec.run_id]}", file=sys.stderr)
    return 1 if bad else 0
