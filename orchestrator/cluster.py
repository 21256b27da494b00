"""Connecting to Ray: an embedded local Ray by default, or an existing cluster by address.

Embedded (no --address, no RAY_ADDRESS): `ray.init(address="local")` always starts a private
instance sized to this machine (never attaches to another user's `ray start` on the same host), and
it is shut down when the block exits: normally, on an exception, on Ctrl-C and on SIGTERM.
With an address, we only connect; the cluster is never shut down by us.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from orchestrator.resources import ClusterShape

log = logging.getLogger(__name__)

# Zero-cost resource that trial drivers reserve instead of a CPU (Tune's default of 1 CPU per trial
# starves the Train workers, and a bundle of {"CPU": 0} alone is rejected). The embedded Ray and
# cluster.yaml define plenty of it; on a cluster without it, 1 byte of `memory` serves the same role.
DRIVER_TOKEN = "vitreduce_driver"
DRIVER_TOKEN_AMOUNT = 10_000

QUIET_ENV = {
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_DEDUP_LOGS_SKIP_REGEX": r"Failed to query Ray Train Controller|Setting up process group",
    "RAY_AIR_NEW_OUTPUT": "0",  # keep Tune's classic live table (CLIReporter)
    # The loop writes its own TensorBoard files into each run folder; Tune's automatic TBX logger would put
    # a second, epoch-level copy under <study>/.ray/tune/ that `tensorboard --logdir <study>` also shows.
    # The sweep passes Tune's CSV and JSON loggers explicitly (ray_run.tune_loggers), so they stay.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


def quiet_env() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


# Below the kernel's ephemeral range (Linux 32768-60999, elsewhere higher), where nothing is handed a port
# unasked, and above Ray's worker ports (10002-19999): a port found free here is still free when our Ray binds
# it a moment later. (Ray's own fixed ports, 44227 for metrics and 52365 for the dashboard agent, are outside.)
UNUSED_PORTS = range(20000, 32768)


def unused_port() -> int:
    """A free localhost port for a server this process is about to start (an embedded Ray's dashboard)."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.choice(UNUSED_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {UNUSED_PORTS.start}-{UNUSED_PORTS.stop - 1} on 127.0.0.1")


def _own_state_api(dashboard_port: int) -> dict[str, str]:
    """The environment that points an embedded Ray's processes at its own state API. Ray Train's
    PlacementGroupCleaner asks the state API every second whether the run's controller lives; left to find that
    API itself (the machine-wide /tmp/ray/ray_current_cluster, else 127.0.0.1:8265, where even a Ray started
    without a dashboard looks), it can reach another Ray on this machine, hear "no such actor" and remove a live
    run's placement group. Without a dashboard nothing answers on this port, and the cleaner keeps waiting."""
    return {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}"}


def resolve_address(address: str | None) -> str | None:
    return address or os.environ.get("RAY_ADDRESS") or None


@dataclass(frozen=True)
class RaySession:
    address: str | None  # None = embedded
    shape: ClusterShape

    @property
    def embedded(self) -> bool:
        return self.address is None

    def driver_resources(self) -> dict[str, float]:
        """What a Tune trial driver reserves: a token, never a CPU."""
        import ray

        if ray.cluster_resources().get(DRIVER_TOKEN, 0) > 0:
            return {"CPU": 0, DRIVER_TOKEN: 0.001}
        return {"CPU": 0, "memory": 1}


def cluster_shape() -> ClusterShape:
    """Totals and the largest node of the connected cluster (alive nodes only)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = [float(n["Resources"].get("CPU", 0)) for n in nodes] or [0.0]
    gpus = [float(n["Resources"].get("GPU", 0)) for n in nodes] or [0.0]
    # A cluster-launcher cluster may add nodes: per-node limits still hold, totals do not.
    autoscaling = os.environ.get("VITREDUCE_AUTOSCALING", "0") == "1"
    return ClusterShape(cpus=sum(cpus), gpus=sum(gpus), node_cpus=max(cpus), node_gpus=max(gpus), autoscaling=autoscaling)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (e.g. `kill`, a job stop) unwinds like Ctrl-C, so the finally blocks run."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                dashboard: bool = True) -> Iterator[RaySession]:
    """Connect to `address` (or RAY_ADDRESS), else start an embedded Ray (with its dashboard unless
    `dashboard` is false; its URL is printed); always disconnect, and stop the embedded one, when the block ends."""
    quiet_env()
    import ray

    address = resolve_address(address)
    if address is None:
        machine = ClusterShape.this_machine()
        dashboard_port = unused_port()
        context = ray.init(
            address="local",
            num_cpus=int(num_cpus or machine.cpus),
            num_gpus=int(machine.gpus),
            resources={DRIVER_TOKEN: DRIVER_TOKEN_AMOUNT},
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            dashboard_port=dashboard_port,
            log_to_driver=True,
            logging_level=logging.WARNING,
            runtime_env={"env_vars": {**QUIET_ENV, **_own_state_api(dashboard_port)}},
        )
    else:
        # No runtime_env here: inside `ray job submit` it would replace the job's (its working_dir).
        context = ray.init(address=address, logging_level=logging.WARNING)
    if getattr(context, "dashboard_url", None):
        # Ray turns token authentication on for local clusters; the dashboard's sign-in asks for the token.
        token = " (sign in with the token `ray get-auth-token` prints)" \
            if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else ""
        print(f"Ray dashboard: http://{context.dashboard_url}{token}", flush=True)
    try:
        # After ray.init: Ray installs its own SIGTERM handler (it aborts the process), ours replaces it.
        with _sigterm_as_interrupt():
            yield RaySession(address=address, shape=cluster_shape())
    finally:
        # For an embedded Ray this stops it; for a cluster it only disconnects this driver.
        ray.shutdown()
