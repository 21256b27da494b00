"""`run:<condition>`: study-level checks (unknown names, cycles, grids) and the resolution a starting
run performs, on a study folder written with the real writers."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch

from jobs import checkpoint_files as ckpt
from jobs.dependencies import resolve_run_export
from jobs.spec import SpecError, load_spec
from rundir import CHECKPOINT_DIR, check_dependencies, write_status

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
KW = dict(num_classes=10, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)


def _run(run_id, condition, seed, ablation=None, init="random", teacher=None):
    return SimpleNamespace(run_id=run_id, condition=condition, seed=seed, ablation=ablation or {},
                           sources={"model.init": init, "distill.teacher.init": teacher})


def test_study_checks_report_every_problem_at_once():
    runs = [
        _run("baseline-s0", "baseline", 0),
        _run("pruned-keep_ratio=0.5-s0", "pruned", 0, {"strategy.shallow.keep_ratio": 0.5}, init="run:baseline"),
        _run("recovered-s0", "recovered", 0, init="run:pruned", teacher="run:baseline"),
        _run("a-s0", "a", 0, init="run:b"),
        _run("b-s0", "b", 0, teacher="run:a"),
        _run("typo-s0", "typo", 0, init="run:baseline2"),
    ]
    errors = check_dependencies(runs, lambda r: r.sources)
    assert all("\n" not in e for e in errors)
    assert any("run:baseline2, which is not a condition" in e for e in errors)
    assert any("conditions a -> b -> a form a cycle" in e for e in errors)
    # pruned sweeps keep_ratio; recovered does not: its run:pruned has no run within its grid point
    assert any(e.startswith("run recovered-s0: model.init run:pruned has no run with seed 0") for e in errors)
    assert len(errors) == 3
    ok = check_dependencies(runs[:2], lambda r: r.sources)
    assert ok == []


def _write_baseline(study_dir: Path, demo_data, state: str = "finished", best: bool = True) -> Path:
    spec = load_spec(DEMO, [f"data_root={demo_data.root}", f"output_root={study_dir.parent}",
                            f"study={study_dir.name}", "run_id=baseline-s0", "condition=baseline", "seed=0"])
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True)
    spec.record(run_dir)
    write_status(run_dir, state, 5 if state == "finished" else 2, 5)
    if best:
        model = timm.create_model("vit_tiny_patch16_224", **KW)
        ckpt.export_best(run_dir / CHECKPOINT_DIR, model.state_dict(), {
            "epoch": 5, "metric": "top1", "value": 50.0, "model": "vit_tiny_patch16_224", "create_kwargs": KW,
            "strategies": []})
    return run_dir


def test_resolution_of_a_finished_run(tmp_path, demo_data):
    study = tmp_path / "study"
    run_dir = _write_baseline(study, demo_data)
    grid = {"strategy.shallow.keep_ratio": 0.5}
    path = resolve_run_export(study, "baseline", 0, grid)
    assert path == run_dir / CHECKPOINT_DIR / "best" / "model.pt"
    assert set(torch.load(path, weights_only=True)) >= {"pos_embed", "head.weight"}
    for cond, seed, needle in [("baseline", 1, "has not started"), ("other", 0, "has not started")]:
        msg = resolve_run_export(study, cond, seed, grid)
        assert isinstance(msg, str) and needle in msg and "\n" not in msg
    path.write_bytes(path.read_bytes()[:-10])
    msg = resolve_run_export(study, "baseline", 0, grid)
    assert isinstance(msg, str) and "its best export is damaged" in msg


def test_resolution_of_unfinished_runs(tmp_path, demo_data):
    running = tmp_path / "running"
    _write_baseline(running, demo_data, state="running")
    msg = resolve_run_export(running, "baseline", 0, {})
    assert "is running" in msg and "not finished" in msg
    nobest = tmp_path / "nobest"
    _write_baseline(nobest, demo_data, best=False)
    assert "without a best export" in resolve_run_export(nobest, "baseline", 0, {})


def test_load_study_reports_dependency_errors_with_the_rest(tmp_path, demo_data):
    from jobs.study import load_study

    study = tmp_path / "study.yaml"
    study.write_text(f"""
base: {DEMO}
data_root: {demo_data.root}
seeds: [0]
conditions:
  baseline: {{}}
  pruned:
    strategies: [{{name: shallow, params: {{keep_ratio: 0.5, select: diversity}}}}]
    overrides: {{model.init: "run:baseline", distill.teacher: "run:baseline", distill.loss: feature_mse}}
  typo: {{overrides: {{model.init: "run:basline"}}}}
  a: {{overrides: {{model.init: "run:b"}}}}
  b: {{overrides: {{distill.teacher: "run:a"}}}}
""")
    with pytest.raises(SpecError) as info:
        load_study(study)
    errors = info.value.errors
    assert len(errors) == 2, errors
    assert errors[0].startswith("condition typo: model.init names run:basline, which is not a condition")
    assert errors[1] == "conditions a -> b -> a form a cycle through run:; a condition cannot need itself"
    ok = tmp_path / "ok.yaml"
    ok.write_text("\n".join(line for line in study.read_text().splitlines() if not line.startswith(("  typo", "  a:",
                                                                                                       "  b:"))))
    assert [r.condition for r in load_study(ok).runs] == ["baseline", "pruned"]
