"""cluster.yaml is a valid Ray cluster-launcher config (Ray's own schema and checks) with what the
orchestrator relies on: a GPU worker type, the trial-driver token, shared storage, the project installed."""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from orchestrator.cluster import DRIVER_TOKEN

CONFIG = Path(__file__).resolve().parents[1] / "cluster.yaml"


def load() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_cluster_yaml_passes_rays_validator():
    validate_config(prepare_config(load()))


def test_validator_is_not_vacuous():
    bad = load()
    bad["available_node_types"]["ray.worker.gpu"]["min_workrs"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_workrs"):
        validate_config(prepare_config(bad))
    bad = load()
    bad["head_node_type"] = "ray.head.missing"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(copy.deepcopy(bad)))


def test_cluster_yaml_has_what_the_orchestrator_needs():
    c = load()
    head = c["available_node_types"][c["head_node_type"]]
    workers = [t for name, t in c["available_node_types"].items() if name != c["head_node_type"]]
    assert head["resources"].get(DRIVER_TOKEN, 0) > 0 and head["resources"].get("CPU") == 0
    gpu = [t for t in workers if t["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu and all(t["min_workers"] <= t["max_workers"] <= c["max_workers"] for t in gpu)
    # Trial drivers (and the Train controllers Ray puts next to them) stay off the GPU nodes' memory.
    assert all(t.get("resources", {}).get(DRIVER_TOKEN, 0) == 0 for t in gpu)
    setup = " ".join(c["setup_commands"])
    assert "pip install" in setup and "-e ." in setup and "libturbojpeg0-dev" in setup
    assert any("/shared" in cmd and "mount" in cmd for cmd in c["initialization_commands"])
    assert c["file_mounts"] == {"~/vitreduce": "."}
