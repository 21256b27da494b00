"""The Slurm path against a real private Slurm 22.05 (tests/slurm/cluster.py starts and stops it).

Tiny ViT, 2 epochs on the shipped digits; each job pays ~30 s of imports on a loaded 2-core machine,
so the scenarios share jobs where they can.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from harness import TIMING_COLUMNS, events, job_state, session_cluster, status, wait_until, write_config  # noqa: E402

from orchestrator import slurm  # noqa: E402

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def slurm_cluster():
    yield from session_cluster(pytest.skip)


def _rows(run_dir: Path) -> list[dict]:
    return pq.read_table(Path(run_dir) / "metrics.parquet").to_pylist()


def _comparable(rows: list[dict], drop: tuple[str, ...] = ()) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS + drop} for r in rows]


def _local_reference(spec, out: Path) -> list[dict]:
    """The same run through the local engine (jobs.local.LocalContext), as `python -m jobs train` runs it."""
    import torch

    from jobs.local import LocalContext
    from jobs.train import train_loop

    spec = spec.model_copy(update={"output_root": out})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what the Slurm task gets (cpus_per_task=1)
    try:
        with LocalContext(spec.run_dir, use_gpu=False) as ctx:
            train_loop(spec, ctx)
    finally:
        torch.set_num_threads(threads)
    return _rows(spec.run_dir)


@pytest.mark.slow
def test_study_array_failure_resume_and_local_equality(slurm_cluster, demo_data, tmp_path, capsys):
    """4 runs as one array (2 at a time); one task fails, is reported, and --resume reruns only it (here with
    2 workers, i.e. a distributed job); the finished runs' metrics equal the local engine's for the same seed."""
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "study.yaml", demo_data.root, out, "arr", seeds=[0, 1],
                       conditions={"baseline": {}, "grouped": {"strategies": [{"name": "grouped",
                                                                               "params": {"group_size": 2}}]}})
    broken = out / "arr" / "grouped-s1"
    broken.parent.mkdir(parents=True)
    broken.write_text("a file where the run directory should be: this run's task fails")

    rc = slurm.main([str(cfg), "--partition", "low", "--time", "10", "--array-parallelism", "2", "--wait"])
    text = capsys.readouterr().out
    assert rc == 1, text
    record = json.loads((out / "arr" / slurm.JOBS_FILE).read_text())
    ids = {run: e["job_id"] for run, e in record["runs"].items()}
    assert sorted(ids) == ["baseline-s0", "baseline-s1", "grouped-s0", "grouped-s1"]
    assert len({j.split("_")[0] for j in ids.values()}) == 1 and all("_" in j for j in ids.values()), ids  # one array
    failed = [ln for ln in text.splitlines() if "FAILED" in ln]
    assert len(failed) == 1 and "grouped-s1" in failed[0], text
    for run in ("baseline-s0", "baseline-s1", "grouped-s0"):
        assert status(out / "arr" / run)["state"] == "finished"
        assert [r["epoch"] for r in _rows(out / "arr" / run)] == [1, 2]

    # The Slurm run and the local engine agree on every non-timing column, for the same seed.
    from orchestrator.study import load_study

    spec = next(r for r in load_study(cfg).expand() if r.run_id == "baseline-s0")
    reference = _local_reference(spec, tmp_path / "local")
    assert _comparable(_rows(out / "arr" / "baseline-s0")) == _comparable(reference)

    # slurm-status sees accounting's states.
    assert slurm.status_main([str(out / "arr")]) == 0
    table = capsys.readouterr().out
    assert table.count("COMPLETED") == 3 and "FAILED" in table, table

    # Resubmitted with 2 workers: a job of 2 tasks that join one gloo process group through srun's variables.
    broken.unlink()
    rc = slurm.main([str(cfg), "--partition", "low", "--time", "10", "--resume", "--wait", "resources.num_workers=2"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "submitting 1 run(s)" in text and "grouped-s1: job" in text and "x 2 task(s)" in text, text
    assert any("on 2 worker(s)" in ln for ln in events(broken, "start"))
    record2 = json.loads((out / "arr" / slurm.JOBS_FILE).read_text())
    assert record2["runs"]["grouped-s1"]["history"][0] == ids["grouped-s1"]
    assert len(record2["runs"]["grouped-s1"]["history"]) == 2
    assert all(record2["runs"][r]["history"] == [ids[r]] for r in ids if r != "grouped-s1")
    assert status(broken)["state"] == "finished"

    # Nothing left to do: a second --resume submits nothing.
    assert slurm.main([str(cfg), "--resume"]) == 0
    assert "nothing to submit" in capsys.readouterr().out


@pytest.mark.slow
def test_preemption_usr2_and_plain_requeue(slurm_cluster, demo_data, tmp_path, capsys):
    """One run, interrupted three ways: preempted by a high-priority job, USR2 from outside (both go through
    checkpoint()), and a plain `scontrol requeue` (no checkpoint() call). It resumes each time from its last
    checkpoint, finishes with every epoch exactly once, records resumed_from, and ends with the metrics of an
    uninterrupted run."""
    out = tmp_path / "runs"
    # After a plain requeue's SIGTERM (which submitit ignores) the task trains on until KillWait's SIGKILL
    # (5 s) and must not reach the end of the run in that time: on an idle machine an epoch of batch 16
    # takes ~0.5 s, so the run is long enough to have >10 epochs left after the third interruption.
    epochs = 24
    cfg = write_config(tmp_path / "run.yaml", demo_data.root, out, "pre", epochs=epochs, run_id="r0",
                       overrides={"train": {"batch_size": 16}})
    run_dir = out / "pre" / "r0"
    assert slurm.main([str(cfg), "--partition", "low", "--time", "15"]) == 0
    capsys.readouterr()
    job = json.loads((out / "pre" / slurm.JOBS_FILE).read_text())["runs"]["r0"]["job_id"]

    def reached(epoch: int):
        return lambda: status(run_dir).get("epoch", 0) >= epoch and status(run_dir).get("state") == "running"

    # --resume never duplicates a job that is still queued or running.
    assert slurm.main([str(cfg), "--partition", "low", "--resume"]) == 0
    text = capsys.readouterr().out
    assert f"job {job} is still" in text and "nothing to submit" in text, text

    def resumes() -> list[int]:
        return [int(ln.split(": epoch ")[1].split()[0]) for ln in events(run_dir, "resume")]

    # 1. preemption: a job on the high partition that needs the whole node.
    wait_until("epoch 1", reached(1), 240, every=0.1)
    subprocess.run(["sbatch", "-p", "high", "--exclusive", "-o", "/dev/null", "--wrap", "sleep 1"], check=True,
                   capture_output=True)
    wait_until("requeue after preemption", lambda: len(events(run_dir, "requeue")) >= 1, 120)
    wait_until("first resume", lambda: len(resumes()) >= 1, 240)

    # 2. USR2 from outside, one epoch after the resume.
    wait_until("an epoch after the resume", reached(resumes()[-1] + 1), 240, every=0.1)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, capture_output=True)
    wait_until("requeue after USR2", lambda: len(events(run_dir, "requeue")) >= 2, 120)
    wait_until("second resume", lambda: len(resumes()) >= 2, 240)

    # 3. plain requeue: no checkpoint() call, the job restarts from its last saved checkpoint.
    wait_until("an epoch after the resume", reached(resumes()[-1] + 1), 240, every=0.1)
    requeued_at = status(run_dir)["epoch"]
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    wait_until("third resume", lambda: len(resumes()) >= 3, 240)
    wait_until("the run to finish", lambda: status(run_dir).get("state") == "finished", 300)
    wait_until("the job to leave the queue", lambda: job_state(job) in ("GONE", "COMPLETED"), 60)

    assert len(events(run_dir, "requeue")) == 2  # only the signalled interruptions called checkpoint()
    attempts = events(run_dir, "slurm")
    assert len(attempts) == 4 and all(f"job {job} " in a for a in attempts), attempts
    starts = resumes()
    assert starts[0] >= 1 and starts[1] > starts[0] and starts[2] >= requeued_at, starts
    assert starts[2] < epochs, "the plain requeue came after the run finished: nothing was tested"
    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    # Each row names the checkpoint epoch its process resumed from (None before the first interruption).
    expected = [next((s for s in reversed(starts) if s < r["epoch"]), None) for r in rows]
    assert [r["resumed_from"] for r in rows] == expected
    assert rows[-1]["resumed_from"] == starts[-1]

    # Exact resume: the same metrics as an uninterrupted run through the local engine.
    spec, = slurm.load_runs(cfg, [])[0]
    assert _comparable(_rows(run_dir), drop=("resumed_from",)) == _comparable(
        _local_reference(spec, tmp_path / "local"), drop=("resumed_from",))


def test_unknown_partition_is_one_line(slurm_cluster, demo_data, tmp_path, capsys):
    cfg = write_config(tmp_path / "run.yaml", demo_data.root, tmp_path / "runs", "bad", run_id="r0")
    rc = slurm.main([str(cfg), "--partition", "no_such_partition", "--time", "5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and "sbatch refused the job" in err[0] and "partition" in err[0].lower(), err
    assert not (tmp_path / "runs" / "bad" / slurm.JOBS_FILE).exists()


def test_time_limit_warning_before_submission(slurm_cluster, demo_data, tmp_path, capsys):
    """A time limit shorter than one checkpoint interval (epochs measured earlier in the study) is a warning,
    printed before sbatch is asked (which here refuses the partition, so nothing runs)."""
    from analysis.schema import METRICS_COLUMNS
    from jobs.metrics import append_row

    cfg = write_config(tmp_path / "run.yaml", demo_data.root, tmp_path / "runs", "tl", run_id="r0")
    (tmp_path / "runs" / "tl" / "earlier").mkdir(parents=True)
    append_row(tmp_path / "runs" / "tl" / "earlier", {**{c: None for c in METRICS_COLUMNS}, "epoch": 1, "epoch_s": 900.0})
    rc = slurm.main([str(cfg), "--partition", "no_such_partition", "--time", "10", "--signal-delay", "60"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "warning: --time 10 min leaves 540 s before the USR2 signal, shorter than one checkpoint interval" in err, err
