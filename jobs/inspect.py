"""Parameters, unique MLPs and compute of strategy-modified ViTs.

    python -m jobs inspect --model vit_base_patch16_224 --strategy grouped
    python -m jobs inspect --model vit_base_patch16_224                    # every registered strategy
    python -m jobs inspect --model vit_small_patch16_224 --strategy grouped+shallow:keep_ratio=0.25 --format json
"""
from __future__ import annotations

import argparse
import json

import torch

from rundir import print_error

from .accounting import model_stats
from .models import build_model, check, needs_weights
from .strategies import STRATEGIES, StrategyError, parse_expression

CONVENTION = (
    "GFLOPs = the paper's convention: 1e9 multiply-accumulates per image of every layer except the attention "
    "matmuls (QK^T, AV); GMACs = all matmuls incl. attention (timm's convention); true FLOPs = 2 x GMACs. "
    "Counted with torch.utils.flop_counter.FlopCounterMode."
)


def inspect_one(model: str, expression: str, img_size: int | None = None) -> dict:
    specs = parse_expression(expression)
    kwargs = {"img_size": img_size} if img_size else {}
    errors = check(model, specs, **kwargs)
    if errors:
        raise StrategyError("; ".join(errors))
    # Counting needs no weight values unless a strategy selects units by them.
    device = "cpu" if needs_weights(specs) else "meta"
    with torch.device(device):
        net = build_model(model, specs, **kwargs)
    stats = model_stats(net)
    embed_dim = net.blocks[0].mlp.fc1.in_features
    return {"model": model, "strategy": expression, **stats.as_dict(), "expansion_ratio": stats.mlp_hidden / embed_dim}


def format_table(rows: list[dict]) -> str:
    header = ["Strategy", "Params", "MLP Params", "Unique MLPs", "GFLOPs", "GMACs", "Hidden", "Expansion Ratio"]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for r in rows:
        lines.append(" | ".join([
            r["strategy"], f"{r['params'] / 1e6:.2f}M", f"{r['mlp_params'] / 1e6:.1f}M", str(r["unique_mlps"]),
            f"{r['gflops']:.2f}", f"{r['gmacs']:.2f}", str(r["mlp_hidden"]), f"{r['expansion_ratio']:g}",
        ]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs inspect", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm model name")
    parser.add_argument("--strategy", action="append",
                        help="strategy expression, repeatable: name[:key=value...][+name...]; default: all registered")
    parser.add_argument("--img-size", type=int, default=None, help="input resolution (default: the model's)")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_args(argv)
    expressions = args.strategy or sorted(STRATEGIES, key=lambda n: (n != "baseline", n))
    try:
        rows = [inspect_one(args.model, expr, args.img_size) for expr in expressions]
    except StrategyError as exc:
        print_error(str(exc))
        return 2
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(f"{args.model}\n{format_table(rows)}\n\n{CONVENTION}")
    return 0
