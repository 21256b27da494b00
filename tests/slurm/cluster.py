"""A private single-node Slurm 22.05 (Debian packages) for the tests, started by hand without systemd.

munged, mariadbd, slurmdbd, slurmctld and slurmd all keep their keys, sockets, databases, state, spool,
logs and pid files under one base directory, listen on free ports, and are stopped by the pids they wrote,
so nothing else on the machine is touched. Clients find this cluster through ``SLURM_CONF`` (see `env`).

    python tests/slurm/cluster.py start /tmp/myslurm     # prints: export SLURM_CONF=...
    python tests/slurm/cluster.py stop  /tmp/myslurm

Needs root (slurmd runs jobs as their submitter; munged/mariadbd drop to their own users).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
CLUSTER_NAME = "vitreduce"
NODE = "localhost"
# Stop order: the reverse of start order.
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
STATE_FILE = "cluster.json"

SLURM_CONF = """\
ClusterName={cluster}
SlurmctldHost={node}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire=5: otherwise a requeued job waits 120 s before it may start again.
AuthInfo=socket={munge_socket},cred_expire=5
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool/%n
SlurmctldPidFile={base}/pid/slurmctld.pid
SlurmdPidFile={base}/pid/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in a container: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=5
SchedulerParameters=sched_interval=1,bf_interval=1
SlurmctldParameters=preempt_send_user_signal
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost={node}
AccountingStoragePort={dbd_port}
# For slurmdbd connections this names the munge socket (AuthInfo's socket= is not used for them).
AccountingStoragePass={munge_socket}
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
{node_line}
PartitionName=low Nodes={node} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=60
PartitionName=high Nodes={node} MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
"""

SLURMDBD_CONF = """\
AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost={node}
DbdPort={dbd_port}
SlurmUser=root
PidFile={base}/pid/slurmdbd.pid
LogFile={base}/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
"""


class ClusterError(RuntimeError):
    pass


def missing_packages() -> list[str]:
    return [p for p in PACKAGES if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]


def install_packages() -> None:
    """apt-get the packages that are not installed yet (update once first); raises ClusterError on failure."""
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterError(f"Slurm packages missing ({' '.join(missing)}) and not root to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Other processes may be running apt at the same time: wait for the dpkg lock instead of failing.
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    for cmd in (["apt-get", *lock, "update", "-qq"], ["apt-get", *lock, "install", "-y", "-qq", *missing]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ClusterError(f"{' '.join(cmd[:2])} failed: {tail[0]}")
    still = missing_packages()
    if still:
        raise ClusterError(f"packages still missing after apt-get install: {' '.join(still)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ok, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.2)
    tail = ""
    if log is not None and log.exists():
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    raise ClusterError(f"{what} not ready after {timeout:.0f}s {('(log: ' + tail + ')') if tail else ''}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Cluster:
    base: Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.base / "etc" / "slurm.conf"

    def env(self) -> dict[str, str]:
        """Variables that point Slurm's clients (sbatch, squeue, sacct, scontrol) at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _run(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        env = dict(os.environ, **self.env(), MYSQL_UNIX_PORT=str(self.base / "mysql" / "mysqld.sock"))
        r = subprocess.run(list(cmd), env=env, capture_output=True, text=True, **kw)
        if check and r.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()}")
        return r

    # ---- start -------------------------------------------------------------------------------------
    def start(self) -> "Cluster":
        if os.geteuid() != 0:
            raise ClusterError("the private Slurm needs root (slurmd runs jobs as their submitter)")
        self.base.mkdir(parents=True, exist_ok=True)
        # mysql and munge users must traverse the base dir.
        self.base.chmod(0o755)
        for d in ("etc", "state", "spool", "log", "pid"):
            (self.base / d).mkdir(exist_ok=True)
        self.ports = {"ctld": _free_port(), "slurmd": _free_port(), "dbd": _free_port()}
        (self.base / STATE_FILE).write_text(json.dumps({"ports": self.ports}))
        try:
            self._start_munge()
            self._start_mariadb()
            self._write_confs()
            self._start_slurmdbd()
            self._start_slurmctld()
            self._start_slurmd()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        d = self.base / "munge"
        d.mkdir(exist_ok=True)
        key = d / "munge.key"
        if not key.exists():
            subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        shutil.chown(d, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        # munged wants the socket dir traversable by all and not writable by others; key private.
        d.chmod(0o755)
        key.chmod(0o600)
        self.munge_socket = d / "munge.socket"
        pid = _pid_file(self.base, "munged")
        self._run(
            "runuser", "-u", "munge", "--", "munged", f"--key-file={key}", f"--socket={self.munge_socket}",
            f"--pid-file={pid}", f"--log-file={d / 'munged.log'}", f"--seed-file={d / 'munged.seed'}",
        )
        _wait("munged", self.munge_socket.exists, 10, d / "munged.log")

    def _start_mariadb(self) -> None:
        d = self.base / "mysql"
        data = d / "data"
        d.mkdir(exist_ok=True)
        shutil.chown(d, "mysql", "mysql")
        if not data.exists():
            self._run(
                "mariadb-install-db", "--user=mysql", f"--datadir={data}", "--skip-test-db",
                "--auth-root-authentication-method=socket",
            )
        sock = d / "mysqld.sock"
        log = d / "mysqld.err"
        # mariadbd does not daemonize: keep it as our child's child in its own session, pid in its file.
        pid = _pid_file(self.base, "mariadbd")
        proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", "--user=mysql", f"--datadir={data}", f"--socket={sock}",
             f"--pid-file={pid}", "--skip-networking", f"--log-error={log}",
             "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=48M"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

        def ready() -> bool:
            if proc.poll() is not None:
                raise ClusterError(f"mariadbd exited with {proc.returncode}; see {log}")
            return sock.exists() and pid.exists()

        _wait("mariadbd", ready, 60, log)

    def _write_confs(self) -> None:
        node = self._run("slurmd", "-C").stdout.splitlines()[0].split(None, 1)[1]
        # Slurm's own hardware line with our node name; CR_CPU lets small jobs share the node.
        node_line = f"NodeName={NODE} NodeAddr=127.0.0.1 {node} State=UNKNOWN"
        fmt = dict(
            cluster=CLUSTER_NAME, node=NODE, base=self.base, munge_socket=self.munge_socket,
            ctld_port=self.ports["ctld"], slurmd_port=self.ports["slurmd"], dbd_port=self.ports["dbd"],
            node_line=node_line,
        )
        self.conf.write_text(SLURM_CONF.format(**fmt))
        dbd = self.base / "etc" / "slurmdbd.conf"
        dbd.write_text(SLURMDBD_CONF.format(**fmt))
        dbd.chmod(0o600)  # slurmdbd refuses a readable config (it may hold a password)

    def _start_slurmdbd(self) -> None:
        self._run("slurmdbd")
        _wait("slurmdbd", lambda: _port_open(self.ports["dbd"]), 60, self.base / "log" / "slurmdbd.log")

    def _start_slurmctld(self) -> None:
        self._run("slurmctld")
        _wait("slurmctld", lambda: self._run("scontrol", "ping", check=False).returncode == 0, 30,
              self.base / "log" / "slurmctld.log")

    def _start_slurmd(self) -> None:
        self._run("slurmd", "-N", NODE)

        def idle() -> bool:
            r = self._run("sinfo", "-h", "-N", "-o", "%T", check=False)
            return r.returncode == 0 and r.stdout.strip().split() and all(
                s.rstrip("*") in ("idle", "mixed", "allocated") for s in r.stdout.split())

        _wait("slurmd (node idle)", idle, 30, self.base / "log" / "slurmd.log")

    # ---- stop --------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel our jobs, then stop our daemons by their pid files (newest first). Idempotent."""
        if self.conf.exists() and (self.base / "pid" / "slurmctld.pid").exists():
            self._run("scancel", "--full", "--user=root", check=False, timeout=20)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                r = self._run("squeue", "-h", "-t", "RUNNING,COMPLETING,PENDING", check=False, timeout=10)
                if r.returncode != 0 or not r.stdout.strip():
                    break
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            pid_file = _pid_file(self.base, name)
            if not pid_file.exists():
                continue
            try:
                pid = int(pid_file.read_text().strip())
            except ValueError:
                continue
            _terminate(pid, name)
            pid_file.unlink(missing_ok=True)

    @classmethod
    def attach(cls, base: Path) -> "Cluster":
        c = cls(Path(base))
        st = c.base / STATE_FILE
        if st.exists():
            c.ports = json.loads(st.read_text())["ports"]
        c.munge_socket = c.base / "munge" / "munge.socket"
        return c


def _pid_file(base: Path, daemon: str) -> Path:
    # munged and mariadbd drop to their own users and may only write inside their own directories.
    own = {"munged": "munge", "mariadbd": "mysql"}
    return base / own[daemon] / f"{daemon}.pid" if daemon in own else base / "pid" / f"{daemon}.pid"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _terminate(pid: int, name: str, timeout: float = 20) -> None:
    # The pid file may be stale and its pid reused: only signal a process that is still our daemon.
    if name not in _cmdline(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if name not in _cmdline(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: cluster.py start|stop BASE_DIR", file=sys.stderr)
        return 2
    action, base = argv[0], Path(argv[1]).resolve()
    try:
        if action == "start":
            install_packages()
            c = Cluster(base).start()
            print(f"export SLURM_CONF={c.conf}")
        else:
            Cluster.attach(base).stop()
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
