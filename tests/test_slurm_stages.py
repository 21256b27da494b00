"""Stages on the real private Slurm (tests/slurm/cluster.py): later-stage runs are jobs with Slurm's own
`--dependency=afterok:` on the jobs they need; a failed dependency keeps its dependents from running (`blocked
by`); `--resume` resubmits the unfinished stages with the right dependencies and never duplicates a queued job."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from harness import events, session_cluster, status, wait_until, write_config  # noqa: E402

from orchestrator import slurm  # noqa: E402
from orchestrator import slurm_queue as sq  # noqa: E402

pytestmark = pytest.mark.slurm
SHALLOW = [{"name": "shallow", "params": {"keep_ratio": 0.5, "select": "diversity"}}]


@pytest.fixture(scope="module")
def slurm_cluster():
    yield from session_cluster(pytest.skip)


def dependency_of(job: str) -> str:
    r = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    return next((w.split("=", 1)[1] for w in r.stdout.split() if w.startswith("Dependency=")), "")


@pytest.mark.slow
def test_stage_jobs_depend_on_their_runs_block_on_failure_and_resume(slurm_cluster, demo_data, tmp_path, capsys):
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "study.yaml", demo_data.root, out, "stg", epochs=1, seeds=[0, 1], conditions={
        "baseline": {},
        "pruned": {"strategies": SHALLOW, "overrides": {"model.init": "run:baseline", "train.epochs": 0}},
    })
    broken = out / "stg" / "baseline-s1"
    broken.parent.mkdir(parents=True)
    broken.write_text("a file where the run directory should be: this run's task fails")

    rc = slurm.main([str(cfg), "--partition", "low", "--time", "10", "--wait"])
    text = capsys.readouterr().out
    assert rc == 1, text
    record = json.loads((out / "stg" / sq.JOBS_FILE).read_text())["runs"]
    base = {r: record[r]["job_id"] for r in ("baseline-s0", "baseline-s1")}
    assert len({j.split("_")[0] for j in base.values()}) == 1  # the first stage is one array
    assert record["pruned-s0"]["after"] == [base["baseline-s0"]]
    assert record["pruned-s1"]["after"] == [base["baseline-s1"]]
    assert status(out / "stg" / "pruned-s0")["state"] == "finished"
    assert not (out / "stg" / "pruned-s1").exists()  # Slurm never started it
    assert "pruned-s1: not run" in text and "blocked by baseline-s1" in text, text
    # The dependent ran only after its dependency finished.
    assert events(out / "stg" / "baseline-s0", "finish") and events(out / "stg" / "pruned-s0", "start")

    # --resume: both unfinished stages again, the dependent after the new baseline job; a second --resume while
    # they are queued submits nothing.
    broken.unlink()
    assert slurm.main([str(cfg), "--partition", "low", "--time", "10", "--resume"]) == 0
    text = capsys.readouterr().out
    assert "submitting 2 run(s)" in text, text
    record = json.loads((out / "stg" / sq.JOBS_FILE).read_text())["runs"]
    new_base = record["baseline-s1"]["job_id"]
    assert new_base != base["baseline-s1"] and record["pruned-s1"]["after"] == [new_base]
    dep = dependency_of(record["pruned-s1"]["job_id"])
    assert dep in ("", "(null)") or new_base.split("_")[0] in dep or new_base in dep, dep
    assert slurm.main([str(cfg), "--partition", "low", "--time", "10", "--resume"]) in (0, 1)
    text = capsys.readouterr().out
    assert "nothing to submit" in text or "submitting 0" not in text and "still queued" in text, text
    assert "submitting" not in text, text
    wait_until("the resumed stages to finish", lambda: status(out / "stg" / "pruned-s1").get("state") == "finished",
               600)
    assert status(out / "stg" / "baseline-s1")["state"] == "finished"
