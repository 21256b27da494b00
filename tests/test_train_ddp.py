"""2-process DDP on CPU (gloo) under torchrun-style environment variables.

The file is also the worker: `python tests/test_train_ddp.py OUT DEMO_ROOT` with RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT set runs one rank and writes what it saw to OUT.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
PER_RANK_BATCH = 128


def ddp_spec(demo_root: str, out: Path, batch_size: int, *extra: str):
    from jobs.spec import load_spec

    # Augmentation, mixup and drop-path off: a batch is then the same images whoever reads it.
    return load_spec(DEMO, [
        f"data_root={demo_root}", f"output_root={out}", "run_id=ddp",
        "model.depth=2", "model.embed_dim=32", "model.num_heads=2", "model.patch_size=8",
        "model.drop_path_rate=0", "strategies=[{name: grouped, params: {group_size: 2}}]",
        "data.num_workers=1", "data.hflip=0", "data.rrc_scale=[1, 1]", "data.rrc_ratio=[1, 1]",
        "data.auto_augment=null", "data.reprob=0", "data.aug_repeats=1",
        "train.epochs=1", f"train.batch_size={batch_size}", "train.grad_accum=1", "train.mixup=0",
        "train.cutmix=0", "train.ema=false", "train.warmup_epochs=0", *extra,
    ])


def _worker(out: Path, demo_root: str) -> None:
    import torch.distributed as dist

    from jobs.local import LocalContext
    from jobs.train import Hooks, train_loop

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    spec = ddp_spec(demo_root, out / "runs", PER_RANK_BATCH)
    seen = {"weights_equal": [], "val_count": None, "rows": []}

    def before_update(state):
        if state.num_updates == 0:
            torch.save({n: p.grad.clone() for n, p in state.model.named_parameters()}, out / f"grads{rank}.pt")

    def after_step(state):
        flat = torch.cat([p.detach().reshape(-1) for p in state.model.parameters()])
        both = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(both, flat)
        seen["weights_equal"].append(all(torch.equal(both[0], t) for t in both[1:]))

    def after_epoch(state):
        seen["val_count"] = state.val_count
        seen["rows"].append(state.row)

    with LocalContext(spec.run_dir, use_gpu=False) as ctx:
        train_loop(spec, ctx, Hooks(before_update=before_update, after_step=after_step, after_epoch=after_epoch))
    (out / f"rank{rank}.json").write_text(json.dumps(seen))
    _stop_worker(out, demo_root)


def _stop_worker(out: Path, demo_root: str) -> None:
    """A second run: rank 1 alone gets SIGTERM after update 1; the ranks agree at update 3 (sync_every=3)."""
    from jobs.local import LocalContext
    from jobs.stop import Preempted
    from jobs.train import Hooks, train_loop

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    spec = ddp_spec(demo_root, out / "stopped", PER_RANK_BATCH, "checkpoint.sync_every=3")

    def signal_rank1(state):
        if rank == 1 and state.num_updates == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped_at = None
    with LocalContext(spec.run_dir, use_gpu=False) as ctx, ctx.stop.installed(signal.SIGTERM):
        try:
            train_loop(spec, ctx, Hooks(after_step=signal_rank1))
        except Preempted as exc:
            stopped_at = exc.update
    (out / f"stop{rank}.json").write_text(json.dumps({"update": stopped_at, "signalled": ctx.stop.requested()}))


def _run_ranks(tmp_path: Path, demo_root) -> None:
    port = _free_port()
    procs = []
    try:
        for rank in range(2):
            env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
            procs.append(subprocess.Popen([sys.executable, __file__, str(tmp_path), str(demo_root)], env=env,
                                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        logs = [p.communicate(timeout=540)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process_and_stops_on_one_ranks_signal(demo_data, tmp_path):
    _run_ranks(tmp_path, demo_data.root)

    # A stop request on rank 1 only: both ranks stop at the same agreed update, with one checkpoint of both.
    import rundir
    from jobs import checkpoint_files as ckpt

    stops = [json.loads((tmp_path / f"stop{r}.json").read_text()) for r in range(2)]
    assert stops == [{"update": 3, "signalled": False}, {"update": 3, "signalled": True}]
    stopped = tmp_path / "stopped" / "demo" / "ddp"
    assert (rundir.read_status(stopped)["state"], rundir.read_status(stopped)["update"]) == ("preempted", 3)
    latest = ckpt.latest_valid(stopped / rundir.CHECKPOINT_DIR)
    assert (ckpt.read_manifest(latest)["num_updates"], ckpt.read_manifest(latest)["world_size"]) == (3, 2)

    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # 1437 samples / 2 ranks / 128 per batch (last partial batch dropped): 5 updates
    assert seen[0]["weights_equal"] == [True] * 5
    assert seen[0]["val_count"] == seen[1]["val_count"] == 360  # every val sample exactly once
    per_rank = {"epoch_s", "wall_time"}  # each rank's own clock; every other column is all-reduced
    rows = [[{k: v for k, v in row.items() if k not in per_rank} for row in s["rows"]] for s in seen]
    assert rows[0] == rows[1]
    run_dir = tmp_path / "runs" / "demo" / "ddp"
    import rundir as metrics

    table = metrics.read_metrics(run_dir).to_pylist()
    assert [r["epoch"] for r in table] == [1] and table[0]["top1"] == seen[0]["rows"][0]["top1"]

    # The same global batch in one process: the first gradients agree within float tolerance.
    from jobs.local import LocalContext
    from jobs.train import Hooks, train_loop

    class Stop(Exception):
        pass

    captured = {}

    def capture(state):
        captured.update({n: p.grad.clone() for n, p in state.model.named_parameters()})
        raise Stop

    spec = ddp_spec(str(demo_data.root), tmp_path / "single", 2 * PER_RANK_BATCH)
    with LocalContext(spec.run_dir, use_gpu=False) as ctx:
        try:
            train_loop(spec, ctx, Hooks(before_update=capture))
        except Stop:
            pass
    grads = [torch.load(tmp_path / f"grads{r}.pt") for r in range(2)]
    assert grads[0].keys() == captured.keys()
    for name, single in captured.items():
        assert torch.equal(grads[0][name], grads[1][name]), name
        torch.testing.assert_close(grads[0][name], single, rtol=1e-4, atol=1e-6, msg=name)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2])
