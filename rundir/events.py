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


def _entries(run_dir: Path | str, kind: str | None) -> list[tuple[list[str], str]]:
    """(head fields, text) of each line `<time> <host> <pid> <kind>: <text>` of `kind` (or all), oldest first."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        head, sep, text = line.partition(": ")
        parts = head.split(" ")
        if sep and (kind is None or parts[-1] == kind):
            out.append((parts, text))
    return out


def read_events(run_dir: Path | str, kind: str | None = None) -> list[str]:
    """The text of each event (of `kind`, or all), oldest first; [] when the log does not exist."""
    return [text for _, text in _entries(run_dir, kind)]


def read_timed_events(run_dir: Path | str, kind: str | None = None) -> list[tuple[float, str, str]]:
    """(unix time, kind, text) of each event (of `kind`, or all), oldest first; times to the second."""
    out = []
    for parts, text in _entries(run_dir, kind):
        try:
            when = calendar.timegm(time.strptime(parts[0], "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            continue
        if len(parts) >= 4:
            out.append((float(when), parts[-1], text))
    return out
