"""A run's events.log: append-only, human-readable, one line per event."""
from __future__ import annotations

import calendar
import socket
import time
from pathlib import Path

from rundir.names import EVENTS_FILE


class EventLog:
    """`<UTC time> <host> rank<r> <kind>: <text>` lines appended to `run_dir/events.log`."""

    def __init__(self, run_dir: Path | str, rank: int = 0):
        self.path = Path(run_dir) / EVENTS_FILE
        self.rank = rank
        self.host = socket.gethostname()

    def __call__(self, kind: str, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = f"{stamp} {self.host} rank{self.rank} {kind}: {' '.join(str(text).split())}\n"
        with open(self.path, "a") as f:
            f.write(line)


def read_events(run_dir: Path | str, kind: str | None = None) -> list[str]:
    """The text of each event (of `kind`, or all), oldest first; [] when the log does not exist."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        head, sep, text = line.partition(": ")
        if sep and (kind is None or head.rsplit(" ", 1)[-1] == kind):
            out.append(text)
    return out


def read_timed_events(run_dir: Path | str, kind: str | None = None) -> list[tuple[float, str, str]]:
    """(unix time, kind, text) of each event (of `kind`, or all), oldest first; times to the second."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        head, sep, text = line.partition(": ")
        parts = head.split(" ")
        if not sep or len(parts) < 4 or (kind is not None and parts[-1] != kind):
            continue
        try:
            when = calendar.timegm(time.strptime(parts[0], "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            continue
        out.append((float(when), parts[-1], text))
    return out
