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


@pytest.mark.slow
@pytest.mark.skipif(subprocess.run(["unshare", "-fp", "--mount-proc", "true"]).returncode != 0,
                    reason="needs `unshare -fp --mount-proc` to isolate Ray")
def test_control_plane_bench_quick():
    out = subprocess.run(["unshare", "-fp", "--mount-proc", "--kill-child", sys.executable, "bench/control_plane.py",
                          "--quick"], cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    res = last_json(out.stdout)
    for point in res["concurrency"]:
        kinds = point["per_run_gb_by_kind"]
        assert {"trial_driver", "train_controller"} <= set(kinds), kinds
        assert point["finished_marks"] == point["runs"]
    assert res["fit"]["gb_per_concurrent_run"] > 0 and res["studies"][0]["n"] == 10
