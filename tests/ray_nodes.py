"""Node-loss harness: a 2-node `ray.cluster_utils.Cluster`, a command run against it, one node removed
mid-run and a replacement added; what happened is written as JSON for a test to assert on.

    python tests/ray_nodes.py --out result.json --run-dir RUN_DIR --remove-after-checkpoint 2 \
        --replace-after-timeouts 1 -- python -m orchestrator run configs/demo.yaml ...

The head has 0 CPUs (it hosts the driver and Ray Train's controller, which Ray pins to the driver's
node); each worker node has `--node-cpus` CPUs, so a run with one CPU per worker puts one worker on
each node. The command gets RAY_ADDRESS of this cluster. Once `RUN_DIR/checkpoints/ckpt-<K>` exists
(K = --remove-after-checkpoint) and `--remove-delay` seconds more have passed (the run is then in a
later epoch), the worker node hosting rank `--victim-rank` (by the pids of the run's `workers:` event
and the raylet each worker process belongs to) is removed (all its processes SIGKILLed, as in a node crash),
and a fresh node is added once Ray Train has logged `--replace-after-timeouts` worker-group start timeouts
since (a state, not a duration: however slow the machine, the run has waited across that many timeouts). Node management runs on this process's main
thread (`Cluster.add_node` must). Run it as PID 1 of a private PID namespace
(`unshare -fp --mount-proc --kill-child`): when it exits, every Ray process it started dies with it.
Set RAY_TMPDIR to a short private folder so no state lands in the shared /tmp/ray.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

from orchestrator.cluster import unused_port


def _checkpoints(run_dir: Path) -> list[str]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("ckpt-") and p.is_dir())


def _raylet_pid(node) -> int:
    import ray._private.ray_constants as rc

    return node.all_processes[rc.PROCESS_TYPE_RAYLET][0].process.pid


def _train_workers(nodes) -> dict[str, list[int]]:
    """{node id: pids of the Ray Train worker processes that node's raylet started}."""
    by_raylet = {_raylet_pid(n): n.node_id for n in nodes}
    out: dict[str, list[int]] = {n.node_id: [] for n in nodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(next(ln.split()[1] for ln in (proc / "status").read_text().splitlines() if ln.startswith("PPid:")))
        except (OSError, StopIteration, ValueError):
            continue
        if ppid in by_raylet and "RayTrainWorker" in title:
            out[by_raylet[ppid]].append(int(proc.name))
    return out


def _rank_pids(run_dir: Path) -> dict[int, int]:
    """{rank: pid} from the newest `workers:` line of the run's events.log (`rank0=host:pid ...`)."""
    path = run_dir / "events.log"
    lines = [ln for ln in path.read_text().splitlines() if " workers: " in ln] if path.exists() else []
    if not lines:
        return {}
    found = re.findall(r"rank(\d+)=\S*?:(\d+)", lines[-1].split(" workers: ", 1)[1])
    return {int(rank): int(pid) for rank, pid in found}


def _failure_decisions() -> list[dict]:
    """Ray Train's failure-policy decisions, from the controller's log in this cluster's session folder."""
    import ray._common.utils as ru

    logs = Path(ru.get_default_ray_temp_dir()) / "session_latest" / "logs" / "train"
    out = []
    for path in sorted(logs.glob("ray-train-sys-controller-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                message = json.loads(line).get("message", "")
            except ValueError:
                message = line
            m = re.search(r"\[FailurePolicy\] (\w+)\s+Source: ([\w ]+?)\s+Error count: (\d+)", message)
            if m:
                error = message.split("\nError:", 1)[-1].strip()
                out.append({"decision": m.group(1), "source": m.group(2), "count": int(m.group(3)),
                            "error": " ".join(error.split())[:300]})
    return out


def _start_timeouts() -> list[dict]:
    """The failure-policy decisions on a worker group whose start timed out (no room for it in the cluster)."""
    return [d for d in _failure_decisions() if d["source"] == "controller" and "startup timed out" in d["error"]]


def _cpus_per_node(cluster) -> dict[str, dict[str, float]]:
    """{node id: {"total": CPUs, "available": CPUs}} for the alive nodes, from the GCS."""
    total = cluster.global_state.total_resources_per_node()
    avail = cluster.global_state.available_resources_per_node()
    return {n: {"total": float(r.get("CPU", 0)), "available": float(avail.get(n, {}).get("CPU", 0))}
            for n, r in total.items()}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("error: give the command to run after `--`", file=sys.stderr)
        return 2
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="tests/ray_nodes.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON report written here")
    p.add_argument("--log", type=Path, required=True, help="the command's stdout+stderr")
    p.add_argument("--run-dir", type=Path, required=True, help="run folder the command writes")
    p.add_argument("--remove-after-checkpoint", type=int, default=2, help="K: remove a node once ckpt-K exists")
    p.add_argument("--remove-delay", type=float, default=1.0, help="seconds after ckpt-K before the removal")
    p.add_argument("--victim-rank", type=int, default=0, help="remove the node hosting this rank's worker")
    p.add_argument("--replace-after-timeouts", type=int, default=1,
                   help="add a node once this many worker-group start timeouts were logged after the removal; <0: never")
    p.add_argument("--node-cpus", type=int, default=1, help="CPUs of each worker node")
    p.add_argument("--timeout", type=float, default=400.0, help="seconds for the whole command")
    args = p.parse_args(argv[:split])
    command = argv[split + 1:]

    import ray
    from ray.cluster_utils import Cluster

    report: dict = {"command": command, "events": [], "pid_namespace": os.readlink("/proc/self/ns/pid")}
    t0 = time.time()

    def note(what: str, **extra) -> None:
        report["events"].append({"t": round(time.time() - t0, 2), "what": what, **extra})

    def write() -> None:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(args.out)

    cluster = None
    proc = None
    try:
        # No dashboard: nothing here needs it, and it is the slowest part of a head to start. Its processes
        # (started from here, so with this environment) ask a state API that nothing serves: Ray Train's
        # placement-group cleaner then waits, instead of asking another Ray on 127.0.0.1:8265 (orchestrator.cluster).
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{unused_port()}"
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        report["address"] = cluster.address
        report["head"] = cluster.head_node.node_id
        workers = [cluster.add_node(num_cpus=args.node_cpus) for _ in range(2)]
        cluster.wait_for_nodes()
        report["workers"] = [w.node_id for w in workers]
        note("cluster up", nodes=_cpus_per_node(cluster))

        env = dict(os.environ, RAY_ADDRESS=cluster.address)
        with args.log.open("w") as log:
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        note("command started", pid=proc.pid)
        deadline = time.time() + args.timeout
        target = f"ckpt-{args.remove_after_checkpoint:06d}"
        removed_at = None
        replaced = args.replace_after_timeouts < 0
        timeouts_before = 0  # controller decisions (start timeouts) logged before the removal
        while proc.poll() is None and time.time() < deadline:
            if removed_at is None and any(c >= target for c in _checkpoints(args.run_dir)):  # ckpt-K or newer
                note("checkpoint seen", checkpoint=target)
                time.sleep(args.remove_delay)
                if proc.poll() is not None:
                    break
                placed = _train_workers(workers)
                ranks = _rank_pids(args.run_dir)
                victim_pid = ranks.get(args.victim_rank)
                hosts = [w for w in workers if victim_pid in placed[w.node_id]]
                if not hosts:
                    raise RuntimeError(f"rank {args.victim_rank} (pid {victim_pid}) is on no worker node: "
                                       f"ranks {ranks}, train workers per node {placed}")
                victim = hosts[0]
                before = _checkpoints(args.run_dir)
                nodes = _cpus_per_node(cluster)
                timeouts_before = len(_start_timeouts())
                cluster.remove_node(victim, allow_graceful=False)
                removed_at = time.time()
                note("node removed", node=victim.node_id, rank=args.victim_rank, pid=victim_pid, ranks=ranks,
                     train_workers=placed, nodes_before=nodes,
                     checkpoints_before=before, checkpoints_after=_checkpoints(args.run_dir))
            if removed_at is not None and not replaced and \
                    len(_start_timeouts()) - timeouts_before >= args.replace_after_timeouts:
                node = cluster.add_node(num_cpus=args.node_cpus)
                replaced = True
                report["replacement"] = node.node_id
                note("node added", node=node.node_id, nodes=_cpus_per_node(cluster),
                     seconds_without_node=round(time.time() - removed_at, 2))
            time.sleep(0.2)
        if proc.poll() is None:
            note("command timed out", timeout=args.timeout)
            proc.kill()
        report["returncode"] = proc.wait()
        note("command exited", returncode=report["returncode"])
        report["removed"] = removed_at is not None
        report["failure_decisions"] = _failure_decisions()
    except BaseException as exc:  # the report says what broke; the namespace takes the processes down
        report["error"] = "".join(traceback.format_exception(exc))[-3000:]
        if proc is not None and proc.poll() is None:
            proc.kill()
    finally:
        write()
        if cluster is not None:
            try:
                cluster.shutdown()
            except Exception:  # PID 1 exiting kills whatever is left in the namespace
                pass
        ray.shutdown()
    return 0 if "error" not in report else 1


if __name__ == "__main__":
    sys.exit(main())
