"""The layers as import-linter contracts (pyproject.toml): they hold, and they catch an arrow that breaks them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "jobs", "data", "analysis", "rundir")
LINT = Path(sys.executable).with_name("lint-imports")
# Modules of these packages stay readable in one sitting.
SIZED = ("orchestrator", "analysis", "rundir")
MAX_LINES = 400


def _lint(root: Path, *contracts: str) -> subprocess.CompletedProcess:
    if not LINT.exists():
        pytest.fail(f"{LINT} not found: `pip install -e .[dev]` installs import-linter")
    env = {**os.environ, "PYTHONPATH": str(root)}
    which = [arg for c in contracts for arg in ("--contract", c)]
    return subprocess.run([str(LINT), "--no-cache", *which], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)


def test_contracts_hold():
    proc = _lint(REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("module,line,contract", [
    ("analysis/tables.py", "import torch", "analysis-reads-files"),
    ("analysis/tables.py", "import jobs.spec", "analysis-reads-files"),
    ("rundir/names.py", "import jobs.spec", "layers"),
    ("data/config.py", "import jobs.spec", "layers"),
    ("rundir/names.py", "import yaml", "rundir-stdlib"),
    ("jobs/context.py", "import ray", "no-engine-below"),
    ("data/config.py", "import submitit", "no-engine-below"),
    ("orchestrator/demo.py", "from orchestrator.__main__ import main", "acyclic"),
])
def test_a_broken_arrow_is_reported(tmp_path, module, line, contract):
    """A copy of the packages with one forbidden import planted: the contract it breaks fails, alone."""
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # planted by the test\n")
    proc = _lint(tmp_path, contract)
    assert proc.returncode != 0 and "1 broken" in proc.stdout, proc.stdout[-3000:]


def test_modules_stay_small():
    big = {str(p.relative_to(REPO)): n for pkg in SIZED for p in (REPO / pkg).rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
