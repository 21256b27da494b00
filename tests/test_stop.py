"""A stop request loses nothing (jobs.stop): SIGTERM to `python -m jobs train`, a signal during a checkpoint
write, a second signal, and a signal before the first update. Each time the run checkpoints at the update the
stop was acted on, is recorded as preempted, and the continued run's metrics are bitwise those of an
uninterrupted one (one torch thread everywhere, as the subprocess gets)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import rundir
from jobs import checkpoint_files as ckpt
from jobs.local import LocalContext
from jobs.stop import Preempted, StoppedEarly
from jobs.train import Hooks, train_loop
from rundir import CHECKPOINT_DIR, EVENTS_FILE, STOP_REQUEST_FILE
from tests.tiny import DEMO, TINY, one_thread, run_local, stable_rows, tiny_spec

ROOT = Path(__file__).resolve().parents[1]
# 2 epochs of 12 updates; agreement every 3 updates; a step checkpoint every 4 (the stop needs none).
CONFIG = ("train.epochs=2", "train.batch_size=128", "train.ema=true", "checkpoint.every_steps=0",
          "checkpoint.sync_every=3", "logging.tensorboard=false", "logging.every_steps=1")


@pytest.fixture(autouse=True)
def single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def reference(demo_data, tmp_path_factory):
    """The uninterrupted run's metrics."""
    spec = tiny_spec(demo_data, tmp_path_factory.mktemp("reference"), *CONFIG)
    with one_thread():
        run_local(spec)
    return stable_rows(spec.run_dir)


def _events(run_dir: Path, kind: str) -> list[str]:
    return [ln for ln in (run_dir / EVENTS_FILE).read_text().splitlines() if f" {kind}: " in ln]


def _resumed_update(run_dir: Path) -> int:
    return int(_events(run_dir, "resume")[-1].rsplit(" update ", 1)[1])


def test_sigterm_to_jobs_train_checkpoints_and_the_same_command_continues(demo_data, reference, tmp_path):
    argv = [sys.executable, "-m", "jobs", "train", str(DEMO), f"data_root={demo_data.root}",
            f"output_root={tmp_path}", "run_id=tiny", *TINY, *CONFIG]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:  # the console's step lines: SIGTERM once update 2 of epoch 1 is done
            lines.append(line)
            if "epoch 1/2 step 2/" in line:
                proc.send_signal(signal.SIGTERM)
                break
        out = "".join(lines) + proc.stdout.read()
        assert proc.wait(timeout=300) == 75, out  # EX_TEMPFAIL: stopped, the same command continues
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run_dir = tmp_path / "demo" / "tiny"
    status = rundir.read_status(run_dir)
    assert status["state"] == "preempted" and "run the same command to continue" in out, (status, out)
    stop = status["update"]
    assert stop >= 3 and stop % 3 == 0, stop  # an agreement point after the signal (every 3 updates)
    latest = ckpt.latest_valid(run_dir / CHECKPOINT_DIR)
    assert ckpt.read_manifest(latest)["num_updates"] == stop
    assert rundir.run_state(run_dir, 2).state is rundir.State.UNFINISHED

    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr  # no --resume needed after a stop request
    assert _resumed_update(run_dir) == stop  # zero updates computed twice
    assert stable_rows(run_dir) == reference
    assert rundir.read_status(run_dir)["state"] == "finished"


def test_signals_during_a_checkpoint_write_and_a_second_signal(demo_data, reference, tmp_path):
    """SIGTERM arrives while a checkpoint file is being written (a profile hook sends it from inside
    jobs.checkpoint_files' writer); a second one arrives during the stop's own checkpoint. Both writes complete,
    the stop is acted on once, at the agreement point after the first signal."""
    spec = tiny_spec(demo_data, tmp_path, *CONFIG, "checkpoint.every_steps=4", "checkpoint.sync_every=100")
    ctx = LocalContext(spec.run_dir, use_gpu=False)
    writes = []

    def signal_inside_writes(frame, event, arg):
        if event == "call" and frame.f_code is ckpt._write_fsynced.__code__:
            name = Path(frame.f_locals["path"]).name
            writes.append(name)
            if name == "model.pt" and writes.count(name) <= 2:
                os.kill(os.getpid(), signal.SIGTERM)

    def arm(state):
        if state.num_updates == 3:  # the step checkpoint at update 4 is the next write
            sys.setprofile(signal_inside_writes)

    try:
        with ctx, ctx.stop.installed(signal.SIGTERM), pytest.raises(Preempted) as info:
            train_loop(spec, ctx, Hooks(after_step=arm))
    finally:
        sys.setprofile(None)
    assert ctx.stop.count == 2 and ctx.stop.signal_name == "SIGTERM"
    # The step checkpoint at update 4 was written completely although the signal came in the middle of it;
    # the next agreement point is update 8 (the next step checkpoint): the stop's checkpoint.
    folder = spec.run_dir / CHECKPOINT_DIR
    assert [ckpt.read_manifest(p)["num_updates"] for p in ckpt.numbered(folder)] == [8, 4]
    assert all(ckpt.verify(p) is None for p in ckpt.numbered(folder))
    assert info.value.update == 8 and rundir.read_status(spec.run_dir)["update"] == 8

    run_local(spec)
    assert _resumed_update(spec.run_dir) == 8
    assert stable_rows(spec.run_dir) == reference


