"""Shared fixtures: keep additions small (one fixture, one line of why)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The shipped digits dataset (JPEG trees + .beton files), built once per test session."""
    from data.demo import prepare_demo

    return prepare_demo(tmp_path_factory.mktemp("demo_data"), log=lambda *_: None)
