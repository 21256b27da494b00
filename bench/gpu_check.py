"""Every GPU-selected code path and GPU figure in one command (`make gpu-check`), under 8 minutes on one H200.

    python bench/gpu_check.py --json build/bench/gpu_check.json          # on a GPU machine
    python bench/gpu_check.py --device cpu --quick                        # smoke test (tests/test_gpu_check.py)
    python bench/gpu_check.py --only p2_inference,distributed             # some of the checks

Checks, in this order (one failing does not stop the others; the exit status is 1 if any failed):
  distributed   torch.distributed initialised from the environment (MASTER_ADDR/PORT, RANK 0, WORLD_SIZE 1):
                NCCL on a GPU, gloo on the CPU; one all_reduce and a barrier.
  kill_resume   the demo run (`python -m jobs train configs/demo.yaml`, bf16 autocast and channels-last on a GPU)
                SIGKILLed after its first mid-epoch checkpoint and started again: it must resume from that
                checkpoint and end with the per-epoch metrics of an uninterrupted run. On the CPU they must be
                identical; on a GPU bitwise equality is not expected (cuDNN picks its algorithms per process,
                and atomics reorder sums), so they must agree within TOLERANCE.
  p2_inference  P2: img/s of ViT-B/16 baseline / grouped / shallow (jobs.bench: bf16 autocast, channels-last),
                eager and torch.compile'd, with each ratio to baseline next to the MAC ratio (the bound).
  p6_training   P6: training img/s of ViT-B/16 with the paper's full recipe (configs/paper/baseline.yaml with bf16
                autocast, torch.compile, channels-last, RandAugment, mixup/cutmix, erasing, EMA, accumulation) through
                jobs.train.train_loop, from .beton files made on the fly (bench/data_synth.py); steady state
                (epochs after the first, which compiles), and the model-FLOP utilisation
                (img/s x 3 x 2 x forward MACs / the GPU's dense bf16 peak).
--quick shrinks every size (a 4-block 32 px ViT, tens of images) so the same code runs on a CPU in about a minute;
its figures mean nothing. The last JSON object printed (also written to --json) holds the results and, under
"figures", what bench/record.py logs in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kill_resume import TOLERANCE, kill_and_resume  # noqa: E402

PAPER = REPO / "configs" / "paper" / "baseline.yaml"
# Dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOP/s, no sparsity), matched in this order
# against torch.cuda.get_device_name(); `--peak-tflops` overrides, and other devices get no MFU.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.5), ("H200", 989.4), ("H100", 989.4), ("GH200", 989.4),
                    ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0))


@dataclass(frozen=True)
class Sizes:
    """How big each check is: the full sizes for a GPU, tiny ones for the CPU smoke test."""

    model: str = "vit_base_patch16_224"
    model_overrides: tuple[str, ...] = ()        # RunSpec overrides shrinking the model (p6)
    create_kwargs: dict = field(default_factory=dict)  # the same for timm.create_model (p2)
    p2_batch: int = 256
    p2_rounds: int = 7
    p2_iters: int = 3
    p2_warmup: int = 2
    compile_backend: str = "inductor"
    p6_train_images: int = 5120
    p6_val_images: int = 512
    p6_batch: int = 256
    p6_epochs: int = 3
    synth_side: int = 500                        # max side of the stored JPEGs
    demo_data: str = "digits"                    # the shipped demo dataset, or "synth": the p6 .beton files
    demo_epochs: int = 3
    demo_batch: int = 64
    demo_every_steps: int = 5
    demo_timeout_s: float = 240.0                # per training process


FULL = Sizes()
# Only tracing for torch.compile here: inductor's C++ build of each model takes minutes on a small CPU, and
# tests/test_gpu_paths.py compiles with inductor on the CPU where it is needed.
QUICK = Sizes(
    model="vit_tiny_patch16_224",
    model_overrides=("model.patch_size=4", "model.depth=4", "model.embed_dim=64", "model.num_heads=4",
                     "data.img_size=32"),
    create_kwargs={"img_size": 32, "patch_size": 4, "depth": 4, "embed_dim": 64, "num_heads": 4},
    p2_batch=8, p2_rounds=2, p2_iters=1, p2_warmup=1, compile_backend="eager",
    p6_train_images=48, p6_val_images=16, p6_batch=8, p6_epochs=2, synth_side=64,
    demo_data="synth", demo_epochs=2, demo_batch=8, demo_every_steps=2, demo_timeout_s=600.0,
)


@dataclass
class Env:
    device: torch.device
    sizes: Sizes
    workdir: Path
    workers: int
    peak_tflops: float | None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


# ---- checks --------------------------------------------------------------------------------------------------


def check_distributed(env: Env) -> dict:
    """Join a one-process group the way torchrun's environment does, and use it once."""
    cuda = env.device.type == "cuda"
    backend = "nccl" if cuda else "gloo"
    values = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1",
              "LOCAL_RANK": "0"}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    t0 = time.perf_counter()
    try:
        dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=120),
                                device_id=env.device if cuda else None)
        t = torch.full((1024,), 3.0, device=env.device)
        dist.all_reduce(t)
        dist.barrier()
        _sync(env.device)
        ok = bool((t == 3.0).all())
        out = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "all_reduce_ok": ok,
               "init_and_reduce_s": time.perf_counter() - t0}
        if cuda:
            version = torch.cuda.nccl.version()
            out["nccl_version"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out["passed"] = ok
    return out


def check_kill_resume(env: Env) -> dict:
    s, cuda = env.sizes, env.device.type == "cuda"
    if s.demo_data == "digits":
        from data.demo import prepare_demo

        data_root = prepare_demo(env.workdir / "demo_data", log=lambda *_: None).root
    else:
        data_root = _synth_betons(env)
    overrides = [f"data_root={data_root}", f"train.epochs={s.demo_epochs}", f"train.batch_size={s.demo_batch}",
                 f"checkpoint.every_steps={s.demo_every_steps}", f"resources.use_gpu={str(cuda).lower()}",
                 f"data.num_workers={min(env.workers, 4)}"]
    if cuda:  # the GPU defaults of a real run: bf16 autocast, channels-last
        overrides += ["train.amp=true", "train.amp_dtype=bfloat16", "train.channels_last=true"]
    return kill_and_resume(REPO / "configs" / "demo.yaml", overrides, env.workdir / "kill_resume", exact=not cuda,
                           timeout_s=s.demo_timeout_s)


def check_p2(env: Env) -> dict:
    from jobs.bench import run_bench

    s = env.sizes
    out: dict = {}
    for compiled in (False, True):
        res = run_bench(s.model, ["baseline", "grouped", "shallow"], device=str(env.device), dtype="bf16",
                        batch_size=s.p2_batch, rounds=s.p2_rounds, iters=s.p2_iters, warmup=s.p2_warmup,
                        channels_last=True, compile_model=compiled, compile_backend=s.compile_backend,
                        create_kwargs=s.create_kwargs)
        out["compiled" if compiled else "eager"] = res
    rows = [r for res in out.values() for r in res["results"]]
    out["passed"] = all(math.isfinite(r["img_s"]) and r["img_s"] > 0 for r in rows)
    return out


def _synth_betons(env: Env) -> Path:
    """train.beton / val.beton of synthetic photos (10 classes) under workdir/synth."""
    from data_synth import make_tree

    from data.convert import ConvertOptions, convert
    from data.labels import read_label_map

    root = env.workdir / "synth"
    s = env.sizes
    opts = ConvertOptions(max_res=s.synth_side, write_mode="jpg", jpeg_quality=90, workers=env.workers)
    train_tree = make_tree(root / "train_tree", s.p6_train_images, env.workers)
    val_tree = make_tree(root / "val_tree", s.p6_val_images, env.workers)
    convert(train_tree, root / "train.beton", opts, log=lambda *_: None)
    convert(val_tree, root / "val.beton", opts, label_map=read_label_map(root / "train.beton"), log=lambda *_: None)
    return root


def check_p6(env: Env) -> dict:
    from jobs.local import LocalContext
    from jobs.loop_state import Hooks
    from jobs.spec import load_spec
    from jobs.train import train_loop

    s, cuda = env.sizes, env.device.type == "cuda"
    t0 = time.perf_counter()
    root = _synth_betons(env)
    data_s = time.perf_counter() - t0
    overrides = [f"data_root={root}", "model.num_classes=10", f"train.epochs={s.p6_epochs}",
                 f"train.batch_size={s.p6_batch}", "train.compile=true", "resources.num_workers=1",
                 f"resources.use_gpu={str(cuda).lower()}", f"data.num_workers={env.workers}",
                 f"output_root={env.workdir / 'runs'}", "study=gpu-check", "run_id=p6",
                 # bf16: the recipe as a GPU study runs it (the paper configs keep timm's float16 + GradScaler)
                 "train.amp=true", "train.amp_dtype=bfloat16", *s.model_overrides]
    if not cuda:
        overrides.append("train.amp_cpu=true")  # the bf16 autocast path, on the CPU's kernels
    spec = load_spec(PAPER, overrides)
    marks: list[tuple[int, int, float]] = []  # (epoch, update, time after the update)
    layouts: set[bool] = set()                 # whether the batches the model saw were channels-last

    def after_step(state) -> None:
        _sync(env.device)
        marks.append((state.epoch, state.num_updates, time.perf_counter()))
        layouts.add(state.images.is_contiguous(memory_format=torch.channels_last))

    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    with LocalContext(spec.run_dir, use_gpu=cuda, env={}) as ctx:
        row = train_loop(spec, ctx, Hooks(after_step=after_step))
    per_update = spec.train.batch_size * spec.train.grad_accum
    images = seconds = 0.0
    for epoch in range(1, spec.train.epochs):  # the first epoch compiles
        times = [t for e, _, t in marks if e == epoch]
        images += (len(times) - 1) * per_update
        seconds += times[-1] - times[0] if len(times) > 1 else 0.0
    img_s = images / seconds if seconds > 0 else float("nan")
    train_flops = 3 * 2 * row["gmacs"] * 1e9  # forward + backward (twice the forward's matmuls)
    mfu = img_s * train_flops / (env.peak_tflops * 1e12) if env.peak_tflops else None
    graphs = int(counters["stats"]["unique_graphs"])
    return {
        "img_s": img_s, "mfu": mfu, "peak_tflops": env.peak_tflops, "gmacs": row["gmacs"], "params": row["params"],
        "images_timed": images, "updates": len(marks), "batch_size": spec.train.batch_size,
        "grad_accum": spec.train.grad_accum, "amp_dtype": spec.train.amp_dtype, "channels_last": spec.train.channels_last,
        "compiled_graphs": graphs, "input_channels_last": sorted(layouts), "data_prep_s": data_s,
        "train_loss": row["train_loss"],
        # on a GPU the recipe's compile and channels-last must have taken effect (the loop applies them there only)
        "passed": math.isfinite(img_s) and math.isfinite(row["train_loss"])
        and (not cuda or (graphs > 0 and layouts == {spec.train.channels_last})),
    }


CHECKS: dict[str, Callable[[Env], dict]] = {
    "distributed": check_distributed,
    "kill_resume": check_kill_resume,
    "p2_inference": check_p2,
    "p6_training": check_p6,
}


# ---- report --------------------------------------------------------------------------------------------------


def figures(results: dict) -> dict:
    """The numbers BENCHMARKS.md's log keeps (bench/record.py shows at most 24)."""
    figs: dict = {}
    p2 = results.get("p2_inference", {})
    for mode in ("eager", "compiled"):
        for r in p2.get(mode, {}).get("results", []):
            figs[f"p2_{mode}.{r['strategy']}.img_s"] = round(r["img_s"], 1)
            if r["strategy"] != "baseline":
                figs[f"p2_{mode}.{r['strategy']}.ratio"] = round(r["ratio"], 3)
    for r in p2.get("eager", {}).get("results", []):
        if r["strategy"] != "baseline":
            figs[f"p2.{r['strategy']}.mac_ratio"] = round(r["mac_ratio"], 3)
    p6 = results.get("p6_training", {})
    for key in ("img_s", "mfu"):
        if isinstance(p6.get(key), float) and math.isfinite(p6[key]):
            figs[f"p6.{key}"] = round(p6[key], 4 if key == "mfu" else 1)
    kr = results.get("kill_resume", {})
    for key in ("resumed_mid_epoch", "bitwise_equal", "within_tolerance", "max_abs_diff_train_loss"):
        if key in kr:
            figs[f"kill_resume.{key}"] = kr[key]
    if "all_reduce_ok" in results.get("distributed", {}):
        figs["distributed.all_reduce_ok"] = results["distributed"]["all_reduce_ok"]
    figs["passed"] = all(results[name].get("passed") for name in results)
    return figs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the same code paths")
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {', '.join(CHECKS)}")
    p.add_argument("--workdir", type=Path, default=None, help="where data and runs go (default: a temp folder)")
    p.add_argument("--workers", type=int, default=min(16, len(os.sched_getaffinity(0))),
                   help="CPU processes for data synthesis, conversion and loading")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense bf16 peak for the MFU (default: from the GPU's name)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is visible; use --device cpu --quick for the smoke test", file=sys.stderr)
        return 2
    if device.type not in ("cuda", "cpu"):
        print(f"error: --device {args.device}: use cuda or cpu", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"error: --only: unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # NCCL's device_id needs the index
    sizes = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        env = Env(device, sizes, workdir, max(1, args.workers), args.peak_tflops or peak_tflops(device))
        results: dict = {}
        t_all = time.perf_counter()
        for name in names:
            t0 = time.perf_counter()
            print(f"== {name}", file=sys.stderr, flush=True)
            try:
                results[name] = CHECKS[name](env)
            except Exception as exc:  # report and go on: one broken path must not hide the others
                traceback.print_exc()
                results[name] = {"passed": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            results[name]["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"== {name}: {'passed' if results[name].get('passed') else 'FAILED'} "
                  f"({results[name]['seconds']} s)", file=sys.stderr, flush=True)
    report = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "quick": args.quick, "sizes": asdict(sizes), "seconds": round(time.perf_counter() - t_all, 1),
        "tolerance_gpu": TOLERANCE, "results": results, "figures": figures(results),
    }
    text = json.dumps(report, indent=2, default=str)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    print(text)
    return 0 if report["figures"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
