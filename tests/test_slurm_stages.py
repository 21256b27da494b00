"""Stages on the real private Slurm (tests/slurm/cluster.py): later-stage runs are jobs with Slurm's own
`--dependency=afterok:` on the jobs they need; a failed dependency keeps its dependents from running (`blocked
by`); `--resume` resubmits the unfinished stages with the right dependencies and never duplicates a queued job."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from harness import events, session_cluster, status, wait_until, write_config  # noqa: E402

from analysis.__main__ import main as analysis_main  # noqa: E402
from jobs.tune_space import TuneBlock  # noqa: E402
from orchestrator import slurm  # noqa: E402
from orchestrator import slurm_queue as sq  # noqa: E402
from orchestrator.slurm_tune import sample_ahead  # noqa: E402

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


TUNE = {"space": {"train.lr": {"loguniform": [1.0e-3, 3.0e-3]}}, "trials": 2, "seed": 0, "epochs": 1,
        "holdout": {"fraction": 0.2, "seed": 0}, "confirm": {"seeds": [0], "epochs": 1}}


def spec(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "spec.yaml").read_text())


@pytest.mark.slow
def test_tuned_study_chains_trials_selection_and_confirm(slurm_cluster, demo_data, tmp_path, capsys):
    """A tuned study (issue 23): the trials sampled ahead into one array, the selection job after them, the confirm
    runs after the selection, all chained by Slurm with the submitting process long gone; what Slurm cannot do
    that Tune does is said before anything is submitted."""
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "study.yaml", demo_data.root, out, "tuned", epochs=1, seeds=[0],
                       conditions={"baseline": {}, "shallow": {"strategies": [
                           {"name": "shallow", "params": {"keep_ratio": 0.5, "select": "first"}}]}})
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "tune": TUNE}, sort_keys=False))

    # Without --wait: the submitting process returns at once, Slurm alone carries the study through its stages.
    assert slurm.main([str(cfg), "--partition", "low", "--time", "10"]) == 0
    text = capsys.readouterr().out
    assert "warning: no early stopping on Slurm (tune.scheduler asha)" in text, text
    assert text.index("no early stopping") < text.index("submitting"), text
    study = out / "tuned"
    record = json.loads((study / sq.JOBS_FILE).read_text())["runs"]
    trials = [f"tuning/{c}-t{i:03d}" for c in ("baseline", "shallow") for i in range(2)]
    assert len({record[t]["job_id"].split("_")[0] for t in trials}) == 1  # one array of every trial
    select = record["tuning/select"]["job_id"]
    for run in ("baseline-s0", "shallow-s0"):
        assert record[run]["after"] == [select]

    confirm = [study / "baseline-s0", study / "shallow-s0"]
    wait_until("the confirm runs to finish", lambda: all(status(r).get("state") == "finished" for r in confirm), 900)

    # The same searcher seed, the same configs, for every condition; the trials scored on the held-out slice.
    sampled = sample_ahead(TuneBlock.model_validate(TUNE))
    for t in trials:
        s = spec(study / t)
        assert s["ablation"] == sampled[int(t[-3:])] and s["data"]["holdout"] == {"fraction": 0.2, "seed": 0}
        assert status(study / t)["state"] == "finished"
    doc = json.loads((study / "tuning" / "tuning.json").read_text())
    for cond in ("baseline", "shallow"):
        c = doc["conditions"][cond]
        trial_metrics = {t["run_id"]: t["metric"] for t in c["trials"]}
        assert c["best_metric"] == max(trial_metrics.values()) and trial_metrics[c["best_trial"]] == c["best_metric"]
        assert {t["status"] for t in c["trials"]} == {"finished"} and all(t["images"] > 0 for t in c["trials"])
        # the confirm run trained with its condition's winner, on val, at confirm length
        s = spec(study / f"{cond}-s0")
        assert s["ablation"] == {"tuned": True, **c["best"]} and s["train"]["lr"] == c["best"]["train.lr"]
        assert s["data"]["holdout"] is None
    assert analysis_main(["report", str(study)]) == 0
    assert "## Tuning" in (study / "report" / "report.md").read_text()
