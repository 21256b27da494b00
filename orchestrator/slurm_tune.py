"""A tuned study (`tune:`, jobs.tune_space) on Slurm: the search sampled ahead, then Slurm chains the stages.

1. Sampled ahead: each condition's trial configs come from Tune's own BasicVariantGenerator seeded with
   `tune.seed`, the searcher the Ray path uses for `search: random`, asked for its trials up front. So the same
   seed gives the same configs, in the same trial order (tuning/<cond>-tNNN), on both engines.
2. One job array of the trials (every condition), each trial a plain run folder scored on the held-out slice.
3. A selection job, `--dependency=afterany` on the trials: picks each condition's winner (the finished trial
   with the best last-reported metric) and writes tuning/tuning.json (orchestrator.slurm_tune_job).
4. The confirm array, `--dependency=afterok` on the selection: each task reads its condition's winner from
   tuning.json when it starts. Run ids as on Ray: `<condition>-s<seed>` (ablation `tuned: true` and the
   winner's values); the base-recipe runs (`confirm.untuned`, `<condition>-untuned-s<seed>`) need no winner
   and start at once.

slurm_jobs.json names each job by its folder in the study: `tuning/<condition>-tNNN`, `tuning/select`, the
confirm runs by their run id; `slurm-status` lists them all. `--resume` of a tuned study is refused (said
plainly); `--local` runs the stages one after the other on this machine.

Nothing on the login node waits between the stages. What Tune does and Slurm cannot (early stopping, adaptive
search) is printed before anything is submitted.
"""
from __future__ import annotations

from typing import Any, Callable

from jobs.spec import RunSpec
from jobs.study import StudySpec
from jobs.study_expand import with_values
from jobs.tune_space import TuneBlock, trial_spec
from orchestrator.slurm_options import Layout, SlurmError, SlurmOptions
from orchestrator.slurm_queue import JOBS_FILE, SUBMITIT_DIR, read_jobs, write_jobs
from orchestrator.slurm_submit import depend, make_executor, submit_arrays, wait_for
from orchestrator.tune_domains import param_space
from rundir import write_index

SELECT_LAYOUT = Layout(nodes=1, tasks_per_node=1, gpus_per_node=0, cpus_per_task=1)
SELECT_KEY = "tuning/select"  # the selection job's entry in slurm_jobs.json


def _trainable(config: dict) -> None:
    """Tune's Experiment needs a trainable to be built; only its searcher is asked for configs, nothing runs."""


def sample_ahead(block: TuneBlock) -> list[dict[str, Any]]:
    """Every trial config of one condition, in Tune's trial order: `trials` samples x the grid values."""
    from ray.tune.experiment import Experiment
    from ray.tune.search import BasicVariantGenerator

    searcher = BasicVariantGenerator(random_state=block.seed)
    searcher.add_configurations([Experiment("sample-ahead", _trainable, config=param_space(block),
                                            num_samples=block.trials)])
    configs = []
    while (trial := searcher.next_trial()) is not None:
        configs.append(dict(trial.config))
    return configs


def limits(block: TuneBlock) -> list[str]:
    """What this study asks of Tune that Slurm does not do, one plain line each."""
    lines = []
    if block.scheduler.name != "none":
        lines.append(f"no early stopping on Slurm (tune.scheduler {block.scheduler.name}): every trial runs all "
                     f"its epochs, so tuning costs the full trials x epochs budget")
    if block.search != "random":
        lines.append(f"no adaptive search on Slurm (tune.search {block.search}): the trials are sampled ahead at "
                     f"random (seed {block.seed}), none learns from the results of the others")
    if block.max_concurrent:
        lines.append(f"tune.max_concurrent {block.max_concurrent} is not applied: --array-parallelism limits the "
                     "trials running at once")
    return lines


def confirm_runs(runs: list[RunSpec], block: TuneBlock) -> tuple[list[RunSpec], list[RunSpec]]:
    """(tuned, untuned) confirm runs of the study's runs (each condition's base recipe per confirm seed); the tuned
    ones get their winner's values when their job starts."""
    tuned = [with_values(r, {}, ablation={"tuned": True}) for r in runs]
    untuned = [with_values(r, {}, run_id=f"{r.condition}-untuned-s{r.seed}", ablation={"tuned": False})
               for r in runs] if block.confirm.untuned else []
    return tuned, untuned


