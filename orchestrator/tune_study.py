"""A tuned study on Ray Tune: per condition one Tune experiment (the same space, budget, searcher and scheduler for
every condition), scored on a held-out slice of train; then the confirm runs, each condition's winner on the
confirm seeds at full length, scored on val, submitted as the study's runs through the ordinary plan.

On disk (`<output_root>/<study>/`; README, "Tuned studies"):

    tuning/<condition>-tNNN/   one run folder per trial (rundir layout; NNN: Tune's trial index in its condition);
                               a trial ASHA stopped records status `stopped` at its last epoch
    tuning/tuning.json         the summary: per condition the winner and every trial (params, metric, stopped early,
                               epochs and images computed), rewritten after each condition
    .ray/tune-<condition>/     Tune's experiment of that condition: `--resume` restores it (searcher and scheduler
                               state, finished and stopped trials kept) with Tuner.restore; asha-state.pkl holds
                               ASHA's rungs and decisions, which Tune does not restore (orchestrator.tune_asha)
    <condition>-s<seed>/       the confirm runs (and <condition>-untuned-s<seed> with confirm.untuned)

A trial restarted by a restore first replays the rows its folder already holds, so the scheduler sees every epoch
once (its recorded rungs and decisions are kept: orchestrator.tune_asha; a rung it missed before the kill is decided
on the same values), then the loop continues from the folder's newest checkpoint.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.study import SweepOptions
from jobs.study_expand import with_values
from jobs.tune_space import TRIALS_FOLDER, TuneBlock, trial_spec
from orchestrator.plan import Plan, make_plan
from orchestrator.ray_engine import TRAIN_ENTRY, trainer_job
from orchestrator.tune_domains import param_space
from rundir import print_error, read_metrics, run_state

SUMMARY_FILE = "tuning.json"
EXPERIMENT_PREFIX = "tune-"


@dataclass(frozen=True)
class RayPlace:
    """What the tuning stage takes from the sweep driver (orchestrator.ray_run): its Ray session, the folder of Ray's
    state, how many runs fit side by side, Tune's result loggers."""

    session: Any
    root: str
    fits: Callable[[list], int]
    callbacks: list


def trial_index(trial_id: str) -> int:
    """Tune's trial ids end in a per-experiment counter (`<uuid>_00003`); kept across a restore."""
    return int(trial_id.rsplit("_", 1)[-1])


def summary_path(study_dir: Path) -> Path:
    return Path(study_dir) / TRIALS_FOLDER / SUMMARY_FILE


# ---------------------------------------------------------------------------------------------- the trial


def tune_trial(config: dict, confirm: dict, block: dict, max_failures: int, storage_path: str) -> None:
    """One tuning trial (in its Tune trial process): the trial's run spec from the sampled `config`, rows already in
    its folder replayed to the scheduler, then trained (orchestrator.ray_trial.trial_driver) unless finished."""
    from ray import tune

    from jobs.spec import RunSpec
    from orchestrator.ray_trial import trial_driver

    tune_block = TuneBlock.model_validate(block)
    index = trial_index(tune.get_context().get_trial_id())
    spec = trial_spec(RunSpec.model_validate(confirm), tune_block, dict(config), index, with_values)
    job = trainer_job(spec, TRAIN_ENTRY, in_trial=spec.resources.num_workers == 1)
    state = run_state(spec.run_dir, spec.train.epochs)
    if state.started:
        from orchestrator.ray_in_trial import replay_rows

        if not replay_rows(spec, read_metrics(spec.run_dir).to_pylist()) or state.finished:
            return
    trial_driver({"run_id": spec.run_id}, {spec.run_id: job}, storage_path, max_failures)


# ---------------------------------------------------------------------------------------------- one condition


def _searcher(block: TuneBlock, k: int):
    """The seeded searcher, `k` trials at once (Tune applies max_concurrent_trials to a Searcher itself, but
    silently not to BasicVariantGenerator, which takes its own limit)."""
    if block.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=block.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=block.seed, max_concurrent=k)


SCHEDULER_STATE = "asha-state.pkl"


