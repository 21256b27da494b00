"""`bench/gpu_check.py --device cpu --quick`: the GPU check's code runs on every `make test`, so it cannot rot."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_gpu_check_quick_on_cpu_runs_every_check(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = _run("--device", "cpu", "--quick", "--workdir", str(tmp_path / "work"), "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report == json.loads(proc.stdout[proc.stdout.index("{"):])  # the printed object is what was written
    results = report["results"]
    assert set(results) == {"distributed", "kill_resume", "p2_inference", "p6_training"}
    assert all(r["passed"] for r in results.values()), {k: r.get("error") for k, r in results.items()}

    assert results["distributed"]["backend"] == "gloo" and results["distributed"]["all_reduce_ok"]

    kr = results["kill_resume"]
    assert kr["resumed_from"]["update"] >= kr["kill_after"]["update"] > 0
    assert kr["bitwise_equal"] and kr["exact_required"]  # on the CPU the resumed run is exact

    for mode in ("eager", "compiled"):
        res = results["p2_inference"][mode]
        assert res["dtype"] == "bf16" and res["channels_last"] and res["compile"] == (mode == "compiled")
        by = {r["strategy"]: r for r in res["results"]}
        assert set(by) == {"baseline", "grouped", "shallow"}
        assert by["grouped"]["mac_ratio"] == pytest.approx(1.0) and by["shallow"]["mac_ratio"] > 1.0

    p6 = results["p6_training"]
    assert p6["img_s"] > 0 and p6["images_timed"] > 0 and p6["amp_dtype"] == "bfloat16"
    assert p6["mfu"] is None  # no peak is known for a CPU

    figs = report["figures"]
    assert figs["passed"] is True and figs["kill_resume.bitwise_equal"] is True
    assert {"p2_eager.shallow.ratio", "p2_compiled.shallow.ratio", "p2.shallow.mac_ratio", "p6.img_s"} <= set(figs)
    assert len(figs) <= 24  # bench/record.py logs at most 24 figures


def test_gpu_check_rejects_bad_arguments_before_doing_anything():
    # both at once: each spends its time importing torch
    cases = [(["--device", "cpu", "--only", "p2_inference,nccl"], "--only: unknown check(s) nccl")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no GPU is visible"))
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args, _ in cases]
    try:
        for proc, (args, expected) in zip(procs, cases):
            _, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 2 and expected in stderr, (args, stderr[-2000:])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
