"""The report's "Tuning" section on a synthetic tuned study (confirm runs, trial folders and tuning.json).

Expected numbers are written out by hand from the values below, not recomputed with the code under test.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from analysis.__main__ import main
from analysis.tuning import draw_curves, ranking_lines, read_tuning
from tests.test_analysis import assert_contains, write_run

LR = {"baseline": 0.0012, "shallow": 0.003}
# final top-1 on val of the confirm runs, per (condition, tuned, seed)
CONFIRM = {
    ("baseline", False, 0): 40.0, ("baseline", False, 1): 42.0,   # 41.00 ± 1.41 (40.00–42.00)
    ("baseline", True, 0): 44.0, ("baseline", True, 1): 46.0,     # 45.00 ± 1.41, gain 4.00
    ("shallow", False, 0): 38.0, ("shallow", False, 1): 39.0,     # 38.50 ± 0.71
    ("shallow", True, 0): 46.0, ("shallow", True, 1): 47.0,       # 46.50 ± 0.71, gain 8.00
}
# held-out top-1 per epoch of each trial; the 1-epoch ones were stopped by the scheduler
TRIALS = {
    "baseline-t000": ("finished", {"train.lr": 0.0012}, [30.0, 35.0, 40.0]),
    "baseline-t001": ("stopped", {"train.lr": 0.0001}, [20.0]),
    "shallow-t000": ("stopped", {"train.lr": 0.0002}, [15.0]),
    "shallow-t001": ("finished", {"train.lr": 0.003}, [31.0, 36.0, 42.0]),
}
IMAGES_PER_EPOCH = 100


def write_tuned_study(root: Path, tune_on_val: bool = False) -> Path:
    study = root / "tuned-study"
    for (cond, tuned, seed), top1 in CONFIRM.items():
        ablation = {"tuned": True, "train.lr": LR[cond]} if tuned else {"tuned": False}
        curve = [top1 - 10.0, top1 - 5.0, top1]
        write_run(study, f"{cond}-s{seed}" if tuned else f"{cond}-untuned-s{seed}", cond, seed, curve,  # as confirm_runs
                  ablation=ablation, epochs_total=3)
    conditions: dict = {}
    for run_id, (status, params, curve) in TRIALS.items():
        cond = run_id.split("-")[0]
        write_run(study / "tuning", run_id, cond, 0, curve, ablation=params, epochs_total=3,
                  state=status)  # an ASHA-stopped trial's loop records `stopped` (jobs.train.Lifecycle)
        c = conditions.setdefault(cond, {"done": True, "trials": []})
        c["trials"].append({"run_id": run_id, "trial_id": f"x_{run_id}", "params": params, "status": status,
                            "metric": curve[-1], "best_metric": max(curve), "epochs_done": len(curve),
                            "epochs": 3, "images_per_epoch": IMAGES_PER_EPOCH,
                            "images": len(curve) * IMAGES_PER_EPOCH})
    for cond, c in conditions.items():
        best = max(c["trials"], key=lambda t: t["metric"])
        c |= {"best": best["params"], "best_trial": best["run_id"], "best_metric": best["metric"]}
    doc = {"metric": "top1", "mode": "max", "search": "random", "scheduler": "asha", "trials": 2, "epochs": 3,
           "holdout": None if tune_on_val else {"fraction": 0.1, "seed": 0}, "tune_on_val": tune_on_val,
           "conditions": conditions}
    (study / "tuning" / "tuning.json").write_text(json.dumps(doc))
    return study


@pytest.fixture(scope="module")
def tuned_report(tmp_path_factory) -> tuple[Path, str]:
    study = write_tuned_study(tmp_path_factory.mktemp("studies"))
    assert main(["report", str(study)]) == 0  # the CLI, as a user runs it
    return study, (study / "report" / "report.md").read_text()


def test_tuning_section_numbers(tuned_report):
    study, text = tuned_report
    section = text[text.index("## Tuning"):]
    assert_contains(
        section,
        "random`, scheduler `asha`, 2 trials per condition of up to 3 epochs",
        "held-out 0.1 slice of train (seed 0)",
        # best hyperparameters per condition
        "| baseline | baseline-t000 | 40.00 | 0.0012 |", "| shallow | shallow-t001 | 42.00 | 0.003 |",
        # trials, stopped early, epochs and images spent against the full budget
        "| baseline | 2 | 1 | 0 | 4 / 6 (67%) | 400 / 600 (67%) |",
        "| shallow | 2 | 1 | 0 | 4 / 6 (67%) | 400 / 600 (67%) |",
        # tuned vs untuned with the seed spread
        "| baseline | 41.00±1.41 (40.00–42.00), n=2 | 45.00±1.41 (44.00–46.00), n=2 | 4.00 |",
        "| shallow | 38.50±0.71 (38.00–39.00), n=2 | 46.50±0.71 (46.00–47.00), n=2 | 8.00 |",
        "Tuned ranking: shallow (46.50) > baseline (45.00).",
        "Untuned ranking: baseline (41.00) > shallow (38.50).",
        "**The ranking of conditions changed after tuning**",
        "![Tuning trials](tuning_curves.png)",
    )
    assert "Warning" not in section
    # trials are not confirm runs: they appear in no table outside the section
    assert "baseline-t000" not in text[:text.index("## Tuning")]
    assert Image.open(study / "report" / "tuning_curves.png").size == (1000, 500)


def test_tuned_conditions_tested_against_the_tuned_baseline(tuned_report):
    _, text = tuned_report
    # each side against the baseline of the same kind, though the tuned lr values differ
    assert_contains(text, "top-1 higher by 1.50 points on average over n = 2 matched seeds",
                    "top-1 lower by 2.50 points on average over n = 2 matched seeds")


def test_curves_show_stopped_trials(tuned_report):
    study, _ = tuned_report
    tuning = read_tuning(study)
    lines = {ln.get_gid(): ln for ln in draw_curves(tuning).axes[0].get_lines() if ln.get_gid()}
    assert set(lines) == set(TRIALS)
    assert {k: lines[k].get_linestyle() for k in lines} == {
        "baseline-t000": "-", "baseline-t001": "--", "shallow-t000": "--", "shallow-t001": "-"}
    colors = {k: lines[k].get_color() for k in lines}
    assert colors["baseline-t000"] == colors["baseline-t001"] != colors["shallow-t000"] == colors["shallow-t001"]
    assert list(lines["shallow-t001"].get_ydata()) == [31.0, 36.0, 42.0]


def test_ranking_says_ties():
    confirm = pd.DataFrame([{"condition": c, "tuned_mean": t, "tuned_n": 1, "untuned_mean": u, "untuned_n": 1}
                            for c, t, u in (("a", 50.0, 40.0), ("b", 50.0, 41.0), ("c", 49.0, 39.0))])
    assert ranking_lines(confirm) == [
        "- Tuned ranking: a (50.00) = b (50.00) > c (49.00).", "- Untuned ranking: b (41.00) > a (40.00) > c (39.00).",
        "- **The ranking of conditions changed after tuning** (positions of a, b moved)."]


def test_tune_on_val_warns_and_untuned_study_has_no_section(tmp_path):
    study = write_tuned_study(tmp_path / "a", tune_on_val=True)
    assert main(["report", str(study)]) == 0
    assert_contains((study / "report" / "report.md").read_text(), "> **Warning:** the trials were scored on the "
                    "val set (`tune_on_val: true`)", "scored on **the val set**")
    plain = tmp_path / "b" / "plain"
    write_run(plain, "baseline-s0", "baseline", 0, [1.0, 2.0], epochs_total=2)
    assert main(["report", str(plain)]) == 0
    assert "## Tuning" not in (plain / "report" / "report.md").read_text()
