"""Fault injection for the Ray tests, from the test side: `python -m orchestrator` as users run it, with the
training loop wrapped by a jobs.train hook that SIGKILLs its own process right after epoch k is reported.

    python -m tests.ray_faults --fail-at-epoch 1 --marker PATH [--rank R] -- run|sweep CONFIG [key=value ...]

The wrapped loop goes to the workers through the orchestrator's `entry` seam; the fault's parameters through the
environment, which the processes of the Ray this driver starts inherit. The fault fires once per marker: the
first process to create the marker file (rank R, default the last rank, after epoch k) writes its rank and pid
there and dies; the restarted processes find the marker and train on.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

FAULT_ENV = "RAY_TEST_FAULT"
ENTRY = "tests.ray_faults:train_then_die"


def cli(*args: str, fail_at_epoch: int, marker, rank: int | None = None) -> list[str]:
    """The command line of `python -m orchestrator *args` with the fault (for tests.test_ray_run.isolated)."""
    extra = [] if rank is None else ["--rank", str(rank)]
    return [sys.executable, "-m", "tests.ray_faults", "--fail-at-epoch", str(fail_at_epoch), "--marker", str(marker),
            *extra, "--", *args]


def die_once(marker: str, rank: int, epoch: int) -> None:
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f"rank {rank} pid {os.getpid()} killed itself after epoch {epoch}\n".encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def train_then_die(spec, ctx):
    """jobs.train's loop, with an after-epoch hook that kills this process after the fault's epoch, once."""
    from jobs.loop_state import Hooks
    from jobs.train import train_loop

    fault = json.loads(os.environ[FAULT_ENV])
    rank = ctx.world_size - 1 if fault["rank"] is None else fault["rank"]

    def after_epoch(state) -> None:
        epoch = state.row["epoch"]
        if epoch == fault["epoch"] and ctx.rank == rank:
            die_once(fault["marker"], ctx.rank, epoch)

    return train_loop(spec, ctx, Hooks(after_epoch=after_epoch))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.ray_faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fail-at-epoch", type=int, required=True)
    p.add_argument("--marker", required=True, help="file created by the process that kills itself")
    p.add_argument("--rank", type=int, default=None, help="the rank that kills itself (default: the last)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the arguments of python -m orchestrator")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    os.environ[FAULT_ENV] = json.dumps({"epoch": args.fail_at_epoch, "marker": args.marker, "rank": args.rank})
    from orchestrator.__main__ import main as orchestrator_main

    return orchestrator_main(command, entry=ENTRY)


if __name__ == "__main__":
    sys.exit(main())
