"""Tune's live output for studies of any size: a count of runs by condition and state, then the running
runs only (at most `max_progress_rows` of them), instead of one row per run of the study every few seconds
(a 500-run study would print 500 lines each time, and Tune prints every row at the end)."""
from __future__ import annotations

from collections import Counter

from ray.tune import CLIReporter

STATES = ("PENDING", "RUNNING", "TERMINATED", "ERROR", "PAUSED")
STATE_NAMES = {"PENDING": "pending", "RUNNING": "running", "TERMINATED": "done", "ERROR": "error", "PAUSED": "paused"}


def summary_lines(trials, conditions: dict[str, str]) -> list[str]:
    """One line per condition (runs by state), and a total line. `conditions` maps run_id -> condition."""
    by = Counter((conditions.get(t.config.get("run_id"), "?"), t.status) for t in trials)
    names = sorted({c for c, _ in by})
    shown = [s for s in STATES if any(by[(c, s)] for c in names)] or ["PENDING"]
    width = max([len("condition"), *map(len, names)])
    head = f"{'condition':<{width}}  " + "  ".join(f"{STATE_NAMES[s]:>8}" for s in shown)
    rows = [f"{c:<{width}}  " + "  ".join(f"{by[(c, s)]:>8}" for s in shown) for c in names]
    total = f"{'all':<{width}}  " + "  ".join(f"{sum(by[(c, s)] for c in names):>8}" for s in shown)
    return [head, *rows, total]


def running_lines(trials, columns: dict[str, str], limit: int) -> list[str]:
    """The running runs with their latest reported metrics, at most `limit` lines."""
    running = sorted((t for t in trials if t.status == "RUNNING"), key=lambda t: str(t.config.get("run_id")))
    out = []
    for t in running[:limit]:
        last = t.last_result or {}
        cells = [f"{name}={last[key]:.4g}" if isinstance(last.get(key), float) else f"{name}={last[key]}"
                 for key, name in columns.items() if last.get(key) is not None]
        out.append(f"  {t.config.get('run_id')}  " + "  ".join(cells))
    if len(running) > limit:
        out.append(f"  ... and {len(running) - limit} more running")
    return out


class StudyReporter(CLIReporter):
    def __init__(self, conditions: dict[str, str], **kwargs):
        super().__init__(**kwargs)
        self._conditions = conditions

    def report(self, trials, done: bool, *sys_info: str) -> None:
        lines = ["== Study ==", *summary_lines(trials, self._conditions)]
        if not done:
            lines += running_lines(trials, dict(self._metric_columns), self._max_progress_rows)
        self._print("\n".join(lines))
