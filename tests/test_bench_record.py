"""bench/record.py: runs a benchmark command and appends date, machine, command and figures to the log."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def record():
    spec = importlib.util.spec_from_file_location("bench_record", REPO / "bench" / "record.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_entry_with_ratios_appended_under_one_log_heading(record, tmp_path, capsys):
    log = tmp_path / "BENCHMARKS.md"
    log.write_text("# Benchmarks\n\n## Conversion\n\nfigures\n")
    result = {"images": 10, "p3_ray_over_bare": 0.97, "results": [
        {"strategy": "baseline", "ratio": 1.0, "img_s": 8.1, "spread": [7.9, 8.3]},
        {"strategy": "shallow", "ratio": 1.64, "img_s": 13.2, "spread": [13.0, 13.4]}]}
    code = f"import json; print('warming up'); print(json.dumps({result!r}, indent=1)); print('done')"
    assert record.main(["--log", str(log), "--", *_py(code)]) == 0
    assert "warming up" in capsys.readouterr().out  # the command's output passes through
    assert record.main(["--log", str(log), "--", *_py("print('{\"figures\": {\"x_over_y\": 2.5, \"n\": 3}}')")]) == 0
    text = log.read_text()
    assert text.startswith("# Benchmarks\n\n## Conversion\n\nfigures\n")
    assert text.count("\n## Log\n") == 1
    log_part = text.split("\n## Log\n", 1)[1]
    first, second = log_part.split("\n- **")[1:3]
    assert "UTC** `" in first and "-c 'import json" in first and "exit 0" in first
    assert "cores" in first and "GiB RAM" in first and "GPU " in first and "load average" in first and "code " in first
    figs = first.split("figures: ", 1)[1].splitlines()[0]
    # only the ratio-named numbers; list items named by their strategy; sample lists left out
    assert figs == "p3_ray_over_bare = 0.97, results.baseline.ratio = 1, results.shallow.ratio = 1.64"
    assert "figures: x_over_y = 2.5, n = 3" in second  # an explicit "figures" object is taken whole


def test_without_ratios_every_number_and_flag_is_a_figure(record):
    out = 'log line\n{"lost_s": 1.25, "resume_s": 30.0, "metrics_equal": true, "note": "x", "none": null}\n'
    assert record.figures(record.last_json(out)) == {"lost_s": 1.25, "resume_s": 30.0, "metrics_equal": True}
    assert record.last_json("no json here\n{broken\n") is None


def test_failing_command_logged_and_status_returned(record, tmp_path):
    log = tmp_path / "log.md"
    assert record.main(["--log", str(log), "--", *_py("import sys; print('{\"r_over_s\": 1}'); sys.exit(3)")]) == 3
    text = log.read_text()
    assert "**failed, exit 3**" in text and "figures:" not in text


def test_figures_file_must_be_written_by_this_run(record, tmp_path):
    log, ff = tmp_path / "log.md", tmp_path / "res.json"
    ff.write_text(json.dumps({"results": [{"strategy": "grouped", "cpu_ratio": 1.01}]}))
    old = ff.stat().st_mtime - 3600
    import os

    os.utime(ff, (old, old))
    assert record.main(["--log", str(log), "--figures-file", str(ff), "--", *_py("pass")]) == 0
    assert "was not written by this run; no figures" in log.read_text()
    code = f"open({str(ff)!r}, 'w').write('{{\"results\": [{{\"strategy\": \"grouped\", \"cpu_ratio\": 1.01}}]}}')"
    assert record.main(["--log", str(log), "--figures-file", str(ff), "--", *_py(code)]) == 0
    assert "figures: results.grouped.cpu_ratio = 1.01" in log.read_text()


def test_usage_errors(record, tmp_path, capsys):
    assert record.main(["python", "x.py"]) == 2
    assert "usage" in capsys.readouterr().err
    assert record.main(["--log", str(tmp_path / "nodir" / "log.md"), "--", "true"]) == 2
    assert "--log" in capsys.readouterr().err
    assert record.main(["--log", str(tmp_path / "log.md"), "--", str(tmp_path / "no-such-program")]) == 2
    assert "cannot run" in capsys.readouterr().err
