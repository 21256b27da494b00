"""The run-directory contract, at the bottom of every layer: what a study folder and its run folders hold.

A run folder as one typed record (`record`: the recorded spec.json, status, state, metrics, best export), file
names (`names`), the metrics schema (`schema`) and its file (`metrics`), status.json (`status`), the one
definition of a run's state (`state`), events.log (`events`), the study index runs.json (`index`), strategy
expressions (`expression`), atomic writes (`atomic`) and the one-line error printer (`errors`).
Only the standard library and pyarrow: `jobs`, `orchestrator` and `analysis` all import it, it imports none.
"""
from rundir.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from rundir.errors import (
    EXIT_BAD_INPUT,
    EXIT_LOCKED,
    EXIT_PREEMPTED,
    error_line,
    exception_line,
    print_error,
    print_errors,
)
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
    BEST_DIR,
    BEST_WEIGHTS,
    CHECKPOINT_DIR,
    EVENTS_FILE,
    LOCK_FILE,
    METRICS_FILE,
    RUN_MARKERS,
    RUNS_FILE,
    SPEC_FILE,
    SPEC_JSON,
    STATUS_FILE,
    STOP_REQUEST_FILE,
)
from rundir.record import (
    Architecture,
    RecordedSpec,
    RunRecord,
    check_spec,
    find_runs,
    node_from_spec,
    write_spec_record,
)
from rundir.schema import METRICS_COLUMNS, METRICS_SCHEMA, best_metric_column
from rundir.stages import (
    RUN_PREFIX,
    Node,
    blocker,
    check_dependencies,
    condition_graph,
    dependencies,
    index_nodes,
    named_conditions,
    needed_conditions,
    part_of,
    run_condition,
    run_source,
    stage_lines,
    stage_of,
)
from rundir.state import RunState, State, run_state
from rundir.status import RECORDED_STATES, check_status, read_status, write_status

__all__ = [
    "BENCH_FILE", "BEST_DIR", "BEST_WEIGHTS", "CHECKPOINT_DIR", "EVENTS_FILE", "EXIT_BAD_INPUT", "EXIT_LOCKED",
    "EXIT_PREEMPTED", "LOCK_FILE", "METRICS_COLUMNS", "METRICS_FILE", "METRICS_SCHEMA", "RECORDED_STATES", "RUNS_FILE", "RUN_MARKERS",
    "RUN_PREFIX", "SPEC_FILE", "SPEC_JSON", "STATUS_FILE", "STOP_REQUEST_FILE",
    "Architecture", "EventLog", "MetricsError", "Node", "RecordedSpec", "RunRecord", "RunState", "State",
    "append_row", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "best_metric_column", "blocker",
    "check_dependencies", "check_metrics", "check_row", "check_spec", "check_status", "condition_graph",
    "dependencies", "epochs_done", "error_line", "exception_line", "find_runs", "index_nodes", "named_conditions",
    "needed_conditions", "node_from_spec", "parse_scalar", "part_of", "print_error", "print_errors", "read_events",
    "read_index", "read_metrics", "read_status", "read_timed_events", "run_condition", "run_source", "run_state",
    "split_expression", "stage_lines", "stage_of", "truncate_after", "write_index", "write_spec_record",
    "write_status",
]
