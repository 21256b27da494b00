"""The recovery table's teacher top-1 is the top-1 of the weights the student was handed: the teacher run's best
export (the peak of its checkpoint.best_metric), not the teacher's last raw top-1."""
from __future__ import annotations

import pandas as pd
import pytest

from analysis.recovery import add_source_columns, recovery_rows
from rundir import RecordedSpec

SHALLOW = [{"name": "shallow", "params": {"keep_ratio": 0.5}}]


def _runs() -> pd.DataFrame:
    common = {"usable": True, "seed": 0, "ablation": None, "epochs_total": 3}
    return pd.DataFrame([
        {**common, "run_id": "baseline-s0", "condition": "baseline", "final_top1": 50.0, "peak_top1": 55.0,
         "ema_peak_top1": 60.0, "params": 100.0, "gflops": 10.0},
        {**common, "run_id": "recovered-s0", "condition": "recovered", "final_top1": 48.0, "peak_top1": 48.0,
         "ema_peak_top1": 49.0, "params": 60.0, "gflops": 6.0},
    ])


@pytest.mark.parametrize("teacher_spec, expected", [
    ({"train": {"ema": True}}, 60.0),                                          # auto -> ema_top1
    ({"train": {"ema": False}}, 55.0),                                         # auto -> top1
    ({"train": {"ema": True}, "checkpoint": {"best_metric": "top1"}}, 55.0),   # chosen explicitly
])
def test_teacher_top1_is_its_best_export(teacher_spec, expected):
    specs = {"baseline-s0": RecordedSpec(teacher_spec),
             "recovered-s0": RecordedSpec({"model": {"init": "run:baseline"}, "strategies": SHALLOW,
                                           "distill": {"teacher": "run:baseline", "loss": "soft"}})}
    rows = recovery_rows(add_source_columns(_runs(), specs), {"recovered-s0": ["baseline-s0"]})
    (row,) = rows.to_dict("records")
    assert row["teacher_run"] == "baseline-s0" and row["teacher_top1"] == expected
    assert row["kept_pct"] == pytest.approx(100.0 * 48.0 / expected)
    assert row["params_less_pct"] == pytest.approx(40.0)
