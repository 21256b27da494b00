"""The stage graph (rundir.stages), `blocked by` in the run state and the plan, and the Tune searcher that
suggests a run only once its dependencies have finished (its logic; the Ray path is in test_ray_stages.py)."""
from __future__ import annotations

from pathlib import Path

import yaml

from orchestrator.plan import Action, current_states, load_config, make_plan
from orchestrator.ray_stages import StageSearcher
from rundir import (
    Node,
    RunState,
    State,
    blocker,
    dependencies,
    index_nodes,
    read_index,
    stage_lines,
    stage_of,
    write_status,
)

REPO = Path(__file__).resolve().parents[1]


def nodes() -> list[Node]:
    return [
        Node("base-s0", "base", 0), Node("base-s1", "base", 1),
        Node("pruned-r0.5-s0", "pruned", 0, {"r": 0.5}, ("base",)),
        Node("pruned-r0.25-s0", "pruned", 0, {"r": 0.25}, ("base",)),
        Node("rec-r0.5-s0", "rec", 0, {"r": 0.5}, ("pruned", "base")),
    ]


def test_dependencies_match_seed_and_grid_point_and_stages_follow():
    deps = dependencies(nodes())
    assert deps["base-s0"] == [] and deps["pruned-r0.25-s0"] == ["base-s0"]
    assert deps["rec-r0.5-s0"] == ["pruned-r0.5-s0", "base-s0"]
    assert stage_of(deps) == {"base-s0": 0, "base-s1": 0, "pruned-r0.5-s0": 1, "pruned-r0.25-s0": 1,
                              "rec-r0.5-s0": 2}
    assert stage_lines(nodes()) == ["stage 0: base", "stage 1: pruned <- base", "stage 2: rec <- pruned, base"]


def test_blocker_looks_upstream_and_describe_says_blocked_by():
    deps = dependencies(nodes())
    assert blocker("rec-r0.5-s0", deps, {"base-s0": "failed"}) == "pruned-r0.5-s0" or \
        blocker("rec-r0.5-s0", deps, {"base-s0": "failed"}) == "base-s0"
    assert blocker("rec-r0.5-s0", deps, {"base-s1": "failed"}) is None
    state = RunState(State.UNFINISHED, 0, 3, False).waiting_for("base-s0")
    assert state.describe() == "blocked by base-s0" and state.blocked_by == "base-s0"
    assert RunState(State.FINISHED, 3, 3, True).waiting_for("base-s0").blocked_by is None


def study(tmp_path: Path, demo_data) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(REPO / "configs/demo.yaml"), "study": "st", "output_root": str(tmp_path / "runs"),
        "data_root": str(demo_data.root), "seeds": [0, 1],
        "conditions": {"baseline": {},
                       "pruned": {"overrides": {"model.init": "run:baseline", "train.epochs": 0},
                                  "strategies": [{"name": "shallow", "params": {"select": "diversity"}}]},
                       "recovered": {"overrides": {"model.init": "run:pruned"},
                                     "strategies": [{"name": "shallow", "params": {"select": "diversity"}}]}},
    }))
    return path


def test_plan_holds_the_dependents_of_a_blocked_run_and_the_index_keeps_the_graph(tmp_path, demo_data):
    kind, runs, spec = load_config(study(tmp_path, demo_data), kind="study")
    by_id = {r.run_id: r for r in runs}
    base0 = next(r for r in runs if r.condition == "baseline" and r.seed == 0)
    base0.run_dir.mkdir(parents=True)
    (base0.run_dir / "status.json").write_text("{not json")  # an unreadable folder: blocked
    plan = make_plan(kind, "study.yaml", runs, spec, resume=True)
    actions = {p.run_id: (p.action, p.state.describe()) for p in plan.runs}
    held = [r for r, (a, _) in actions.items() if a is Action.HOLD]
    assert sorted(by_id[r].condition for r in held) == ["baseline", "pruned", "recovered"]
    assert all(by_id[r].seed == 0 for r in held)
    pruned0 = next(r for r in held if by_id[r].condition == "pruned")
    assert actions[pruned0][1] == f"blocked by {base0.run_id}"
    assert plan.stages[pruned0] == 1 and max(plan.stages.values()) == 2
    plan.write_index()
    index, problem = read_index(plan.study_dir)
    assert problem is None and stage_lines(index_nodes(index)) == [
        "stage 0: baseline", "stage 1: pruned <- baseline", "stage 2: recovered <- pruned"]


def test_after_a_dependency_failed_its_dependents_read_blocked_by_it(tmp_path, demo_data):
    kind, runs, spec = load_config(study(tmp_path, demo_data), kind="study")
    plan = make_plan(kind, "study.yaml", runs, spec, resume=False)
    base1 = next(r for r in runs if r.condition == "baseline" and r.seed == 1)
    base1.run_dir.mkdir(parents=True)
    write_status(base1.run_dir, "failed", 1, base1.train.epochs, "RuntimeError: boom")
    states = current_states(plan)
    for r in runs:
        if r.seed == 1 and r.condition != "baseline":
            assert states[r.run_id].describe().startswith("blocked by"), r.run_id
        if r.seed == 0:
            assert states[r.run_id].blocked_by is None


def test_searcher_waits_for_dependencies_and_never_suggests_a_blocked_run():
    deps = dependencies(nodes())
    finished: set[str] = set()
    order = sorted(deps, key=lambda r: stage_of(deps)[r])
    s = StageSearcher(order, deps, finished=[], is_finished=lambda r: r in finished)
    first = {s.suggest("t1")["run_id"], s.suggest("t2")["run_id"]}
    assert first == {"base-s0", "base-s1"}
    assert s.suggest("t3") is None  # nothing ready: Tune asks again later, no trial holds resources
    finished.add("base-s0")
    t0 = "t1" if first == {"base-s0", "base-s1"} and s._trials["t1"] == "base-s0" else "t2"
    s.on_trial_complete(t0, {})
    ready = {s.suggest("t4")["run_id"], s.suggest("t5")["run_id"]}
    assert ready == {"pruned-r0.5-s0", "pruned-r0.25-s0"}
    s.on_trial_complete("t4", None, error=True)
    s.on_trial_complete("t5", {})
    finished.add("pruned-r0.25-s0")
    failed = "pruned-r0.5-s0" if s.stuck.get("pruned-r0.5-s0") else "pruned-r0.25-s0"
    assert s.suggest("t6") == StageSearcher.FINISHED  # rec-r0.5-s0 needs the failed run: never suggested
    if failed == "pruned-r0.5-s0":
        assert s.blocked == {"rec-r0.5-s0": "pruned-r0.5-s0"}
