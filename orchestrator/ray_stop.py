"""Stopping a Ray study or run without losing an update: SIGTERM (`ray job stop`, `kill`) or SIGINT (Ctrl-C)
to the driver (`python -m orchestrator sweep|run`).

Ray core owns SIGTERM in its workers (its handler ends the process) and runs the train function in a thread,
where Python allows no handler, so the signal is taken where it arrives: the driver. Its handler only sets a
flag (jobs.stop.StopRequest). Tune or Train runs in a second thread, so that neither installs its own SIGINT
handler (both would abort the runs), while the main thread waits and, once the flag is set, writes a
stop-request file into each run folder of the plan (jobs.stop). Rank 0 of each run reads it at its next
agreement point, the ranks checkpoint at that update, the loop records the run as `preempted` and the run's
train function returns normally (orchestrator.ray_engine, ray_in_trial), so neither Train nor Tune restarts it;
no new trial starts (the StageSearcher asks `requested`). A run whose trial starts after the request gets its
file as soon as its folder appears and stops before or at its first agreement point. The driver then exits
with EXIT_PREEMPTED; `--resume` continues every run from exactly the update it stopped at.

A second signal changes nothing; SIGKILL stops without checkpoints. `ray job stop` SIGKILLs the driver
RAY_JOB_STOP_WAIT_TIME_S (Ray's default: 3 s) after its SIGTERM: README, "Failures and resuming".
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from jobs.stop import StopRequest
from rundir import STOP_REQUEST_FILE

T = TypeVar("T")
POLL_S = 0.5


class DriverStop:
    """Runs the engine (`run(fn)`) with SIGTERM and SIGINT turned into stop requests of `run_dirs`."""

    def __init__(self, run_dirs: Iterable[str | Path]):
        self.run_dirs = [Path(d) for d in run_dirs]
        self.request = StopRequest()
        self._asked: set[Path] = set()

    def requested(self) -> bool:
        return self.request.requested()

    def run(self, fn: Callable[[], T]) -> T:
        """`fn()` in a second thread; the main thread relays a stop request to the runs until `fn` returns."""
        self._withdraw()  # a request left by a driver that was killed before its runs stopped
        outcome: dict[str, object] = {}

        def engine() -> None:
            try:
                outcome["value"] = fn()
            except BaseException as exc:  # handed to the main thread, which raises it
                outcome["error"] = exc

        thread = threading.Thread(target=engine, name="ray-engine", daemon=True)
        try:
            with self.request.installed(signal.SIGTERM, signal.SIGINT):
                thread.start()
                while thread.is_alive():
                    thread.join(POLL_S)
                    if self.requested():
                        self._ask()
        finally:
            self._withdraw()  # the runs that stopped removed theirs; a run that never started must not find one
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome.get("value")  # type: ignore[return-value]

    def _ask(self) -> None:
        """A stop-request file in every run folder that exists (a run creates its folder when it starts)."""
        if not self._asked:
            print(f"stop requested ({self.request.signal_name}): each run checkpoints at its next agreement point "
                  f"(checkpoint.sync_every updates) and stops; SIGKILL stops without checkpoints", file=sys.stderr,
                  flush=True)
        for run_dir in self.run_dirs:
            if run_dir not in self._asked and run_dir.is_dir():
                (run_dir / STOP_REQUEST_FILE).write_text(f"{self.request.signal_name}\n")
                self._asked.add(run_dir)

    def _withdraw(self) -> None:
        for run_dir in self.run_dirs:
            (run_dir / STOP_REQUEST_FILE).unlink(missing_ok=True)
