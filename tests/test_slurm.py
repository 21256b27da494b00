"""The Slurm path against a real private Slurm 22.05 (tests/slurm/cluster.py starts and stops it).

Tiny ViT, 2 epochs on the shipped digits; each job pays ~30 s of imports on a loaded 2-core machine,
so the scenarios share jobs where they can.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from harness import TIMING_COLUMNS, events, job_state, session_cluster, status, wait_until, write_config  # noqa: E402

from orchestrator import slurm, slurm_status  # noqa: E402
from orchestrator import slurm_options as so  # noqa: E402
from orchestrator import slurm_queue as sq  # noqa: E402
from orchestrator.plan import Action, load_config, make_plan  # noqa: E402


def load_runs(config, overrides):
    """(runs with resolved paths, study dir) of a config, as `slurm` plans them."""
    _, runs, _ = load_config(config, overrides)
    return runs, runs[0].run_dir.parent

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def slurm_cluster():
    yield from session_cluster(pytest.skip)


def test_the_slurm_modules_run_as_one_xdist_group(request):
    """Under `make test` (pytest-xdist, --dist loadgroup) the Slurm modules share one worker and one set of daemons:
    conftest's marks must reach xdist (a pytest that drops them, pytest-xdist#1386, fails here)."""
    if not request.config.getoption("loadgroup", False):  # xdist sets it on its workers for --dist loadgroup
        pytest.skip("not run with --dist loadgroup")
    assert request.node.nodeid.endswith("@slurm"), request.node.nodeid


def _rows(run_dir: Path) -> list[dict]:
    return pq.read_table(Path(run_dir) / "metrics.parquet").to_pylist()


def _comparable(rows: list[dict], drop: tuple[str, ...] = ()) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS + drop} for r in rows]


def _stops(run_dir: Path) -> list[int]:
    """The update each signalled stop wrote its checkpoint at (the loop's `preempted` events)."""
    return [int(ln.rsplit("(update ", 1)[1].rstrip(")")) for ln in events(run_dir, "preempted")]


def _resumed_updates(run_dir: Path) -> list[int]:
    """The update each restart continued from (its `resume` event)."""
    return [int(ln.rsplit(" update ", 1)[1]) for ln in events(run_dir, "resume")]


def _local_reference(spec, out: Path) -> list[dict]:
    """The same run through the local engine (jobs.local.LocalContext), as `python -m jobs train` runs it."""
    from tests.tiny import one_thread, run_local

    spec = spec.model_copy(update={"output_root": out})
    with one_thread():  # what the Slurm task gets (cpus_per_task=1)
        run_local(spec)
    return _rows(spec.run_dir)


