"""Inference throughput of strategy-modified ViTs, side by side in one process.

    python -m jobs bench --model vit_base_patch16_224 --strategies baseline,grouped,shallow
    python -m jobs bench --device cuda --dtype bf16 --channels-last --compile --batch-size 256 --json runs/study/bench.json

Strategies are timed round-robin (the order rotates every round) so machine drift hits all alike;
each figure is the median over rounds after warm-up, with device synchronisation on GPU. The MAC
ratio (baseline GMACs / strategy GMACs) is the speed-up compute alone would allow.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from rundir import print_error

from .accounting import model_img_size, model_stats
from .models import build_model, check
from .strategies import StrategyError, parse_expression

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepare(model: str, expression: str, device: torch.device, channels_last: bool, compile_model: bool,
             compile_backend: str, create_kwargs: dict):
    specs = parse_expression(expression)
    errors = check(model, specs, **create_kwargs)
    if errors:
        raise StrategyError("; ".join(errors))
    net = build_model(model, specs, **create_kwargs).to(device).eval()
    stats = model_stats(net)
    size = model_img_size(net)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile_model:
        net = torch.compile(net, backend=compile_backend)
    return net, stats, size


def run_bench(model: str, expressions: list[str], *, device: str = "cpu", dtype: str = "fp32", batch_size: int = 8,
              rounds: int = 7, iters: int = 3, warmup: int = 2, channels_last: bool = False,
              compile_model: bool = False, compile_backend: str = "inductor", create_kwargs: dict | None = None) -> dict:
    """Time each strategy expression; `create_kwargs` go to timm.create_model (e.g. a smaller img_size or depth),
    `compile_backend` to torch.compile (inductor; "eager" only traces, for smoke tests)."""
    dev = torch.device(device)
    nets = {e: _prepare(model, e, dev, channels_last, compile_model, compile_backend, create_kwargs or {})
            for e in expressions}
    x = torch.randn(batch_size, 3, *next(iter(nets.values()))[2], device=dev)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)

    def precision():
        # Reduced precision through autocast, as in training; fp32 runs plain.
        return torch.autocast(dev.type, dtype=DTYPES[dtype]) if dtype != "fp32" else nullcontext()

    def timed(net) -> tuple[float, float]:
        """(img/s of wall time, img per CPU-second of this process: robust to busy neighbours on CPU)."""
        with torch.inference_mode(), precision():
            _sync(dev)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(iters):
                net(x)
            _sync(dev)
        images = batch_size * iters
        return images / (time.perf_counter() - start), images / max(time.process_time() - cpu_start, 1e-9)

    for net, _, _ in nets.values():
        for _ in range(warmup):
            timed(net)
    samples: dict[str, list[tuple[float, float]]] = {e: [] for e in expressions}
    for r in range(rounds):
        order = expressions[r % len(expressions):] + expressions[: r % len(expressions)]
        for e in order:
            samples[e].append(timed(nets[e][0]))
    base_expr = "baseline" if "baseline" in nets else expressions[0]
    def median(e: str, which: int) -> float:
        return statistics.median(s[which] for s in samples[e])

    base_macs = nets[base_expr][1].gmacs
    results = []
    for e in expressions:
        img_s, cpu_img_s = median(e, 0), median(e, 1)
        stats = nets[e][1]
        results.append({
            "strategy": e, "img_s": img_s, "ratio": img_s / median(base_expr, 0),
            "cpu_img_s": cpu_img_s, "cpu_ratio": cpu_img_s / median(base_expr, 1),
            "mac_ratio": base_macs / stats.gmacs, "gmacs": stats.gmacs, "gflops": stats.gflops,
            "params": stats.params, "spread": (min(s[0] for s in samples[e]), max(s[0] for s in samples[e])),
        })
    return {
        "model": model, "device": str(dev), "device_name": _device_name(dev), "dtype": dtype,
        "batch_size": batch_size, "rounds": rounds, "iters": iters, "channels_last": channels_last,
        "compile": compile_model, "compile_backend": compile_backend if compile_model else None,
        "threads": torch.get_num_threads(), "reference": base_expr, "results": results,
    }


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def format_result(res: dict) -> str:
    lines = [f"{res['model']} on {res['device_name']} ({res['dtype']}, batch {res['batch_size']}, "
             f"median of {res['rounds']} rounds x {res['iters']} iters)",
             f"Strategy | img/s | ratio vs {res['reference']} | img/CPU-s | CPU ratio | MAC ratio (bound)",
             "--- | --- | --- | --- | --- | ---"]
    for r in res["results"]:
        lines.append(f"{r['strategy']} | {r['img_s']:,.1f} | {r['ratio']:.3f} | {r['cpu_img_s']:,.2f} | "
                     f"{r['cpu_ratio']:.3f} | {r['mac_ratio']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_base_patch16_224")
    p.add_argument("--strategies", default="baseline,grouped,shallow", help="comma-separated strategy expressions")
    p.add_argument("--batch-size", type=int, default=None, help="default: 256 on cuda, 8 on cpu")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile each model (GPU)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the results here (e.g. STUDY_DIR/bench.json)")
    args = p.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        print_error("--device cuda but no GPU is visible; use --device cpu")
        return 2
    try:
        res = run_bench(
            args.model, [s.strip() for s in args.strategies.split(",") if s.strip()], device=args.device,
            dtype=args.dtype or ("bf16" if on_gpu else "fp32"), batch_size=args.batch_size or (256 if on_gpu else 8),
            rounds=args.rounds, iters=args.iters, warmup=args.warmup, channels_last=args.channels_last,
            compile_model=args.compile,
        )
    except StrategyError as exc:
        print_error(str(exc))
        return 2
    print(format_result(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    return 0
