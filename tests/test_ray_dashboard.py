"""The local Ray the orchestrator starts serves its dashboard (URL printed) unless asked not to, and turns
off Tune's automatic TensorBoard logger (the runs write their own curves)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from orchestrator.cluster import ray_session
from orchestrator.ray_run import tune_loggers


def test_dashboard_on_by_default_with_its_url_printed(capsys):
    with ray_session(num_cpus=1):
        printed = capsys.readouterr().out
        found = re.search(r"Ray dashboard: (http://\S+)", printed)
        assert found, printed
        request = urllib.request.Request(found.group(1) + "/api/version")
        if "ray get-auth-token" in printed:
            token = subprocess.run([str(Path(sys.executable).with_name("ray")), "get-auth-token"], capture_output=True,
                                   text=True, check=True, timeout=120).stdout.strip().splitlines()[-1]
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200 and b"ray_version" in response.read()
    assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1"


def test_no_dashboard(capsys):
    with ray_session(num_cpus=1, dashboard=False):
        assert "Ray dashboard" not in capsys.readouterr().out


def test_tune_keeps_csv_and_json_results_but_not_its_tensorboard_copy(monkeypatch):
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    callbacks = _create_default_callbacks(tune_loggers(), air_verbosity=None)
    kinds = {type(c) for c in callbacks}
    assert CSVLoggerCallback in kinds and JsonLoggerCallback in kinds and TBXLoggerCallback not in kinds