@pytest.mark.slow
def test_study_array_failure_resume_and_local_equality(slurm_cluster, demo_data, tmp_path, capsys):
    """4 runs as one array (2 at a time); one task fails and is reported with its error while the other three
    finish (Slurm's accounting agrees), and --resume reruns only it (here with 2 workers, i.e. a distributed job),
    leaving the finished runs' files byte for byte; their metrics equal the local engine's for the same seed."""
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
    record = json.loads((out / "arr" / sq.JOBS_FILE).read_text())
    ids = {run: e["job_id"] for run, e in record["runs"].items()}
    assert sorted(ids) == ["baseline-s0", "baseline-s1", "grouped-s0", "grouped-s1"]
    assert len({j.split("_")[0] for j in ids.values()}) == 1 and all("_" in j for j in ids.values()), ids  # one array
    failed = [ln for ln in text.splitlines() if "FAILED" in ln]
    # The failing task is named with its job and its error (the run directory it could not create).
    assert len(failed) == 1 and f"grouped-s1: FAILED (job {ids['grouped-s1']}): FileExistsError" in failed[0], text
    assert str(broken) in failed[0] and "1 run(s) failed" in text and "--resume" in text, text
    others = ("baseline-s0", "baseline-s1", "grouped-s0")
    for run in others:
        assert status(out / "arr" / run)["state"] == "finished"
        assert [r["epoch"] for r in _rows(out / "arr" / run)] == [1, 2]
        assert f"  {run}: finished (2/2 epochs)" in text, text
    # Slurm's accounting agrees, task by task, once the tasks have ended (it lags their result files).
    expected = {**{r: "COMPLETED" for r in others}, "grouped-s1": "FAILED"}

    def accounted() -> dict[str, str]:
        states = sq.sacct_states(list(ids.values())) or {}
        return {run: states.get(j, "?") for run, j in ids.items()}

    wait_until(f"accounting to show {expected}", lambda: accounted() == expected, 60)
    # The finished runs' files, which --resume must leave alone.
    files = {p: p.read_bytes() for run in others for p in sorted((out / "arr" / run).rglob("*")) if p.is_file()}
    assert len(files) >= 3 * 4, sorted(files)  # spec, status, metrics, events and checkpoints of each

    # The Slurm run and the local engine agree on every non-timing column, for the same seed.
    from jobs.study import load_study

    spec = next(r for r in load_study(cfg).runs if r.run_id == "baseline-s0")
    reference = _local_reference(spec, tmp_path / "local")
    assert _comparable(_rows(out / "arr" / "baseline-s0")) == _comparable(reference)

    # slurm-status sees accounting's states.
    assert slurm_status.status_main([str(out / "arr")]) == 0
    table = capsys.readouterr().out
    assert table.count("COMPLETED") == 3 and "FAILED" in table, table

    # Resubmitted with 2 workers: a job of 2 tasks that join one gloo process group through srun's variables.
    broken.unlink()
    rc = slurm.main([str(cfg), "--partition", "low", "--time", "10", "--resume", "--wait", "resources.num_workers=2"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "submitting 1 run(s)" in text and "grouped-s1: job" in text and "x 2 task(s)" in text, text
    assert any("on 2 worker(s)" in ln for ln in events(broken, "start"))
    record2 = json.loads((out / "arr" / sq.JOBS_FILE).read_text())
    assert record2["runs"]["grouped-s1"]["history"][0] == ids["grouped-s1"]
    assert len(record2["runs"]["grouped-s1"]["history"]) == 2
    assert all(record2["runs"][r]["history"] == [ids[r]] for r in ids if r != "grouped-s1")
    assert status(broken)["state"] == "finished"
    assert {p: p.read_bytes() for p in files} == files
    assert {p for run in others for p in (out / "arr" / run).rglob("*") if p.is_file()} == set(files)

    # Nothing left to do: a second --resume submits nothing.
    assert slurm.main([str(cfg), "--resume"]) == 0
    assert "nothing to submit" in capsys.readouterr().out


@pytest.mark.slow
def test_preemption_usr2_and_plain_requeue(slurm_cluster, demo_data, tmp_path, capsys):
    """One run, interrupted three ways: preempted by a high-priority job and USR2 from outside (both a stop
    request: a checkpoint at the update the signal was acted on, then checkpoint() and a requeue), and a plain
    `scontrol requeue` (no stop request: back to the last checkpoint). With checkpoint.every_steps=0 the
    signalled stops checkpoint mid-epoch and the restarts continue from exactly there: zero updates computed
    twice. It finishes with every epoch exactly once, records resumed_from, and ends with the metrics of an
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
    job = json.loads((out / "pre" / sq.JOBS_FILE).read_text())["runs"]["r0"]["job_id"]

    def reached(epoch: int):
        return lambda: status(run_dir).get("epoch", 0) >= epoch and status(run_dir).get("state") == "running"

    # --resume never duplicates a job that is still queued or running.
    assert slurm.main([str(cfg), "--partition", "low", "--resume"]) == 0
    text = capsys.readouterr().out
    assert f"r0: still queued as job {job} (" in text and "nothing to submit" in text, text

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
    # Zero updates computed twice: each signalled stop's checkpoint is where the next start continued.
    stops, resumed = _stops(run_dir), _resumed_updates(run_dir)
    assert len(stops) == 2 and resumed[:2] == stops, (stops, resumed)
    for requeue, stop in zip(events(run_dir, "requeue"), stops):
        assert f"update {stop})" in requeue, requeue
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
    spec, = load_runs(cfg, [])[0]
    assert _comparable(_rows(run_dir), drop=("resumed_from",)) == _comparable(
        _local_reference(spec, tmp_path / "local"), drop=("resumed_from",))


def test_unknown_partition_is_one_line(slurm_cluster, demo_data, tmp_path, capsys):
    cfg = write_config(tmp_path / "run.yaml", demo_data.root, tmp_path / "runs", "bad", run_id="r0")
    rc = slurm.main([str(cfg), "--partition", "no_such_partition", "--time", "5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and "sbatch refused the job" in err[0] and "partition" in err[0].lower(), err
    assert not (tmp_path / "runs" / "bad" / sq.JOBS_FILE).exists()


def test_resume_after_a_hard_kill(demo_data, tmp_path, capsys):
    """A job killed at its hard time limit (SIGTERM is ignored by submitit, then SIGKILL) leaves its run saying
    `running`: once the job is out of the queue, slurm-status says so and --resume picks the run again."""
    import pickle

    from rundir import write_status

    cfg = write_config(tmp_path / "run.yaml", demo_data.root, tmp_path / "runs", "hk", run_id="r0")
    (spec,), study = load_runs(cfg, [])
    (study / "r0").mkdir(parents=True)
    write_status(study / "r0", "running", 5, 10)
    sq.write_jobs(study, {"executor": "local", "folder": str(study / sq.SUBMITIT_DIR),
                             "runs": {"r0": {"job_id": "999999999", "history": ["999999999"]}}})
    (study / sq.SUBMITIT_DIR).mkdir()
    (study / sq.SUBMITIT_DIR / "999999999_0_result.pkl").write_bytes(
        pickle.dumps(("error", "killed")))
    queued = make_plan("run", cfg, [spec], resume=True, live={"r0": "job 999999999 (RUNNING)"})
    assert queued.to_submit == [] and queued.runs[0].action is Action.QUEUED
    assert make_plan("run", cfg, [spec], resume=True).to_submit == [spec]
    assert slurm_status.status_main([str(study)]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert "FAILED" in line and "5/10" in line and "job ended (FAILED) before the run finished: --resume" in line, line


def test_signal_during_start_up_is_a_warning():
    """slurmctld sends --signal up to 30 s early: a limit that lets USR2 reach a job still starting up is flagged."""
    early, = so.time_warnings(so.SlurmOptions(time_min=1, signal_delay_s=45))
    assert "USR2 may come 0 s after a job starts" in early, early
    assert "may come 15 s after" in so.time_warnings(so.SlurmOptions(time_min=2, signal_delay_s=75))[0]
    # What the time-out test uses (USR2 45-75 s after the start) and the defaults are fine.
    assert so.time_warnings(so.SlurmOptions(time_min=2, signal_delay_s=45)) == []
    assert so.time_warnings(so.SlurmOptions(time_min=48 * 60)) == []


def test_time_limit_warning_before_submission(slurm_cluster, demo_data, tmp_path, capsys):
    """A time limit that lets USR2 reach a job still starting up is a warning, printed before sbatch is asked
    (which here refuses the partition, so nothing runs)."""
    cfg = write_config(tmp_path / "run.yaml", demo_data.root, tmp_path / "runs", "tl", run_id="r0")
    rc = slurm.main([str(cfg), "--partition", "no_such_partition", "--time", "1", "--signal-delay", "45"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "warning: --time 1 min with --signal-delay 45 s" in err and "USR2 may come 0 s after" in err, err


def _sacct_attempts(job: str) -> list[str]:
    """Slurm's accounting record of every start of `job` (-D: requeued attempts too), oldest first."""
    r = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job], capture_output=True, text=True,
                       check=True)
    return [ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()]


