"""Dead code fails the suite: vulture over the packages, configured in pyproject.toml ([tool.vulture]), with
tests/vulture_whitelist.py naming what frameworks call (pydantic, FFCV, Ray, torchvision)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _vulture(*paths: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vulture", *paths], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_the_packages_hold_no_dead_code():
    out = _vulture()
    assert out.returncode == 0, ("dead code: delete it, or name the framework that calls it in "
                                 f"tests/vulture_whitelist.py\n{out.stdout}{out.stderr}")


def test_the_check_reports_an_unused_function(tmp_path):
    module = tmp_path / "module.py"
    module.write_text("def used():\n    return 1\n\n\ndef never_called():\n    return 2\n\n\nused()\n")
    out = _vulture(str(module))
    assert out.returncode == 3 and "never_called" in out.stdout and "'used'" not in out.stdout, out.stdout + out.stderr
