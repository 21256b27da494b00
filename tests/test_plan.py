"""One submission plan for both engines: the same inputs give the same plan on Ray and on Slurm (no engine is
started: each engine's planner is asked what it would submit)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from harness import write_config  # noqa: E402

from jobs.study import study_kind  # noqa: E402
from orchestrator import ray_run, slurm  # noqa: E402
from orchestrator.plan import Action, load_config, resolve_paths  # noqa: E402
from orchestrator.slurm_options import SlurmOptions  # noqa: E402
from orchestrator.slurm_queue import read_jobs  # noqa: E402
from rundir import CHECKPOINT_DIR, METRICS_COLUMNS, STATUS_FILE, State, append_row, write_status  # noqa: E402

ENGINES = ("ray", "slurm")
SEEDS = [0, 1, 2, 3, 4, 5]


def plan_for(engine: str, config: Path, overrides: list[str], *, resume: bool):
    """What `sweep`/`run` (ray) or `slurm` would do with this config now."""
    kind, runs, study = load_config(config, overrides)
    if engine == "ray":
        return ray_run.plan_without_queue(kind, config, runs, study, resume=resume)
    return slurm.plan_against_queue(kind, config, runs, study, opts=SlurmOptions(resume=resume),
                           record=read_jobs(runs[0].run_dir.parent))


def _epochs(run_dir: Path, done: int, total: int, state: str, error: str | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for e in range(1, done + 1):
        append_row(run_dir, {**{c: None for c in METRICS_COLUMNS}, "epoch": e, "epochs_total": total,
                             "model": "m", "seed": 0, "top1": 10.0})
    (run_dir / CHECKPOINT_DIR).mkdir(exist_ok=True)
    write_status(run_dir, state, done, total, error)


@pytest.fixture
def study(tmp_path, demo_data):
    """A study of six seeds whose folders are in every state a run can be in (2 epochs asked for)."""
    cfg = write_config(tmp_path / "study.yaml", demo_data.root, tmp_path / "runs", "pl", epochs=2, seeds=SEEDS)
    root = tmp_path / "runs" / "pl"
    _epochs(root / "baseline-s0", 2, 2, "finished")                    # finished
    _epochs(root / "baseline-s1", 1, 2, "running")                     # killed mid-run
    _epochs(root / "baseline-s2", 1, 2, "failed", "RuntimeError: boom")  # failed
    (root / "baseline-s3").mkdir()
    (root / "baseline-s3" / STATUS_FILE).write_text("{not json")      # blocked
    _epochs(root / "baseline-s4", 1, 1, "finished")                    # finished with 1 epoch; 2 are asked now
    # baseline-s5: added to the study since (no folder)
    return cfg


EXPECTED = {"baseline-s0": Action.KEEP, "baseline-s1": Action.CONTINUE, "baseline-s2": Action.CONTINUE,
            "baseline-s3": Action.HOLD, "baseline-s4": Action.CONTINUE, "baseline-s5": Action.START}


@pytest.mark.parametrize("engine", ENGINES)
def test_resume_plan_is_the_same_on_both_engines(study, engine):
    plan = plan_for(engine, study, [], resume=True)
    assert not plan.errors
    assert {p.run_id: p.action for p in plan.runs} == EXPECTED
    assert [s.run_id for s in plan.to_submit] == ["baseline-s1", "baseline-s2", "baseline-s4", "baseline-s5"]
    assert plan.summary().endswith("1 finished runs kept, 3 continue from their checkpoints, 1 new, 1 blocked")
    held, = plan.held
    assert held.state.state is State.BLOCKED and "status.json unreadable" in held.line()
    failed = next(p for p in plan.runs if p.run_id == "baseline-s2")
    assert "failed at 1/2 epochs: RuntimeError: boom" in failed.line()


def test_both_engines_give_identical_plans(study):
    ray_plan, slurm_plan = (plan_for(e, study, [], resume=True) for e in ENGINES)
    assert ray_plan.lines() == slurm_plan.lines() and ray_plan.summary() == slurm_plan.summary()


@pytest.mark.parametrize("engine", ENGINES)
def test_raised_epochs_make_a_finished_run_unfinished(study, engine):
    """train.epochs raised after a run finished: it continues from its last checkpoint (not kept, not restarted)."""
    plan = plan_for(engine, study, ["train.epochs=3"], resume=True)
    actions = {p.run_id: p.action for p in plan.runs}
    assert actions["baseline-s0"] is Action.CONTINUE and actions["baseline-s4"] is Action.CONTINUE
    s0 = next(p for p in plan.runs if p.run_id == "baseline-s0")
    assert s0.state.state is State.UNFINISHED and (s0.state.epochs_done, s0.state.epochs_total) == (2, 3)
    # lowered below what was trained: finished, kept
    assert next(p for p in plan_for(engine, study, ["train.epochs=1"], resume=True).runs
                if p.run_id == "baseline-s0").action is Action.KEEP


@pytest.mark.parametrize("engine", ENGINES)
def test_existing_output_is_refused_without_resume(study, engine):
    plan = plan_for(engine, study, [], resume=False)
    assert plan.errors[0].startswith("output already exists for baseline-s0 (finished (2/2 epochs))")
    assert "pass --resume" in plan.errors[0]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_fresh_study_starts_everything(tmp_path, demo_data, engine):
    cfg = write_config(tmp_path / "study.yaml", demo_data.root, tmp_path / "runs", "fresh", seeds=[0, 1])
    plan = plan_for(engine, cfg, [], resume=False)
    assert not plan.errors and [p.action for p in plan.runs] == [Action.START, Action.START]


def test_slurm_leaves_a_queued_run_to_its_job(study):
    _, runs, st = load_config(study, [])
    record = {"executor": "slurm", "runs": {"baseline-s1": {"job_id": "77"}}}
    plan = slurm.make_plan("study", study, runs, st, resume=True, live={"baseline-s1": "job 77 (RUNNING)"})
    queued = next(p for p in plan.runs if p.run_id == "baseline-s1")
    assert queued.action is Action.QUEUED and "still queued as job 77 (RUNNING)" in queued.line()
    assert "baseline-s1" not in [s.run_id for s in plan.to_submit]
    assert record["runs"]  # a recorded study without --resume is refused by slurm's planner
    refused = slurm.plan_against_queue("study", study, runs, st, opts=SlurmOptions(), record=record)
    assert any("already submitted" in e for e in refused.errors)


def test_one_rule_tells_a_study_from_a_run(tmp_path, demo_data):
    run_cfg = write_config(tmp_path / "run.yaml", demo_data.root, tmp_path / "runs", "k", run_id="r0")
    study_cfg = write_config(tmp_path / "study.yaml", demo_data.root, tmp_path / "runs", "k", seeds=[0])
    assert study_kind({"train": {}}, []) == "run" and study_kind({"seeds": [0]}, []) == "study"
    assert study_kind({"train": {}}, ["seeds=[0,1]"]) == "study"
    assert load_config(run_cfg)[0] == "run" and load_config(study_cfg)[0] == "study"
    # explicitly: a run spec read as a study is a study of one condition (baseline) and one seed
    kind, runs, _ = load_config(run_cfg, kind="study")
    assert kind == "study" and [r.run_id for r in runs] == ["baseline-s0"]


def test_paths_resolve_the_same_way_everywhere(tmp_path, demo_data, monkeypatch):
    """Relative output_root and data paths become absolute against the cwd; data_root is folded in once; cloud
    URIs stay as they are."""
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "run.yaml", demo_data.root, Path("rel-runs"), "p", run_id="r0")
    _, (spec,), _ = load_config(cfg)
    assert spec.output_root == tmp_path / "rel-runs" and spec.data_root is None
    assert Path(spec.data.train_path).is_absolute() and str(spec.data.train_path).startswith(str(demo_data.root))
    again = resolve_paths(spec.model_copy(update={"output_root": "s3://bucket/runs"}))
    assert str(again.output_root) == "s3://bucket/runs"
    dumped = json.loads(spec.model_dump_json())
    assert dumped["data_root"] is None  # a reload of spec.yaml does not prefix the data paths twice
