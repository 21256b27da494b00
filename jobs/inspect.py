"""Parameters, unique MLPs and compute of strategy-modified ViTs: of the model a run spec builds, or of a
model name and strategy expressions.

    python -m jobs inspect configs/minivit/mini_deit_base.yaml            # the exact model the config builds
    python -m jobs inspect configs/demo.yaml strategies.0.params.keep_ratio=0.5 --format json
    python -m jobs inspect configs/paper/study.yaml                       # one row per condition of a study
    python -m jobs inspect --model vit_base_patch16_224 --strategy grouped
    python -m jobs inspect --model vit_base_patch16_224                    # every registered strategy
    python -m jobs inspect --model vit_small_patch16_224 --strategy grouped+shallow:keep_ratio=0.25 --format json

A config is read like `jobs train` (a run spec) or `orchestrator sweep` (a study: one row per condition and
model-changing grid point) reads it, model.kwargs, img_size and num_classes applied, without needing its
dataset or weights files.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterable

import torch

from rundir import print_error, print_errors

from .accounting import model_stats
from .models import build_model, check
from .spec import RunSpec, SpecError, load_spec, read_yaml
from .strategies import STRATEGIES, StrategyError, StrategySpec, parse_expression
from .study import load_study, study_kind

# A study's own keys (jobs.study.STUDY_KEYS): jobs reads run specs only.
STUDY_KEYS = {"base", "seeds", "conditions", "grid", "sweep"}
CONVENTION = (
    "GFLOPs = the paper's convention: 1e9 multiply-accumulates per image of every layer except the attention "
    "matmuls (QK^T, AV); GMACs = all matmuls incl. attention (timm's convention); true FLOPs = 2 x GMACs. "
    "Counted with torch.utils.flop_counter.FlopCounterMode. Params: stored (a shared tensor once); "
    "in use: every use of a shared tensor counted."
)


def inspect_model(model: str, specs: list[StrategySpec], label: str, create_kwargs: dict[str, Any]) -> dict:
    """One row: the model `build_model(model, specs, **create_kwargs)` makes, counted on the meta device."""
    errors = check(model, specs, **create_kwargs)
    if errors:
        raise StrategyError("; ".join(errors))
    # Which units a strategy keeps (by weight values) changes no count: build the same shapes without weights
    # (a DGMR selection of ViT-B would take minutes on a CPU).
    with torch.device("meta"):
        net = build_model(model, [StrategySpec(name=s.name, params=s.params.shapes_only()) for s in specs],
                          **create_kwargs)
    stats = model_stats(net)
    # every use of a shared tensor counted: the size of the same network without sharing
    in_use = sum(p.numel() for _, p in net.named_parameters(remove_duplicate=False))
    embed_dim = net.blocks[0].mlp.fc1.in_features
    return {"model": model, "strategy": label, **stats.as_dict(), "params_in_use": in_use,
            "expansion_ratio": stats.mlp_hidden / embed_dim}


def inspect_one(model: str, expression: str, img_size: int | None = None) -> dict:
    kwargs = {"img_size": img_size} if img_size else {}
    return inspect_model(model, parse_expression(expression), expression, kwargs)


def inspect_runs(runs: Iterable[RunSpec]) -> list[dict]:
    """One row per distinct model of the runs (a study's seeds and non-model grid axes build the same one),
    labelled by condition, plus the grid point where one condition builds several models."""
    rows: dict[str, dict] = {}
    for run in runs:
        kwargs = run.create_kwargs()
        key = json.dumps([run.model.name, [s.model_dump(mode="json") for s in run.strategies], kwargs],
                         sort_keys=True, default=repr)
        if key in rows:
            continue
        label = run.condition_label
        if any(r["strategy"] == label for r in rows.values()) and run.ablation:
            label += " " + ",".join(f"{k}={v}" for k, v in run.ablation.items())
        rows[key] = inspect_model(run.model.name, run.strategies, label, kwargs)
    return list(rows.values())


def format_table(rows: list[dict], first: str = "Strategy") -> str:
    header = [first, "Params", "MLP Params", "Unique MLPs", "Unique Attn", "GFLOPs", "GMACs", "Hidden", "Expansion Ratio",
              "Params (exact)", "Params in use"]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for r in rows:
        lines.append(" | ".join([
            r["strategy"], f"{r['params'] / 1e6:.2f}M", f"{r['mlp_params'] / 1e6:.1f}M", str(r["unique_mlps"]), str(r["unique_attn"]),
            f"{r['gflops']:.2f}", f"{r['gmacs']:.2f}", str(r["mlp_hidden"]), f"{r['expansion_ratio']:g}",
            f"{r['params']:,}", f"{r['params_in_use']:,}",
        ]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs inspect", description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", type=Path, help="run spec YAML: count the model it builds")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config, e.g. model.kwargs.fc_norm=null")
    parser.add_argument("--model", default=None, help="timm model name (default vit_base_patch16_224; not with CONFIG)")
    parser.add_argument("--strategy", action="append",
                        help="strategy expression, repeatable: name[:key=value...][+name...]; default: all registered")
    parser.add_argument("--img-size", type=int, default=None, help="input resolution (default: the model's)")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_intermixed_args(argv)
    if args.config is not None:
        if args.model or args.strategy or args.img_size:
            print_error("give a CONFIG or --model/--strategy/--img-size, not both (override the config instead)")
            return 2
        return _inspect_config(args.config, args.overrides, args.format)
    model = args.model or "vit_base_patch16_224"
    expressions = args.strategy or sorted(STRATEGIES, key=lambda n: (n != "baseline", n))
    try:
        rows = [inspect_one(model, expr, args.img_size) for expr in expressions]
    except StrategyError as exc:
        print_error(str(exc))
        return 2
    return print_rows(rows, model, args.format, "Strategy")


def _inspect_config(config: Path, overrides: list[str], fmt: str) -> int:
    kind = "config"
    try:
        kind = study_kind(read_yaml(config), overrides)
        # counting needs neither the dataset nor the weights
        runs = load_study(config, overrides, files=False).runs if kind == "study" else \
            [load_spec(config, overrides, files=False)]
        rows = inspect_runs(runs)
    except SpecError as exc:
        return print_errors(f"{config} is not a valid {'run spec' if kind == 'run' else kind}", exc.errors)
    except StrategyError as exc:
        print_error(str(exc))
        return 2
    return print_rows(rows, f"{config}: {runs[0].model.name}", fmt, "Condition")


def print_rows(rows: list[dict], title: str, fmt: str, first: str) -> int:
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(f"{title}\n{format_table(rows, first)}\n\n{CONVENTION}")
    return 0
