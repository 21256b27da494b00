"""Shared fixtures: keep additions small (one fixture, one line of why)."""
from __future__ import annotations

import pytest

# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup`). The modules that start a Ray
# cluster run on one worker, one after another, and so do those that start the suite's private Slurm: two Rays
# (or two Slurms) at once on 2 cores would slow each other past their waits, and an in-process Ray binds fixed
# ports (its dashboard). Everything else spreads over both workers.
RAY_MODULES = {"test_reliability_concurrency", "test_reliability_configs", "test_reliability_ray_nodes",
               "test_reliability_worker_kill", "test_scale_bench", "test_stage_configs", "test_tune_study",
               "test_orchestrator_study"}
SLURM_MODULES = {"test_slurm", "test_slurm_stages"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.module.__name__.rsplit(".", 1)[-1]
        if name.startswith("test_ray_") or name in RAY_MODULES:
            item.add_marker(pytest.mark.xdist_group("ray"))
        elif name in SLURM_MODULES:
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The shipped digits dataset (JPEG trees + .beton files), built once per test session (per xdist worker)."""
    from data.demo import prepare_demo

    return prepare_demo(tmp_path_factory.mktemp("demo_data"), log=lambda *_: None)