def trial_runs(runs: list[RunSpec], block: TuneBlock) -> dict[str, list[RunSpec]]:
    """condition -> its trials' run specs (tuning/<cond>-tNNN), every condition with the same sampled configs."""
    configs = sample_ahead(block)
    firsts: dict[str, RunSpec] = {}
    for r in runs:
        firsts.setdefault(r.condition, r)
    return {cond: [trial_spec(r, block, cfg, i, with_values) for i, cfg in enumerate(configs)]
            for cond, r in firsts.items()}


def submit_tuned(study: StudySpec, opts: SlurmOptions, log: Callable[[str], None] = print) -> int:
    """Submit the three stages of a tuned study (the caller holds the study lock)."""
    # The job side imports torch: only once a tuned study is really submitted.
    from orchestrator.slurm_tune_job import ConfirmRun, SelectWinners
    from orchestrator.tune_study import summary_path

    block = study.axes.tune
    study_dir = study.study_dir
    if opts.resume:
        raise SlurmError(f"{study_dir}: --resume of a tuned study is not supported on Slurm; submit it again under "
                         "another `study:` name, or run it with `python -m orchestrator sweep CONFIG --resume`")
    if read_jobs(study_dir).get("runs"):
        raise SlurmError(f"{study_dir} was already submitted ({JOBS_FILE}); set another study name")
    for line in limits(block):
        log(f"warning: {line}")
    trials = trial_runs(study.runs, block)
    tuned, untuned = confirm_runs(study.runs, block)
    write_index(study_dir, {r.run_id: {"condition": r.condition, "ablation": r.ablation, "seed": r.seed, "needs": []}
                            for r in tuned + untuned})
    every = [t for ts in trials.values() for t in ts]
    log(f"study {study_dir}: {len(trials)} condition(s) x {len(every) // max(len(trials), 1)} trial(s) of "
        f"{every[0].train.epochs} epoch(s), then {len(tuned)} confirm run(s)"
        + (f" and {len(untuned)} untuned" if untuned else ""))
    log("submitting the tuning trials:")
    jobs = submit_arrays(every, study_dir, opts, log)
    if untuned:
        log("submitting the untuned runs (the base recipe):")
        jobs += submit_arrays(untuned, study_dir, opts, log)
    select = SelectWinners(str(study_dir), block.model_dump(mode="json"),
                           {c: [t.model_dump(mode="json") for t in ts] for c, ts in trials.items()})
    ex = make_executor(study_dir / SUBMITIT_DIR, opts, SELECT_LAYOUT, name=f"{study.name}-select")
    if opts.local:
        for _, job in jobs:  # no dependencies locally: the selection runs once the trials have ended
            job.wait()
    else:
        depend(ex, "afterany", [str(job.job_id) for _, job in jobs[:len(every)]])
    select_job = ex.submit(select)
    record = read_jobs(study_dir)
    record["runs"][SELECT_KEY] = {"job_id": str(select_job.job_id), "history": [str(select_job.job_id)]}
    write_jobs(study_dir, record)
    log(f"  selection: job {select_job.job_id}, writes {summary_path(study_dir)}"
        + ("" if opts.local else f", after the {len(every)} trial job(s)"))
    if opts.local:
        select_job.wait()
    log("submitting the confirm runs (each reads its winner when it starts):")
    jobs += submit_arrays(tuned, study_dir, opts, log, after=[str(select_job.job_id)], job_for=ConfirmRun)
    log(f"job ids in {study_dir / JOBS_FILE}; logs in {study_dir / SUBMITIT_DIR}")
    if not opts.wait:
        log(f"follow with: python -m orchestrator slurm-status {study_dir}")
        return 0
    failed = wait_for(jobs, log)
    try:
        select_job.results()
    except Exception as exc:  # submitit's FailedJobError carries the selection's traceback
        log(f"  selection FAILED (job {select_job.job_id}): {str(exc).strip().splitlines()[-1]}")
        failed += 1
    return 1 if failed else 0


def is_tuned(study: StudySpec | None) -> bool:
    return study is not None and study.axes.tune is not None

