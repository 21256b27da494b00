"""File names of a study directory and of its run directories: `<output_root>/<study>/<run_id>/...`.

Every package reads and writes these through the names here; nothing else spells them.
"""
from __future__ import annotations

# A run directory.
SPEC_FILE = "spec.yaml"           # the run spec the run (last) started with, for people: the code reads SPEC_JSON
SPEC_JSON = "spec.json"           # the same spec and the architecture built, read by rundir.record alone
METRICS_FILE = "metrics.parquet"  # one row per epoch, rundir.schema.METRICS_SCHEMA
CHECKPOINT_DIR = "checkpoints"    # ckpt-NNNNNN folders and best/ (written by jobs.checkpoint_files)
BEST_DIR = "best"                 # checkpoints/best/: the best export
BEST_WEIGHTS = "model.pt"         # its weights, what a later stage's `run:<condition>` starts from
EVENTS_FILE = "events.log"        # append-only, one line per event (rundir.events.EventLog)
STATUS_FILE = "status.json"       # {"state", "epoch", "epochs_total", "error", "updated"} (rundir.status)
STOP_REQUEST_FILE = "stop.request"  # a driver asks the run to stop with it (jobs.stop); the run removes it when it stops
LAYER_STATS_FILE = "layer_stats.parquet"  # optional (logging.layer_stats): per-block gradient norms (jobs.layer_stats)

# A study directory.
RUNS_FILE = "runs.json"           # run_id -> {condition, ablation, seed} of every planned run (rundir.index)
LOCK_FILE = ".study.lock"         # held by the one driver working on the study
BENCH_FILE = "bench.json"         # optional: `python -m jobs bench --json` output for the report
MLFLOW_DIR = "mlruns"             # optional: the default MLflow file store (logging.mlflow)

# The files whose presence makes a folder a run folder (a report or Ray's state folder has none of them).
RUN_MARKERS = (SPEC_JSON, SPEC_FILE, METRICS_FILE, STATUS_FILE, EVENTS_FILE, CHECKPOINT_DIR)