def _scheduler(block: TuneBlock, epochs: int, experiment_dir: str):
    if block.scheduler.name == "none":
        return None
    from orchestrator.tune_asha import RestorableASHA

    # Time in epochs (the loop's own counter): a trial restarted by a restore continues its count. A trial that
    # reaches max_t ends by itself (stop_last_trials=False), so its loop records the run as finished.
    return RestorableASHA(f"{experiment_dir}/{SCHEDULER_STATE}", time_attr="epoch", max_t=epochs,
                          grace_period=block.scheduler.grace_period,
                          reduction_factor=block.scheduler.reduction_factor, stop_last_trials=False)


def tune_condition(confirm, block: TuneBlock, place: RayPlace, options: SweepOptions, *, resume: bool):
    """Run (or with `resume` restore and finish) the Tune experiment of `confirm`'s condition; its ResultGrid."""
    from ray import tune

    name = f"{EXPERIMENT_PREFIX}{confirm.condition}"
    root = place.root
    first = trial_spec(confirm, block, block.extremes()[0], 0, with_values)
    r = first.resources
    # a one-worker trial trains itself (its worker's resources); a bigger one starts a TorchTrainer (a driver token)
    per_trial = dict(trainer_job(first)["resources_per_worker"]) if r.num_workers == 1 else place.session.driver_resources()
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, confirm=confirm.model_dump(mode="json"), block=block.model_dump(mode="json"),
                             max_failures=options.max_failures, storage_path=f"{root}/train"),
        tune.PlacementGroupFactory([per_trial]))
    path = f"{root}/{name}"
    if resume and tune.Tuner.can_restore(path):
        print(f"condition {confirm.condition}: restoring its tuning experiment {path}")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        return tuner.fit()
    Path(path, SCHEDULER_STATE).unlink(missing_ok=True)  # a fresh experiment decides from scratch
    k = place.fits([first] * (block.trials * _grid_size(block)))
    k = min(k, block.max_concurrent or k, options.max_concurrent_trials or k)
    epochs = first.train.epochs
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(block),
        tune_config=tune.TuneConfig(
            metric=block.metric, mode=block.mode, search_alg=_searcher(block, k),
            scheduler=_scheduler(block, epochs, path),
            num_samples=block.trials, max_concurrent_trials=k if block.search == "optuna" else None, reuse_actors=False,
            trial_name_creator=lambda t: f"{confirm.condition}-t{trial_index(t.trial_id):03d}",
            trial_dirname_creator=lambda t: f"{confirm.condition}-t{trial_index(t.trial_id):03d}"),
        run_config=tune.RunConfig(
            name=name, storage_path=root, verbose=1, callbacks=place.callbacks,
            progress_reporter=tune.CLIReporter(metric_columns=["epoch", block.metric], parameter_columns=list(block.space),
                                               max_report_frequency=int(options.progress_every_s)),
            failure_config=tune.FailureConfig(max_failures=options.max_failures + options.trial_max_failures)),
    )
    print(f"condition {confirm.condition}: tuning {block.trials} trial(s) x {_grid_size(block)} grid point(s) of up "
          f"to {epochs} epochs, up to {k} at once")
    return tuner.fit()


def _grid_size(block: TuneBlock) -> int:
    return math.prod(len(a) for name, a in (block.distribution(k) for k in block.space) if name == "grid")


# ---------------------------------------------------------------------------------------------- the summary


def images_per_epoch(spec) -> int:
    """Training images one epoch of `spec` computes (held-out samples excluded; full batches only, as trained)."""
    from data.holdout import holdout_split, sample_labels
    from data.order import train_order

    d = spec.data
    if d.holdout is not None:
        n = len(holdout_split(d.train_path, d.backend, d.holdout)[0])
    else:
        n = len(sample_labels(d.train_path, d.backend))
    world = spec.resources.num_workers
    per_rank = len(train_order(n, seed=0, epoch=0, rank=0, world_size=world, aug_repeats=d.aug_repeats,
                               selected_round=d.ra_selected_round))
    batch = spec.train.batch_size
    return per_rank // batch * batch * world


