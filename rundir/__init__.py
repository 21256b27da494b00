"""The run-directory contract, at the bottom of every layer: what a study folder and its run folders hold.

File names (`names`), the metrics schema (`schema`) and its file (`metrics`), status.json (`status`), the one
definition of a run's state (`state`), events.log (`events`), the study index runs.json (`index`), strategy
expressions (`expression`), atomic writes (`atomic`) and the one-line error printer (`errors`).
Only the standard library and pyarrow: `jobs`, `orchestrator` and `analysis` all import it, it imports none.
"""
from rundir.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from rundir.errors import EXIT_BAD_INPUT, EXIT_LOCKED, error_line, exception_line, print_error, print_errors
from rundir.events import EventLog, read_events, read_timed_events
from rundir.expression import parse_scalar, split_expression
from rundir.index import read_index, write_index
from rundir.metrics import (
    MetricsError,
    append_row,
    check_metrics,
    check_row,
    epochs_done,
    read_metrics,
    truncate_after,
)
from rundir.names import (
    BENCH_FILE,
    CHECKPOINT_DIR,
    EVENTS_FILE,
    LOCK_FILE,
    METRICS_FILE,
    RUN_MARKERS,
    RUNS_FILE,
    SPEC_FILE,
    STATUS_FILE,
)
from rundir.schema import METRICS_COLUMNS, METRICS_SCHEMA, best_metric_column
from rundir.stages import (
    Node,
    blocker,
    condition_graph,
    dependencies,
    index_nodes,
    node_from_spec,
    stage_lines,
    stage_of,
)
from rundir.state import RunState, State, classify, run_state
from rundir.status import RECORDED_STATES, check_status, read_status, write_status

__all__ = [
    "BENCH_FILE", "CHECKPOINT_DIR", "EVENTS_FILE", "EXIT_BAD_INPUT", "EXIT_LOCKED", "LOCK_FILE", "METRICS_COLUMNS",
    "METRICS_FILE", "METRICS_SCHEMA", "RECORDED_STATES", "RUNS_FILE", "RUN_MARKERS", "SPEC_FILE", "STATUS_FILE",
    "EventLog", "MetricsError", "Node", "RunState", "State", "append_row", "atomic_write_bytes", "atomic_write_json",
    "atomic_write_text", "best_metric_column", "blocker", "check_metrics", "check_row", "check_status", "classify", "condition_graph", "dependencies", "epochs_done", "error_line",
    "exception_line", "index_nodes", "node_from_spec", "parse_scalar", "print_error", "print_errors", "read_events", "read_index", "read_timed_events", "read_metrics",
    "read_status", "run_state", "split_expression", "stage_lines", "stage_of", "truncate_after", "write_index", "write_status",
]
