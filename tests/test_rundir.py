"""rundir: the one run state, the run record (spec.json), the strategy-expression parser without YAML, the study
index."""
from __future__ import annotations

import pytest
import yaml

from rundir import (
    METRICS_COLUMNS,
    METRICS_FILE,
    RUNS_FILE,
    SPEC_JSON,
    RunRecord,
    State,
    append_row,
    check_metrics,
    named_conditions,
    parse_scalar,
    read_index,
    run_condition,
    run_state,
    split_expression,
    write_index,
    write_spec_record,
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


ARCH = {"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_hidden": 64}


def test_run_record_reads_the_recorded_spec_typed(tmp_path):
    spec = {"study": "s", "run_id": "pruned-s1", "condition": "", "seed": 1, "ablation": {"x": 2},
            "strategies": [{"name": "shallow", "params": {"keep_ratio": 0.5}}],
            "model": {"name": "vit_tiny_patch16_224", "init": "run:baseline"}, "train": {"epochs": 3, "ema": True},
            "checkpoint": {"best_metric": "auto"}, "distill": {"teacher": {"init": "run: teacher "}, "loss": "soft"}}
    write_spec_record(tmp_path, spec, ARCH)
    record = RunRecord.read(tmp_path)
    got = record.spec
    assert (got.condition, got.strategy, got.seed, got.ablation, got.model, got.epochs) == \
        ("shallow", "shallow", 1, {"x": 2}, "vit_tiny_patch16_224", 3)  # no condition: the strategy label
    assert got.needs == ("baseline", "teacher") and got.teacher == "run: teacher " and got.best_metric == "ema_top1"
    assert got.architecture.expansion_ratio == 2.0
    assert got.node().run_id == "pruned-s1" and record.best_export is None
    assert record.state().describe() == "unfinished (0/? epochs)"
    (tmp_path / SPEC_JSON).write_text("{not json")
    broken = RunRecord.read(tmp_path)
    assert broken.spec is None and broken.spec_problem.startswith(f"{SPEC_JSON} unreadable")


def test_the_run_prefix_is_parsed_in_one_place():
    assert run_condition(" run: baseline ") == "baseline" and run_condition("run:") == ""
    assert run_condition("pretrained") is None and run_condition(None) is None
    assert named_conditions({"model.init": "run:a", "distill.teacher.init": "x.pt"}) == {"model.init": "a"}


def test_metrics_can_be_read_by_column(tmp_path):
    _rows(tmp_path, 2, 2)
    table, errors, _ = check_metrics(tmp_path, ("epoch", "top1"))
    assert not errors and table.column_names == ["epoch", "top1"] and table.column("epoch").to_pylist() == [1, 2]
