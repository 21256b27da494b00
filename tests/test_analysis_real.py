"""analysis on the output of real (tiny) training runs of jobs.train, not synthetic files.

Kept apart from test_analysis.py so that file never imports torch.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY = ["train.epochs=2", "model.depth=2", "model.embed_dim=48", "data.num_workers=1", "checkpoint.every_epochs=1"]


def _train(demo_data, out: Path, run_id: str, extra: list[str]) -> dict:
    from jobs.local import LocalContext
    from jobs.spec import load_spec
    from jobs.train import train_loop

    spec = load_spec(REPO / "configs" / "demo.yaml", [
        *TINY, f"data_root={Path(demo_data.root).resolve()}", f"output_root={out}", "study=real",
        f"run_id={run_id}", *extra,
    ])
    with LocalContext(spec.run_dir, use_gpu=False) as ctx:
        return train_loop(spec, ctx)


def test_report_on_real_training_runs(demo_data, tmp_path):
    from analysis.report import build_report

    finals = {
        "baseline-s0": _train(demo_data, tmp_path, "baseline-s0", ["condition=baseline"]),
        "grouped-s0": _train(demo_data, tmp_path, "grouped-s0",
                             ["condition=grouped", "strategies=[{name: grouped, params: {group_size: 2}}]"]),
    }
    study = tmp_path / "real"
    rep = build_report(study, tmp_path / "report")
    assert not [p for p in rep.study.problems if p.excluded], rep.study.problems
    runs = rep.runs.set_index("run_id")
    for run_id, row in finals.items():
        on_disk = pq.read_table(study / run_id / "metrics.parquet").to_pandas()
        assert runs.loc[run_id, "complete"] and runs.loc[run_id, "epochs_done"] == 2
        assert runs.loc[run_id, "final_top1"] == pytest.approx(row["top1"])
        assert runs.loc[run_id, "peak_top1"] == pytest.approx(on_disk["top1"].max())
        assert runs.loc[run_id, "params"] == on_disk["params"].iloc[-1]
    s = rep.summary.set_index("name")
    assert list(s.index) == ["Baseline", "GroupedMLP"]
    assert s.loc["GroupedMLP", "unique_mlps"] == 1 and s.loc["Baseline", "unique_mlps"] == 2
    assert s.loc["GroupedMLP", "params"] < s.loc["Baseline", "params"]
    assert s.loc["Baseline", "expansion_ratio"] == pytest.approx(4.0)  # timm's mlp_ratio, recovered
    assert s.loc["GroupedMLP", "test_note"].startswith("only 1 matched seed")
    md = (tmp_path / "report" / "table.md").read_text()
    assert f"| Baseline | {s.loc['Baseline', 'params'] / 1e3:.1f}K | {finals['baseline-s0']['top1']:.2f} |" in md
    for png in ("top1_curves.png", "params_vs_top1.png", "throughput.png"):
        with Image.open(tmp_path / "report" / png) as im:
            assert im.size == (1000, 500)
    assert "## The paper's findings on this study (vit_tiny_patch16_224)" in rep.report_md.read_text()
    assert len(pd.read_parquet(tmp_path / "report" / "runs.parquet")) == 2
