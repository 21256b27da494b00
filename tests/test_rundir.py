"""rundir: the one run state, the strategy-expression parser without YAML, the study index."""
from __future__ import annotations

import pytest
import yaml

from rundir import (
    METRICS_COLUMNS,
    METRICS_FILE,
    RUNS_FILE,
    State,
    append_row,
    parse_scalar,
    read_index,
    run_state,
    split_expression,
    write_index,
    write_status,
)


def _rows(run_dir, n, total):
    for e in range(1, n + 1):
        append_row(run_dir, {**{c: None for c in METRICS_COLUMNS}, "epoch": e, "epochs_total": total, "model": "m",
                             "seed": 0, "top1": 1.0})


@pytest.mark.parametrize("text", ["2", "-3", "0.707", "1.0e-3", "true", "False", "null", "~", "diversity", "'2'",
                                  "\"x y\"", ".5"])
def test_scalars_read_as_yaml_reads_them(text):
    assert parse_scalar(text) == yaml.safe_load(text)


def test_exponents_without_a_dot_are_numbers():
    assert parse_scalar("1e-3") == 0.001  # YAML 1.1 would keep the text; users mean the number


def test_expressions():
    assert split_expression("grouped:scale=0.707+shallow:keep_ratio=0.25:select=diversity") == [
        {"name": "grouped", "params": {"scale": 0.707}},
        {"name": "shallow", "params": {"keep_ratio": 0.25, "select": "diversity"}}]
    with pytest.raises(ValueError, match="not key=value"):
        split_expression("shallow:0.5")


def test_run_states(tmp_path):
    assert run_state(tmp_path / "none", 3).describe() == "not started"
    run = tmp_path / "r"
    run.mkdir()
    _rows(run, 3, 3)
    write_status(run, "finished", 3, 3)
    assert run_state(run, 3).state is State.FINISHED
    assert run_state(run, 5).state is State.UNFINISHED          # epochs raised since
    assert run_state(run).state is State.FINISHED               # no spec given: the run's own record
    (run / "status.json").unlink()
    assert run_state(run).state is State.FINISHED               # no status.json: the rows' epochs_total
    assert run_state(run, 3).state is State.FINISHED            # a folder whose status.json was not copied
    write_status(run, "failed", 3, 3, "OSError: disk full")
    assert run_state(run, 3).describe() == "failed at 3/3 epochs: OSError: disk full"
    (run / METRICS_FILE).write_bytes(b"not parquet")
    blocked = run_state(run, 3)
    assert blocked.state is State.BLOCKED and "metrics.parquet is not readable parquet" in blocked.reason


def test_index_round_trip(tmp_path):
    write_index(tmp_path, {"a-s0": {"condition": "a", "ablation": {}, "seed": 0}})
    assert read_index(tmp_path) == ({"a-s0": {"condition": "a", "ablation": {}, "seed": 0}}, None)
    (tmp_path / RUNS_FILE).write_text("[1, 2]")
    index, problem = read_index(tmp_path)
    assert index == {} and "runs.json unreadable" in problem
