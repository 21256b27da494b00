"""A single-process training run SIGKILLed after a mid-epoch checkpoint, started again, compared with an
uninterrupted run (used by bench/gpu_check.py; the Ray version with several workers is bench/worker_kill.py).

Both runs are `python -m jobs train CONFIG ...` subprocesses, so the kill is a real process death: nothing of
the killed process survives but what it wrote to disk.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from worker_kill import EXACT_COLUMNS, _checkpoint, _events, _resume, _rows

REPO = Path(__file__).resolve().parents[1]
# How far a resumed GPU run may end from the uninterrupted one, per epoch (absolute differences). cuDNN chooses
# its algorithms anew in each process (benchmark mode) and atomics reorder sums, so the two runs drift apart by
# rounding; the schedule and the epoch numbers do not depend on it and must match exactly.
TOLERANCE = {"epoch": 0.0, "lr": 1e-12, "train_loss": 0.05, "top1": 2.0, "top5": 2.0, "ema_top1": 2.0, "ema_top5": 2.0}
_ENGINE_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENGINE_VARS}  # one process, not a torchrun rank
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _start(config: Path, overrides: list[str], out: Path, run_id: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "jobs", "train", "--resume", str(config), *overrides, f"output_root={out}",
           "study=kill-resume", f"run_id={run_id}"]
    log = (out / f"{run_id}.log").open("a")
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(proc: subprocess.Popen, found: Callable[[], dict | None], timeout_s: float) -> dict | None:
    """Poll until `found()` returns something, the process exits, or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        hit = found()
        if hit is not None or proc.poll() is not None:
            return hit if hit is not None else found()
        time.sleep(0.05)
    return None


def _finish(proc: subprocess.Popen, timeout_s: float) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise RuntimeError(f"training run pid {proc.pid} did not finish in {timeout_s:.0f} s") from None


def _tail(out: Path, run_id: str) -> str:
    path = out / f"{run_id}.log"
    return " | ".join(path.read_text().strip().splitlines()[-3:]) if path.exists() else ""


def compare(reference: list[dict], other: list[dict]) -> dict[str, float]:
    """Largest absolute difference per column over the epochs (0 when both are missing)."""
    diffs: dict[str, float] = {}
    for col in EXACT_COLUMNS:
        worst = 0.0
        for a, b in zip(reference, other):
            x, y = a.get(col), b.get(col)
            if x is None or y is None:
                worst = worst if x is y else float("inf")
            else:
                worst = max(worst, abs(float(x) - float(y)))
        diffs[col] = worst
    return diffs


def kill_and_resume(config: Path, overrides: list[str], out: Path, *, exact: bool, timeout_s: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    # The uninterrupted run alongside: the two do not share anything but the machine.
    ref = _start(config, overrides, out, "reference")
    try:
        result = _killed_run(config, overrides, out, timeout_s)
    finally:
        ref_rc = _finish(ref, timeout_s)
    if ref_rc != 0:
        raise RuntimeError(f"the uninterrupted run failed: {_tail(out, 'reference')}")
    rows_ref, rows_killed = _rows(out / "kill-resume" / "reference"), _rows(out / "kill-resume" / "killed")
    diffs = compare(rows_ref, rows_killed)
    complete = len(rows_ref) == len(rows_killed) > 0
    bitwise = complete and all(d == 0 for d in diffs.values())
    within = complete and all(diffs[c] <= TOLERANCE[c] for c in EXACT_COLUMNS)
    return {
        **result, "epochs": len(rows_killed), "bitwise_equal": bitwise, "within_tolerance": within,
        "exact_required": exact, "max_abs_diff": diffs, "max_abs_diff_train_loss": diffs["train_loss"],
        "passed": result["resumed_from_kill_checkpoint"] and (bitwise if exact else within),
    }


def _killed_run(config: Path, overrides: list[str], out: Path, timeout_s: float) -> dict:
    """Start, SIGKILL after the first mid-epoch checkpoint, start again; where it resumed from."""
    run_dir = out / "kill-resume" / "killed"

    def mid_epoch_checkpoint() -> dict | None:
        return next((c for c in map(_checkpoint, _events(run_dir)) if c and c["batch"] > 0), None)

    victim = _start(config, overrides, out, "killed")
    seen = _wait_for(victim, mid_epoch_checkpoint, timeout_s)
    if seen is None or victim.poll() is not None:
        _finish(victim, 60)
        raise RuntimeError("the run ended (or timed out) before a mid-epoch checkpoint could be followed by a kill: "
                           f"{_tail(out, 'killed')}")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    written = [c for c in map(_checkpoint, _events(run_dir)) if c]  # what the killed process managed to write
    t_restart = time.perf_counter()
    again = _start(config, overrides, out, "killed")
    resumed = _wait_for(again, lambda: next((r for r in map(_resume, _events(run_dir)) if r), None), timeout_s)
    restart_to_resume_s = time.perf_counter() - t_restart
    if _finish(again, timeout_s) != 0:
        raise RuntimeError(f"the resumed run failed: {_tail(out, 'killed')}")
    newest = written[-1] if written else None
    return {
        "kill_after": seen, "newest_checkpoint_before_kill": newest, "resumed_from": resumed,
        "resumed_mid_epoch": bool(resumed and resumed["batch"] > 0),
        "resumed_newest": bool(resumed and newest and resumed["name"] == newest["name"]),
        # the checkpoint the kill waited for, or one the process wrote before the kill landed
        "resumed_from_kill_checkpoint": bool(resumed and resumed["update"] >= seen["update"]),
        "restart_to_resume_s": restart_to_resume_s,
    }
