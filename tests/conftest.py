"""Shared fixtures: keep additions small (one fixture, one line of why)."""
from __future__ import annotations

import pytest

# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup`). The modules that use the
# suite's private Slurm run on one worker, one after another: that worker starts the Slurm daemons once (a second
# set on the other worker would cost its start-up and the cores its jobs need). Ray modules spread like the rest:
# each starts its own Ray, and an embedded Ray asks only its own state API (orchestrator.cluster), so two at once
# do not mistake each other's actors.
SLURM_MODULES = {"test_slurm", "test_slurm_stages"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the xdist_group marks into the groups it schedules
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLURM_MODULES:
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The shipped digits dataset (JPEG trees + .beton files), built once per test session (per xdist worker)."""
    from data.demo import prepare_demo

    return prepare_demo(tmp_path_factory.mktemp("demo_data"), log=lambda *_: None)
