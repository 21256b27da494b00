"""P9: the cost of a distillation training step next to the FLOP bound.

A student-only step (forward, cross-entropy, backward, AdamW step) and a distillation step (the same, plus the
frozen teacher's forward under no_grad and the DeiT soft loss, through jobs.distill's Distiller as the train loop
uses it), timed alternately on the same random batch. The bound: a distillation step cannot be cheaper, relative to
the student-only step, than (student fwd+bwd FLOPs) / (student fwd+bwd FLOPs + teacher fwd FLOPs), both counted
by torch.utils.flop_counter. Goal: measured speed ratio (student step / distillation step) >= 0.9 x the bound.

    python bench/record.py -- python bench/distill_step.py                      # CPU, batch 16, ViT-S/16 <- ViT-B/16
    python bench/record.py -- python bench/distill_step.py --device cuda --batch 64
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from jobs.distill.config import DistillConfig
from jobs.distill.runtime import Distiller
from jobs.distill.teacher import Teacher


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="vit_small_patch16_224")
    p.add_argument("--teacher", default="vit_base_patch16_224")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed steps of each kind (after one warm-up each)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--loss", default="soft")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    student = timm.create_model(args.student).to(device).train()
    teacher = timm.create_model(args.teacher).to(device).eval().requires_grad_(False)
    cfg = DistillConfig(teacher={"init": "self"}, loss=args.loss, alpha=0.5)
    distiller = Distiller(cfg, Teacher(teacher, {"init": args.teacher}), student, device)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    ce = nn.CrossEntropyLoss()
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)

    def student_step() -> None:
        loss = ce(student(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def distill_step() -> None:
        loss = distiller(student, x, y, ce)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def student_fwd_bwd() -> None:
        ce(student(x), y).backward()
        student.zero_grad(set_to_none=True)

    def teacher_fwd() -> None:
        with torch.no_grad():
            teacher(x)

    s_flops, t_flops = _flops(student_fwd_bwd), _flops(teacher_fwd)
    bound = s_flops / (s_flops + t_flops)
    times: dict[str, list[float]] = {"student": [], "distill": []}
    for i in range(args.steps + 1):
        for name, fn in (("student", student_step), ("distill", distill_step)):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i:  # the first of each kind warms caches and allocators
                times[name].append(time.perf_counter() - t0)
    t_student, t_distill = statistics.median(times["student"]), statistics.median(times["distill"])
    ratio = t_student / t_distill
    out = {
        "student": args.student, "teacher": args.teacher, "batch": args.batch, "device": str(device),
        "threads": torch.get_num_threads(), "student_step_s": t_student, "distill_step_s": t_distill,
        "student_fwd_bwd_gflops": s_flops / 1e9, "teacher_fwd_gflops": t_flops / 1e9,
        "figures": {"speed_ratio": round(ratio, 4), "flop_bound": round(bound, 4),
                    "ratio_over_bound": round(ratio / bound, 4), "goal_ratio_over_bound": 0.9},
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