def test_signal_before_the_first_update_writes_no_checkpoint(demo_data, reference, tmp_path):
    spec = tiny_spec(demo_data, tmp_path, *CONFIG)
    with LocalContext(spec.run_dir, use_gpu=False) as ctx, ctx.stop.installed(signal.SIGTERM):
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Preempted, match="before the first update"):
            train_loop(spec, ctx)
    assert ckpt.numbered(spec.run_dir / CHECKPOINT_DIR) == []
    status = rundir.read_status(spec.run_dir)
    assert (status["state"], status["update"], status["epoch"]) == ("preempted", 0, 0)
    assert "continues from the start (update 0)" in _events(spec.run_dir, "preempted")[0]
    run_local(spec)
    assert stable_rows(spec.run_dir) == reference


def test_a_stop_request_file_stops_the_run_at_the_next_agreement_point(demo_data, reference, tmp_path):
    """The engine-agnostic channel (what the Ray driver writes): rank 0 reads it at agreement points only."""
    spec = tiny_spec(demo_data, tmp_path, *CONFIG)
    request = spec.run_dir / STOP_REQUEST_FILE

    def ask(state):
        if state.num_updates == 4:  # after the agreement point at update 3: acted on at update 6
            request.write_text("test\n")

    with pytest.raises(Preempted) as info:
        run_local(spec, Hooks(after_step=ask))
    assert info.value.update == 6 and rundir.read_status(spec.run_dir)["update"] == 6
    assert not request.exists()  # withdrawn by the run that acted on it: the same command trains on
    run_local(spec)
    assert _resumed_update(spec.run_dir) == 6
    assert stable_rows(spec.run_dir) == reference


def test_an_engine_ending_the_run_early_is_recorded_stopped_not_failed(demo_data, tmp_path):
    """A tuning trial that its scheduler stops (ASHA): the engine ends it from `report` after epoch 1 of 2
    (orchestrator.ray_in_trial turns Tune's SystemExit(0) into StoppedEarly; tests/test_tune_study.py on real Ray).
    The loop records `stopped` at that epoch, without an error, and the run stays continuable; stopped on its
    last epoch, a run is finished."""

    class EndsAfterTheFirstEpoch(LocalContext):
        def report(self, metrics, checkpoint_dir):
            super().report(metrics, checkpoint_dir)
            raise StoppedEarly("stopped by the scheduler")

    spec = tiny_spec(demo_data, tmp_path, *CONFIG)
    with EndsAfterTheFirstEpoch(spec.run_dir, use_gpu=False) as ctx, pytest.raises(StoppedEarly):
        train_loop(spec, ctx)
    status = rundir.read_status(spec.run_dir)
    assert (status["state"], status["epoch"], status["error"]) == ("stopped", 1, None), status
    assert any(" stopped: stopped by the scheduler after epoch 1/2" in ln
               for ln in (spec.run_dir / EVENTS_FILE).read_text().splitlines())
    assert rundir.run_state(spec.run_dir, 2).describe() == "unfinished (1/2 epochs)"
    # a decision on the last row (ASHA's rung at max_t) has nothing left to stop: the run is finished
    last = tiny_spec(demo_data, tmp_path, *CONFIG, "train.epochs=1", run_id="last")
    with EndsAfterTheFirstEpoch(last.run_dir, use_gpu=False) as ctx:
        train_loop(last, ctx)
    assert rundir.read_status(last.run_dir)["state"] == "finished"
