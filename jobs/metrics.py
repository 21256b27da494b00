"""A run directory's bookkeeping files: metrics.parquet, status.json, events.log (rank 0 writes them).

metrics.parquet is rewritten whole (read, replace, write temp, fsync, rename) on every epoch: a run has
at most a few hundred rows, and a rewrite is what makes "no duplicate epochs after a resume" and
"never a half-written file" hold at the same time.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.schema import EVENTS_FILE, METRICS_COLUMNS, METRICS_FILE, METRICS_SCHEMA, STATUS_FILE


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        # a full or read-only disk: leave the previous file as it was and no half-written temp behind
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # write()/fsync() errors name no file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def check_row(row: dict[str, Any]) -> None:
    missing = [c for c in METRICS_COLUMNS if c not in row]
    extra = [c for c in row if c not in METRICS_SCHEMA.names]
    if missing or extra:
        raise ValueError(f"metrics row does not match analysis.schema.METRICS_SCHEMA: missing {missing}, extra {extra}")


def read_metrics(run_dir: Path) -> pa.Table:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return METRICS_SCHEMA.empty_table()
    return pq.read_table(path, schema=METRICS_SCHEMA)


def _write_table(run_dir: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    _atomic_write_bytes(Path(run_dir) / METRICS_FILE, sink.getvalue().to_pybytes())


def _keep_before(table: pa.Table, epoch: int) -> pa.Table:
    epochs = table.column("epoch").to_pylist()
    return table.take(pa.array([i for i, e in enumerate(epochs) if e is not None and e < epoch], type=pa.int64()))


def append_row(run_dir: Path, row: dict[str, Any]) -> None:
    """Add one epoch's row; rows of this epoch or later (left by a run that got further before its
    newer checkpoints were lost) are replaced, so every epoch appears once and in order."""
    check_row(row)
    kept = _keep_before(read_metrics(run_dir), int(row["epoch"]))
    new = pa.Table.from_pylist([{c: row[c] for c in METRICS_COLUMNS}], schema=METRICS_SCHEMA)
    _write_table(run_dir, pa.concat_tables([kept, new]))


def truncate_after(run_dir: Path, epoch: int) -> int:
    """Drop rows after `epoch` (the epoch a resume restarts from); returns how many were dropped."""
    table = read_metrics(run_dir)
    kept = _keep_before(table, epoch + 1)
    if kept.num_rows != table.num_rows:
        _write_table(run_dir, kept)
    return table.num_rows - kept.num_rows


def write_status(run_dir: Path, state: str, epoch: int, epochs_total: int, error: str | None = None) -> None:
    status = {"state": state, "epoch": epoch, "epochs_total": epochs_total, "error": error, "updated": time.time()}
    _atomic_write_bytes(Path(run_dir) / STATUS_FILE, json.dumps(status, indent=1).encode())


def read_status(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.exists() else None


class EventLog:
    """Append-only human-readable log: one line per event, `<UTC time> <host> rank<r> <kind>: <text>`."""

    def __init__(self, run_dir: Path, rank: int = 0):
        self.path = Path(run_dir) / EVENTS_FILE
        self.rank = rank
        self.host = socket.gethostname()

    def __call__(self, kind: str, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = f"{stamp} {self.host} rank{self.rank} {kind}: {' '.join(str(text).split())}\n"
        with open(self.path, "a") as f:
            f.write(line)
