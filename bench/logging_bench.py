"""Cost of run logging per training step on the demo model (configs/demo.yaml): logging off vs TensorBoard
every 10 updates (the default sinks) vs that plus `layer_stats`.

    python bench/record.py -- python bench/logging_bench.py              # ~5 min on 2 CPU cores

Each configuration drives the demo ViT through the same optimizer updates, with the calls the train loop
makes (jobs.train: timed batches, micro_batch, before_step, after_step, epoch_end), on batches held in
memory so the loader's variance stays out. Rounds of `--steps` updates alternate between the
configurations (A B C A B C ...) so a change in machine load hits all of them alike; per configuration the
median round is taken. Figures: step time with logging / without, by wall clock and by CPU time of the
process (all threads, so TensorBoard's writer thread is counted).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.models import build_model  # noqa: E402
from jobs.run_logger import RunLogger  # noqa: E402
from jobs.spec import RunSpec, read_yaml  # noqa: E402

CONFIGS = {
    "off": {"tensorboard": False, "console": False},
    "tensorboard": {"tensorboard": True, "console": True},
    "tensorboard_layer_stats": {"tensorboard": True, "console": True, "layer_stats": True},
}


def spec_for(name: str, out: Path, every: int, strategy: str) -> RunSpec:
    raw = read_yaml(REPO / "configs" / "demo.yaml")
    raw.update(output_root=str(out), run_id=name, logging={**CONFIGS[name], "every_steps": every,
                                                            "progress_bar": False})
    if strategy != "baseline":
        raw["strategies"] = [{"name": strategy}]
    return RunSpec.model_validate(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer updates per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per configuration")
    parser.add_argument("--every", type=int, default=10, help="logging.every_steps")
    parser.add_argument("--strategy", default="grouped", help="strategy of the demo model (shared MLPs)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(tempfile.mkdtemp(prefix="logging_bench_"))
    runs = {}
    for name in CONFIGS:
        spec = spec_for(name, out, args.every, args.strategy)
        torch.manual_seed(0)
        model = build_model(spec.model.name, spec.strategies, **spec.create_kwargs()).to(device)
        spec.run_dir.mkdir(parents=True)
        logger = RunLogger(spec, spec.run_dir, rank=0, world_size=1, start_step=0, steps_per_epoch=args.steps)
        logger.attach(model)
        runs[name] = {"spec": spec, "model": model, "logger": logger, "step": 0, "wall": [], "cpu": [],
                      "opt": torch.optim.AdamW(model.parameters(), lr=1e-3)}
    bs, img = spec.train.batch_size, spec.data.img_size
    batches = [(torch.randn(bs, 3, img, img, device=device), torch.randint(0, spec.model.num_classes, (bs,),
                                                                            device=device)) for _ in range(8)]
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def round_(r: dict) -> None:
        model, opt, logger = r["model"], r["opt"], r["logger"]
        source = (batches[i % len(batches)] for i in range(args.steps))
        for x, y in logger.timed(source):
            loss = loss_fn(model(x), y)
            loss.backward()
            logger.micro_batch(loss, len(y))
            r["step"] += 1
            logger.before_step(r["step"], model)
            opt.step()
            opt.zero_grad(set_to_none=True)
            logger.after_step(r["step"], r["step"] // args.steps, opt.param_groups[0]["lr"])
        if device.type == "cuda":
            torch.cuda.synchronize()
        logger.epoch_end(r["step"], {"train_loss": float(loss.detach()), "top1": 0.0})

    for r in runs.values():  # warm-up: allocator, first event file, first parquet write
        round_(r)
    for _ in range(args.rounds):
        for r in runs.values():
            t0, c0 = time.perf_counter(), time.process_time()
            round_(r)
            r["wall"].append((time.perf_counter() - t0) / args.steps)
            r["cpu"].append((time.process_time() - c0) / args.steps)
    for r in runs.values():
        r["logger"].close()
    med = {name: {k: statistics.median(r[k]) for k in ("wall", "cpu")} for name, r in runs.items()}
    result = {
        "model": f"configs/demo.yaml ({spec.model.name}, depth {spec.model.depth}, {args.strategy}), batch {bs}",
        "device": str(device), "steps_per_round": args.steps, "rounds": args.rounds, "every_steps": args.every,
        "step_ms": {name: {k: round(v * 1e3, 3) for k, v in m.items()} for name, m in med.items()},
        "figures": {
            "tensorboard_vs_off_wall_ratio": round(med["tensorboard"]["wall"] / med["off"]["wall"], 4),
            "tensorboard_vs_off_cpu_ratio": round(med["tensorboard"]["cpu"] / med["off"]["cpu"], 4),
            "layer_stats_vs_off_wall_ratio": round(med["tensorboard_layer_stats"]["wall"] / med["off"]["wall"], 4),
            "layer_stats_vs_off_cpu_ratio": round(med["tensorboard_layer_stats"]["cpu"] / med["off"]["cpu"], 4),
        },
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