def condition_summary(results, confirm, block: TuneBlock) -> dict[str, Any]:
    """The winner and one entry per trial of a condition's ResultGrid (tuning.json's `conditions.<name>`)."""
    trials = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id")
        index = int(Path(result.path).name.rsplit("-t", 1)[-1])  # trial_dirname_creator's <condition>-tNNN
        spec = trial_spec(confirm, block, dict(result.config), index, with_values)
        done = int(metrics.get("epoch") or 0)
        status = "error" if result.error is not None else ("finished" if done >= spec.train.epochs else "stopped")
        rows = read_metrics(spec.run_dir).to_pylist() if (Path(spec.run_dir) / "metrics.parquet").exists() else []
        seen = [r[block.metric] for r in rows if r["epoch"] <= done and r.get(block.metric) is not None]
        per_epoch = images_per_epoch(spec)
        trials.append({"run_id": spec.run_id, "trial_id": trial_id, "params": dict(result.config), "status": status,
                       "metric": metrics.get(block.metric),
                       "best_metric": (max if block.mode == "max" else min)(seen) if seen else None,
                       "epochs_done": done, "epochs": spec.train.epochs, "images_per_epoch": per_epoch,
                       "images": done * per_epoch})
    trials.sort(key=lambda t: t["run_id"])
    scored = [t for t in trials if t["metric"] is not None and t["status"] != "error"]
    sign = -1 if block.mode == "max" else 1
    best = min(scored, key=lambda t: (sign * t["metric"], t["run_id"])) if scored else None
    return {"done": True, "best": best["params"] if best else None, "best_trial": best["run_id"] if best else None,
            "best_metric": best["metric"] if best else None, "trials": trials}


def _interrupted(results, block: TuneBlock) -> bool:
    """Tune returned before every trial ended: trials missing, or one that neither reported nor failed."""
    if len(results) < block.trials * _grid_size(block):
        return True
    return any(r.error is None and not (r.metrics or {}).get("epoch") for r in results)


def write_summary(study_dir: Path, block: TuneBlock, conditions: dict[str, Any]) -> Path:
    path = summary_path(study_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"metric": block.metric, "mode": block.mode, "search": block.search, "scheduler": block.scheduler.name,
            "trials": block.trials, "epochs": block.epochs, "seed": block.seed,
            "holdout": None if block.tune_on_val else block.holdout.model_dump(), "tune_on_val": block.tune_on_val,
            "conditions": conditions}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------- the stages


def confirm_runs(plan: Plan, winners: dict[str, dict[str, Any] | None], untuned: bool) -> list:
    """The study's runs with each condition's winning values (ablation: `tuned: true` and the values), plus with
    `untuned` the same runs on the base recipe (`<condition>-untuned-s<seed>`, ablation `tuned: false`)."""
    out = []
    for p in plan.runs:
        spec, best = p.spec, winners.get(p.spec.condition)
        if best is not None:
            out.append(with_values(spec, best, ablation={"tuned": True, **best}))
        if untuned:
            out.append(with_values(spec, {}, run_id=f"{spec.condition}-untuned-s{spec.seed}",
                                   ablation={"tuned": False}))
    return out


def tune_then_plan(plan: Plan, place: RayPlace, options: SweepOptions) -> Plan:
    """The tuning stage of a tuned study (each condition's experiment run or restored), then the plan of its
    confirm runs with the winners. A condition whose trials all failed has no confirm runs (said here)."""
    study = plan.study
    block = study.axes.tune
    firsts: dict[str, Any] = {}
    for p in plan.runs:
        firsts.setdefault(p.spec.condition, p.spec)
    if block.tune_on_val:
        print_error("tune.tune_on_val: the trials are scored on the val set; the confirm numbers are biased "
                    "(the report says so)")
    conditions: dict[str, Any] = {}
    for cond, confirm in firsts.items():
        results = tune_condition(confirm, block, place, options, resume=plan.resume)
        if _interrupted(results, block):  # Tune stops gracefully on Ctrl-C / SIGTERM and returns what it has
            raise KeyboardInterrupt(f"tuning of condition {cond} interrupted")
        conditions[cond] = condition_summary(results, confirm, block)
        write_summary(plan.study_dir, block, conditions)
        best = conditions[cond]
        if best["best"] is None:
            print_error(f"condition {cond}: no trial reported {block.metric}; it has no confirm runs")
        else:
            stopped = sum(t["status"] == "stopped" for t in best["trials"])
            print(f"condition {cond}: best {best['best_trial']} {block.metric}={best['best_metric']:.2f} "
                  f"{best['best']} ({len(best['trials'])} trials, {stopped} stopped early)")
    runs = confirm_runs(plan, {c: s["best"] for c, s in conditions.items()}, block.confirm.untuned)
    confirmed = study.model_copy(update={"runs": runs})
    return make_plan(plan.kind, plan.config, runs, confirmed, resume=True)
