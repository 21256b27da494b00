"""orchestrator.ray_private is the one module that uses Ray internals, written for one Ray minor version: the
installed Ray must be that minor, and pyproject.toml must pin it, or these tests say what to re-check."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import ray

from orchestrator import ray_private

REPO = Path(__file__).resolve().parents[1]


def test_installed_ray_is_the_minor_the_private_module_was_written_for():
    assert ray_private.internals_known(), (
        f"Ray {ray.__version__} is installed, but orchestrator/ray_private.py was written against Ray "
        f"{ray_private.RAY_MINOR}.*: check NoDatasetsTrainer (DataParallelTrainer._create_default_callbacks, "
        f"DatasetsCallback) and {ray_private.PREEMPTION_WATCHER_ENV} against that Ray's source, then set RAY_MINOR "
        f"and the ray pin in pyproject.toml to it")


def test_pyproject_pins_that_minor():
    pin = re.search(r'"ray\[[^\]]*\]([^"]*)"', (REPO / "pyproject.toml").read_text())
    assert pin and pin.group(1) == f"=={ray_private.RAY_MINOR}.*", (
        f"pyproject.toml must pin ray to =={ray_private.RAY_MINOR}.* (orchestrator/ray_private.py), "
        f"not {pin.group(1) if pin else 'nothing'}")


def test_other_minors_get_the_public_trainer():
    assert ray_private.internals_known(f"{ray_private.RAY_MINOR}.3")
    assert not ray_private.internals_known("2.61.0") and not ray_private.internals_known("3.0.0")
    assert ray_private.ray_minor("2.60.0rc1") == "2.60"


def test_no_other_module_uses_ray_internals():
    """Private Ray names (`ray._private`, `ray.train._internal`, `ray.train.v2._internal`, an underscore name or
    method of Ray) appear in orchestrator/ray_private.py only."""
    found = []
    for path in sorted(REPO.glob("*/**/*.py")):
        if path.name == "ray_private.py" or ".venv" in path.parts or path.parts[len(REPO.parts)] == "tests":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                names += [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
                found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                          if n.startswith("ray") and any(part.startswith("_") for part in n.split("."))]
    assert not found, found
