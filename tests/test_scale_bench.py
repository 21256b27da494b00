"""Smoke tests of the scale benchmarks (the figures themselves go to BENCHMARKS.md, never asserted here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def last_json(text: str) -> dict:
    return json.loads(text[text.rindex("\n{") + 1:] if "\n{" in text else text)


def test_study_status_bench_smoke():
    out = subprocess.run([sys.executable, "bench/study_status.py", "--runs", "10", "--epochs", "2"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = last_json(out.stdout)
    assert res["runs"] == 10 and set(res["figures"]) == {"status_cli_s", "run_state_all_s", "full_read_all_s"}
    assert all(isinstance(v, float) and v > 0 for v in res["figures"].values()), res["figures"]


def test_study_status_bench_rejects_a_wrong_status():
    """The bench checks what `analysis status` printed: a status that loses or misclassifies runs fails it."""
    from bench.study_status import status_problem

    assert status_problem(0, "...\n10 runs: 10 finished\n", "", 10) is None
    assert status_problem(0, "...\n10 runs: 9 finished, 1 unfinished\n", "", 10)
    assert status_problem(0, "...\n9 runs: 9 finished\n", "", 10)
    assert status_problem(0, "...\n100 runs: 100 finished\n", "", 10)
    assert status_problem(1, "...\n10 runs: 10 finished\n", "Traceback", 10)


def test_tune_scale_bench_quick():
    out = subprocess.run([sys.executable, "bench/tune_scale.py", "--quick"], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (point,) = last_json(out.stdout)["studies"]
    assert point["finished"] == point["n"] == 5 and point["state_saves"] > 0 and point["state_kb_last"] > 0
    assert point["state_trials_last"] == point["n"] and point["latency_median_s"] is not None


@pytest.mark.skipif(subprocess.run(["unshare", "-fp", "--mount-proc", "true"]).returncode != 0,
                    reason="needs `unshare -fp --mount-proc` to isolate Ray")
def test_control_plane_bench_quick():
    out = subprocess.run(["unshare", "-fp", "--mount-proc", "--kill-child", sys.executable, "bench/control_plane.py",
                          "--quick"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = last_json(out.stdout)
    points = {p["engine"]: p for p in res["concurrency"]}
    assert set(points) == {"trial", "trainer"}
    assert {"trial_driver", "train_controller"} <= set(points["trainer"]["per_run_gb_by_kind"]), points["trainer"]
    # A run trained in its trial: the trial process is its worker; no controller exists.
    assert points["trial"]["processes"]["train_worker"] == 1 and "train_controller" not in points["trial"]["processes"]
    assert points["trial"]["control_plane_rule"].startswith("trial process")
    assert all(p["finished_marks"] == p["runs"] for p in points.values())
    assert res["studies"][0]["n"] == 10 and res["studies"][0]["planned"] == 10


def test_control_plane_fit():
    from bench.control_plane import fit

    got = fit([{"k": 1, "control_plane_gb_total": 0.6}, {"k": 2, "control_plane_gb_total": 1.1},
               {"k": 4, "control_plane_gb_total": 2.1}])
    assert got["gb_per_concurrent_run"] == 0.5 and got["fixed_gb"] == 0.1 and got["projected_gb_64"] == 32.1
    assert fit([{"k": 1, "control_plane_gb_total": 0.6}]) == {}
