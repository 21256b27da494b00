"""The local Ray the orchestrator starts serves its dashboard (URL printed) unless asked not to, and turns
off Tune's automatic TensorBoard logger (the runs write their own curves)."""
from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

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


class _NoSuchActor(http.server.BaseHTTPRequestHandler):
    """Another Ray's state API, as the one on this machine's 127.0.0.1:8265 answers: it knows no actor of ours."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = json.dumps({"result": True, "msg": "", "data": {"result": {
            "result": [], "total": 0, "num_after_truncation": 0, "num_filtered": 0,
            "partial_failure_warning": "", "warnings": None}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def another_state_api_on_8265():
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 8265), _NoSuchActor)
    except OSError:  # something already serves there: that is the situation this test is about
        yield
        return
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("dashboard", [True, False])
def test_a_live_actor_is_never_reported_missing_by_another_ray_on_this_machine(dashboard):
    """Ray Train's PlacementGroupCleaner removes a run's placement group once the state API says its controller
    is gone. Asked from inside the embedded Ray (where the cleaner runs), the state API is this Ray's own: with
    the dashboard it finds the live actor, without one it is unreachable (the cleaner waits), and it is never
    another Ray's, which would answer "no such actor"."""
    import ray
    from ray.util.state import get_actor
    from ray.util.state.exception import RayStateApiException

    @ray.remote(num_cpus=0)
    class Alive:
        def actor_id(self) -> str:
            return ray.get_runtime_context().get_actor_id()

    @ray.remote(num_cpus=0)
    def state_of(actor_id: str) -> str:
        try:
            found = get_actor(actor_id, timeout=30)
        except RayStateApiException:
            return "unreachable"
        return found.state if found else "missing"

    with another_state_api_on_8265(), ray_session(num_cpus=1, dashboard=dashboard):
        actor = Alive.remote()
        state = ray.get(state_of.remote(ray.get(actor.actor_id.remote())), timeout=120)
    assert state == ("ALIVE" if dashboard else "unreachable")


def test_the_dashboard_port_is_free_and_outside_the_ranges_others_draw_from():
    """An embedded Ray's dashboard port is chosen below the kernel's ephemeral range and above Ray's worker ports,
    so no other process is handed it between the choice and our Ray's bind (a taken port fails ray.init)."""
    import socket

    from orchestrator.cluster import UNUSED_PORTS, unused_port

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert UNUSED_PORTS.stop <= low and UNUSED_PORTS.start > 19999
    ports = {unused_port() for _ in range(20)}
    assert all(p in UNUSED_PORTS for p in ports) and len(ports) > 1
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))
