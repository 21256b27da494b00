"""A stop request from outside the run (Slurm's USR2, SIGTERM, Ctrl-C, a driver's stop-request file), the way
Lightning handles signals.

The signal handler only sets a flag: a handler that checkpointed or exited itself could run in the middle
of an optimizer step, a collective or a checkpoint write. The training loop reads the flag at its next
agreement point (jobs.train_step: every `checkpoint.sync_every` updates, all ranks together), writes a
checkpoint at that update, records the run as `preempted` and raises `Preempted`; the engine then exits or
requeues. A second signal changes nothing (the checkpoint being written is never interrupted); SIGKILL is
the way to stop without one.

Where no handler of ours can run in the training process (a Ray worker: Ray core owns its SIGTERM and the
train function runs in a thread), the engine's driver takes the signal and writes `STOP_REQUEST_FILE` into the
run folder (orchestrator.ray_stop). Rank 0 looks for it at the agreement points only (one stat per
`sync_every` updates), and the agreement's collective carries it to the other ranks; the run removes it once
it has stopped. Any engine's run can be stopped so, e.g. `touch <run_dir>/stop.request`.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from rundir import STOP_REQUEST_FILE


class Preempted(Exception):
    """The run stopped on request after writing a checkpoint; it continues from exactly there.

    Not a RuntimeError: callers that treat runtime errors as failures must not catch it as one."""

    def __init__(self, message: str, checkpoint: Path | None = None, update: int = 0, epoch: int = 0):
        super().__init__(message)
        self.checkpoint, self.update, self.epoch = checkpoint, update, epoch


class StoppedEarly(Exception):
    """The engine ended the run after the epoch it was just told about, short of its planned epochs, for good (a
    tuning trial that its scheduler stopped, e.g. ASHA at a rung): the loop records the run as `stopped` at that
    epoch. Not a failure, and nothing to continue: the engine raises it from `ctx.report`."""


class StopRequest:
    """A flag that signal handlers set; `stop_requested()` is what an engine context exposes to the loop."""

    def __init__(self) -> None:
        self.signal_name: str | None = None   # the first signal received, e.g. "SIGUSR2"
        self.count = 0                          # signals received (a second one changes nothing)

    def __call__(self, signum: int, frame: Any = None) -> None:
        # Only flags: no I/O, no locks, nothing that could deadlock in the middle of the interrupted code.
        self.count += 1
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    def requested(self) -> bool:
        return self.signal_name is not None

    @contextlib.contextmanager
    def installed(self, *signums: int) -> Iterator["StopRequest"]:
        """Handle `signums` with this flag while the block runs, then put back the previous handlers. Outside
        the main thread (where Python allows no handler) nothing is installed."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous: dict[int, Callable | int | None] = {s: signal.signal(s, self) for s in signums}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def stop_requested(ctx) -> bool:
    """Whether this rank was asked to stop: its engine's flag (optional member `stop_requested() -> bool`,
    jobs.context) or, on rank 0, a stop-request file in the run folder. Called at agreement points only."""
    fn = getattr(ctx, "stop_requested", None)
    if callable(fn) and fn():
        return True
    return ctx.rank == 0 and (Path(ctx.run_dir) / STOP_REQUEST_FILE).exists()


def withdraw_request(run_dir: Path) -> None:
    """The request was acted on: a later start of the run (`--resume`, the same command) trains on."""
    (Path(run_dir) / STOP_REQUEST_FILE).unlink(missing_ok=True)
