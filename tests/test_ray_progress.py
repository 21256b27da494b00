"""Tune's live output for a 500-run study: a few summary lines and the running runs, not 500 rows."""
from __future__ import annotations

import io
from contextlib import redirect_stdout

from ray.tune.experiment import Trial

from orchestrator.ray_progress import StudyReporter, summary_lines


def trials(n_conditions: int, seeds: int, running: int, done: int) -> tuple[list[Trial], dict[str, str]]:
    out, conditions = [], {}
    for c in range(n_conditions):
        for s in range(seeds):
            run_id = f"cond{c}-s{s}"
            conditions[run_id] = f"cond{c}"
            t = Trial("fn", config={"run_id": run_id}, stub=True)
            out.append(t)
    for t in out[:done]:
        t.set_status(Trial.TERMINATED)
    for t in out[done:done + running]:
        t.set_status(Trial.RUNNING)
    return out, conditions


def test_summary_counts_runs_by_condition_and_state():
    ts, conditions = trials(5, 100, running=8, done=150)
    lines = summary_lines(ts, conditions)
    assert lines[0].split() == ["condition", "pending", "running", "done"]
    assert lines[1].split() == ["cond0", "0", "0", "100"]
    assert lines[2].split() == ["cond1", "42", "8", "50"]
    assert lines[-1].split() == ["all", "342", "8", "150"]
    assert len(lines) == 7


def test_a_500_run_report_stays_short():
    ts, conditions = trials(5, 100, running=8, done=150)
    reporter = StudyReporter(conditions, metric_columns={"epoch": "epoch"}, parameter_columns=[], max_progress_rows=20)
    buf = io.StringIO()
    with redirect_stdout(buf):
        reporter.report(ts, False)
        mid = buf.getvalue()
        reporter.report(ts, True)
    end = buf.getvalue()[len(mid):]
    assert mid.count("cond3-s") == 0 and len([ln for ln in mid.splitlines() if ln.startswith("  cond")]) == 8    # only the running runs get rows
    assert len(mid.splitlines()) < 40 and len(end.splitlines()) < 10   # Tune's own table would print 500 rows at the end