def _task_pid(run_dir: Path) -> int:
    """The pid of the (single) task of the run's current job, from its last `workers` event."""
    pid = int(events(run_dir, "workers")[-1].rsplit(":", 1)[1])
    assert "submitit" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"), pid
    return pid


@pytest.mark.slow
def test_time_limit_requeue_give_up_and_resume(slurm_cluster, demo_data, tmp_path, capsys):
    """Two runs hit their Slurm time limit (--time 2) at once. Slurm sends USR2 --signal-delay seconds before it
    (its 30 s timer makes that up to 30 s earlier still); submitit counts each such signal against
    --max-num-timeout. Run `a` (--max-num-timeout 1) checkpoints, requeues itself and resumes from its checkpoint;
    its requeued job gets a longer limit (scontrol update) so that it finishes. Run `b` (--max-num-timeout 0) is
    given up at its first limit with a one-line reason, and `slurm --resume` continues it from its checkpoint.

    So that a short run is still running when the limit comes, whatever the machine's speed, the test stops each
    first task (SIGSTOP) after two epochs: Slurm sends SIGCONT along with the USR2 of --signal."""
    out = tmp_path / "runs"
    epochs = 24
    limit = ["--partition", "low", "--time", "2", "--signal-delay", "45"]
    runs = {}
    for name, max_timeouts in (("a", 1), ("b", 0)):
        cfg = write_config(tmp_path / f"{name}.yaml", demo_data.root, out, f"tl{name}", epochs=epochs, run_id="r0",
                           overrides={"train": {"batch_size": 16}})
        assert slurm.main([str(cfg), *limit, "--max-num-timeout", str(max_timeouts)]) == 0
        capsys.readouterr()
        job = json.loads((out / f"tl{name}" / sq.JOBS_FILE).read_text())["runs"]["r0"]["job_id"]
        runs[name] = (cfg, out / f"tl{name}" / "r0", job)
    (cfg_a, dir_a, job_a), (cfg_b, dir_b, job_b) = runs["a"], runs["b"]

    def resumes(run_dir: Path) -> list[int]:
        return [int(ln.split(": epoch ")[1].split()[0]) for ln in events(run_dir, "resume")]

    stopped: list[int] = []
    try:
        for run_dir in (dir_a, dir_b):
            wait_until("epoch 2", lambda: status(run_dir).get("epoch", 0) >= 2, 240, every=0.1)
            stopped.append(_task_pid(run_dir))
            os.kill(stopped[-1], signal.SIGSTOP)
        # a: the time-limit signal -> checkpoint() -> requeue; the requeued job then gets 10 minutes.
        wait_until("a's time-limit requeue", lambda: len(events(dir_a, "requeue")) == 1, 150)
        subprocess.run(["scontrol", "update", f"JobId={job_a}", "TimeLimit=10"], check=True, capture_output=True)
        # b: the same signal, but no requeue left: the job fails and says how to continue.
        wait_until("b to be given up", lambda: "not requeued at the time limit" in (status(dir_b).get("error") or ""),
                   60)
    finally:
        for pid in stopped:  # a task the signal did not wake (the test failed) must not stay stopped
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    wait_until("b's job to end", lambda: job_state(job_b) in ("GONE", "FAILED"), 60)
    stopped_b = status(dir_b)
    assert "--resume" in stopped_b["error"] and 2 <= stopped_b["epoch"] < epochs, stopped_b
    # Out of the queue, the job is never shown live, whatever accounting says yet; FAILED once it is known.
    wait_until("slurm-status to show b's job FAILED",
               lambda: slurm_status.study_status(out / "tlb")[0]["slurm_state"] == "FAILED", 120)
    assert slurm_status.status_main([str(out / "tlb")]) == 0
    table = capsys.readouterr().out
    assert "FAILED" in table and "not requeued at the time limit" in table, table
    assert slurm.main([str(cfg_b), "--partition", "low", "--time", "10", "--resume"]) == 0
    assert "submitting 1 run(s)" in capsys.readouterr().out
    job_b2 = json.loads((out / "tlb" / sq.JOBS_FILE).read_text())["runs"]["r0"]["job_id"]
    assert job_b2 != job_b

    for run_dir, job in ((dir_a, job_a), (dir_b, job_b2)):
        wait_until(f"{run_dir.parent.name} to finish", lambda: status(run_dir).get("state") == "finished", 300)
        wait_until(f"job {job} to leave the queue", lambda: job_state(job) in ("GONE", "COMPLETED"), 60)

    # Every epoch exactly once, and one resume from the checkpoint named when the signal came (not from scratch).
    for run_dir in (dir_a, dir_b):
        assert [r["epoch"] for r in _rows(run_dir)] == list(range(1, epochs + 1)), run_dir
        (requeue,), (start,) = events(run_dir, "requeue"), resumes(run_dir)
        (stop,), (resumed,) = _stops(run_dir), _resumed_updates(run_dir)
        # The stop's checkpoint, named when the signal came, is where the restart continued: nothing recomputed.
        assert 2 <= start < epochs and f"epoch {start} " in requeue and f"update {stop})" in requeue, requeue
        assert resumed == stop, (stop, resumed)
        assert len(events(run_dir, "start")) == 1  # the first job only: nobody started the run over
        assert [r["resumed_from"] for r in _rows(run_dir)] == [None] * start + [start] * (epochs - start)
    # Exact resume: the same metrics as an uninterrupted run through the local engine.
    spec, = load_runs(cfg_a, [])[0]
    assert _comparable(_rows(dir_a), drop=("resumed_from",)) == _comparable(
        _local_reference(spec, tmp_path / "local"), drop=("resumed_from",))

    # a: one Slurm job started twice (Slurm's restart count), requeued by submitit as a time-out with no
    # time-out left, then completed; Slurm's accounting has both attempts.
    attempts = events(dir_a, "slurm")
    assert [a.split(" restart ")[1].split()[0] for a in attempts] == ["0", "1"] and all(
        f"job {job_a} " in a for a in attempts), attempts
    log_a = (out / "tla" / sq.SUBMITIT_DIR / f"{job_a}_0_log.out").read_text()
    assert "this job is timed-out" in log_a and f"Requeued job {job_a} (0 remaining timeouts)" in log_a
    wait_until("a's two attempts in accounting", lambda: _sacct_attempts(job_a) == ["REQUEUED", "COMPLETED"], 60)

    # b: given up by submitit (its job FAILED in Slurm's record), then a second job finished the run.
    log_b = (out / "tlb" / sq.SUBMITIT_DIR / f"{job_b}_0_log.out").read_text()
    assert "this job is timed-out" in log_b and "timed-out too many times" in log_b
    wait_until("b's jobs in accounting", lambda: (_sacct_attempts(job_b), _sacct_attempts(job_b2)) == (
        ["FAILED"], ["COMPLETED"]), 60)
    assert len(events(dir_b, "not-requeued")) == 1
    assert [a.split(" restart ")[0].split("job ")[1] for a in events(dir_b, "slurm")] == [job_b, job_b2]
