"""Take a run's model away: timm's Hugging Face layout, loadable without this package.

    python -m jobs export RUN_DIR OUT_DIR [--weights best|ema|last]

OUT_DIR gets `config.json` (architecture, num_classes, model_args, pretrained_cfg, label_names) and
`model.safetensors`: what `timm.create_model("local-dir:OUT_DIR", pretrained=True)` reads, with the
run's eval preprocessing as the pretrained_cfg, so `timm.data.resolve_data_config` +
`create_transform` reproduce the run's validation numbers.

The reduced model is written as the plain timm model that computes the same function: a pruned or
thin MLP becomes the `mlp_ratio` of its hidden width; a shared module is written once per block
that uses it (safetensors refuses aliased storage). Our own block in config.json (`vitreduce`:
model name, creation arguments, strategies, which tensors were tied) lets `jobs.load(OUT_DIR)`
rebuild the reduced model with its sharing, including models timm alone cannot rebuild.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from jobs import checkpoint_files as ckpt
from jobs.spec import RunSpec, format_validation_error
from rundir import (
    CHECKPOINT_DIR,
    METRICS_FILE,
    SPEC_JSON,
    Architecture,
    RecordedSpec,
    check_spec,
    read_metrics,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
OURS = "vitreduce"  # our block in config.json; timm reads only the top-level keys it knows
# data.val_interpolation -> timm's name. area: OpenCV INTER_AREA (ffcv's CenterCropRGBImageDecoder and the
# torch backend alike), which PIL's box filter equals when shrinking; bicubic: PIL's bicubic arithmetic.
VAL_INTERPOLATION = {"area": "box", "bicubic": "bicubic"}
# A timm rebuild counts as exact when its logits match the reduced model's to float32 rounding.
_LOGIT_ATOL = 1e-4


class ExportError(RuntimeError):
    """A run or export folder that cannot be exported or loaded; the message says which file and why."""


# ---- reading a run's weights ------------------------------------------------------------------


@dataclass
class Weights:
    state: dict[str, torch.Tensor]
    source: Path                 # the checkpoint folder they came from
    epoch: int | None            # epochs trained; None for a mid-epoch checkpoint
    metric: str | None           # the metrics column that scores these weights (top1 or ema_top1)
    top1: float | None           # the run's own top-1 of these weights, when it evaluated them


def read_run_spec(run_dir: Path) -> tuple[RunSpec, RecordedSpec]:
    """The run's recorded spec (rundir.record), typed again as a RunSpec, schema-checked only: the dataset need
    not exist where the export runs."""
    path = Path(run_dir) / SPEC_JSON
    recorded, problem = check_spec(run_dir)
    if problem:
        raise ExportError(f"{Path(run_dir)}: {problem}")
    if recorded is None:
        raise ExportError(f"{path} is missing: {run_dir} is not a run directory (expected output_root/study/run_id), "
                          "or it was written before runs recorded spec.json (resume it once to record it)")
    try:
        return RunSpec.model_validate(dict(recorded.raw)), recorded
    except ValidationError as exc:
        raise ExportError(f"{path} is not a valid run spec: {'; '.join(format_validation_error(exc))}") from None


def _row_top1(run_dir: Path, epoch: int | None, column: str) -> float | None:
    if epoch is None or not (Path(run_dir) / METRICS_FILE).exists():
        return None
    rows = [r for r in read_metrics(run_dir).to_pylist() if r["epoch"] == epoch]
    return rows[-1][column] if rows else None


def _best(run_dir: Path) -> Weights:
    folder = Path(run_dir) / CHECKPOINT_DIR / ckpt.BEST_DIR
    if not folder.is_dir():
        raise ExportError(f"{folder} does not exist (checkpoint.best was off, or no epoch finished); "
                          "use --weights last or --weights ema")
    problem = ckpt.verify(folder)
    if problem:
        raise ExportError(f"best weights unusable: {problem}; use --weights last or --weights ema")
    meta = ckpt.read_manifest(folder)
    state = torch.load(folder / ckpt.BEST_WEIGHTS, map_location="cpu", weights_only=True)
    return Weights(state, folder, meta.get("epoch"), meta.get("metric"), meta.get("value"))


def _latest(run_dir: Path, name: str, column: str) -> Weights:
    folder = ckpt.latest_valid(Path(run_dir) / CHECKPOINT_DIR)
    if folder is None:
        raise ExportError(f"{Path(run_dir) / CHECKPOINT_DIR} holds no valid checkpoint")
    if not (folder / name).is_file():
        raise ExportError(f"{folder / name} is missing: the run trained without EMA (train.ema=false); "
                          "use --weights last or --weights best")
    meta = ckpt.read_manifest(folder)
    epoch = meta.get("epoch") if meta.get("batch", 0) == 0 else None
    state = ckpt.unpack_state(ckpt.load_file(folder, name))
    return Weights(state, folder, epoch, column, _row_top1(run_dir, epoch, column))


WEIGHT_SOURCES: dict[str, Callable[[Path], Weights]] = {
    "best": _best,
    "ema": lambda run_dir: _latest(run_dir, "ema.pt", "ema_top1"),
    "last": lambda run_dir: _latest(run_dir, "model.pt", "top1"),
}


# ---- what timm needs to rebuild it ------------------------------------------------------------


def untied(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(every tensor as its own contiguous CPU copy, {alias key: key it shared storage with})."""
    aliases = ckpt.pack_state(state)["aliases"]
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}, aliases


def _mlp_ratio_for(hidden: int, dim: int) -> float:
    """The float that timm's `int(dim * mlp_ratio)` turns back into `hidden`."""
    ratio = hidden / dim
    while int(dim * ratio) < hidden:  # hidden / dim may round down by one ulp
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _plain_timm(name: str, args: dict[str, Any], device: str = "meta") -> nn.Module:
    import timm

    with torch.device(device):
        return timm.create_model(name, **args)


def timm_model_args(name: str, create_kwargs: dict[str, Any], architecture: Architecture) -> dict[str, Any]:
    """create_kwargs plus the `mlp_ratio` the run's MLP width needs, from the architecture the run recorded."""
    from jobs.models import model_shape

    args = dict(create_kwargs)
    if model_shape(name, **args).mlp_hidden != architecture.mlp_hidden:
        args["mlp_ratio"] = _mlp_ratio_for(architecture.mlp_hidden, architecture.embed_dim)
    return args


def timm_problems(name: str, args: dict[str, Any], state: dict[str, torch.Tensor]) -> list[str]:
    """Why plain `timm.create_model(name, **args)` cannot hold `state` (no missing, extra or reshaped keys)."""
    try:
        plain = {k: tuple(v.shape) for k, v in _plain_timm(name, args).state_dict().items()}
    except Exception as exc:  # timm rejects the arguments
        return [f"timm.create_model({name!r}, ...) fails: {str(exc).splitlines()[0]}"]
    ours = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"{len(set(ours) - set(plain))} tensors timm's model does not have, e.g. {k}"
                for k in sorted(set(ours) - set(plain))[:1]]
    problems += [f"{len(set(plain) - set(ours))} tensors missing, e.g. {k}" for k in sorted(set(plain) - set(ours))[:1]]
    problems += [f"{k} is {ours[k]} here, {plain[k]} in timm's model" for k in sorted(set(ours) & set(plain))
                 if ours[k] != plain[k]][:1]
    return problems


def _max_logit_diff(model: nn.Module, name: str, args: dict[str, Any], state: dict[str, torch.Tensor],
                    img_size: int) -> float:
    """Largest |logit| difference of plain timm (with `state`) vs the reduced model on a fixed input."""
    plain = _plain_timm(name, args, "cpu")
    plain.load_state_dict(state)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, img_size, img_size, generator=gen)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ours = model(x.to(next(model.parameters()).device)).float().cpu()
            return float((plain.eval()(x) - ours).abs().max())
    finally:
        model.train(was)


def pretrained_cfg(spec: RunSpec) -> dict[str, Any]:
    """The run's eval preprocessing in timm's PretrainedCfg fields (timm rejects unknown ones)."""
    plain = _plain_timm(spec.model.name, spec.create_kwargs()).pretrained_cfg
    data = spec.data
    return {
        "custom_load": False,
        "input_size": [3, spec.img_size, spec.img_size],
        "fixed_input_size": bool(plain.get("fixed_input_size", True)),
        "interpolation": VAL_INTERPOLATION[data.val_interpolation],
        "crop_pct": data.crop_pct,
        "crop_mode": "center",
        "mean": list(data.mean),
        "std": list(data.std),
        "num_classes": spec.model.num_classes,
        "pool_size": None,
        "first_conv": plain.get("first_conv"),
        "classifier": plain.get("classifier"),
    }


def _label_names(spec: RunSpec, num_classes: int) -> list[str] | None:
    from data.labels import read_label_map

    for path in (spec.data.val_path, spec.data.train_path):
        try:
            mapping = read_label_map(path)
        except (OSError, ValueError):
            continue
        if len(mapping) == num_classes:
            return [name for name, _ in sorted(mapping.items(), key=lambda kv: kv[1])]
    return None


# ---- export -----------------------------------------------------------------------------------


@dataclass
class ExportResult:
    out_dir: Path
    file_bytes: int                  # model.safetensors on disk
    unique_bytes: int                # the weights with every shared tensor counted once
    shared: dict[str, str]           # alias key -> canonical key, stored twice in the file
    timm_problems: list[str] = field(default_factory=list)  # why plain timm cannot rebuild it ([] = it can)
    max_logit_diff: float | None = None
    weights: Weights | None = None

    def summary(self) -> list[str]:
        mb = 1 / 2**20
        lines = [f"exported {self.out_dir}: {CONFIG_FILE}, {WEIGHTS_FILE} {self.file_bytes * mb:.2f} MiB"]
        if self.shared:
            lines.append(f"  shared weights untied: {len(self.shared)} tensors stored once per use, "
                         f"{self.file_bytes * mb:.2f} MiB on disk for {self.unique_bytes * mb:.2f} MiB of unique "
                         f"weights; jobs.load({str(self.out_dir)!r}) ties them again")
        w = self.weights
        if w is not None:
            score = f", run's {w.metric} {w.top1:.2f}" if w.top1 is not None else ""
            lines.append(f"  weights: {w.source}" + (f" (epoch {w.epoch}{score})" if w.epoch else " (mid-epoch)"))
        if self.timm_problems:
            lines.append(f"  not loadable by plain timm ({'; '.join(self.timm_problems)}): use jobs.load")
        else:
            lines.append(f"  timm: timm.create_model('local-dir:{self.out_dir}', pretrained=True) "
                         f"(max |logit diff| {self.max_logit_diff:.1e} on a test input)")
        return lines


def _write_dir(out_dir: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], force: bool) -> None:
    """Both files into a temp folder, then renamed into place: a reader never sees half an export."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"{out_dir} exists and is not empty; choose another OUT_DIR or pass --force")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_model(model: nn.Module, spec: RunSpec, out_dir: Path, *, weights: Weights | None = None,
                 force: bool = False, architecture: Architecture | None = None) -> ExportResult:
    """Write `model` (built from `spec`, strategies applied, weights loaded) in timm's layout; `architecture`:
    what the run recorded (default: what `spec` builds, jobs.models.architecture)."""
    from jobs.models import architecture as built

    tensors, aliases = untied(model.state_dict())
    name = spec.model.name
    architecture = architecture or Architecture(**built(name, spec.strategies, **spec.create_kwargs()))
    args = timm_model_args(name, spec.create_kwargs(), architecture)
    problems = timm_problems(name, args, tensors)
    diff = None
    if not problems:
        diff = _max_logit_diff(model, name, args, tensors, spec.img_size)
        if not diff <= _LOGIT_ATOL:
            problems = [f"timm's model gives other logits (max |diff| {diff:.3g})"]
    architecture = name.split(".")[0]
    config: dict[str, Any] = {
        "architecture": architecture,
        "num_classes": spec.model.num_classes,
        "num_features": getattr(model, "num_features", None),
        "global_pool": getattr(model, "global_pool", None) or None,
        "model_args": args,
        "pretrained_cfg": pretrained_cfg(spec),
    }
    labels = _label_names(spec, spec.model.num_classes)
    if labels:
        config["label_names"] = labels
    config[OURS] = {
        "model": name,
        "create_kwargs": spec.create_kwargs(),
        "strategies": [s.model_dump(mode="json") for s in spec.strategies],
        "tied": aliases,
        "timm_loadable": not problems,
        "run": {"study": spec.study, "run_id": spec.run_id, "condition": spec.condition_label, "seed": spec.seed},
    }
    if weights is not None:
        config[OURS]["weights"] = {"source": str(weights.source), "epoch": weights.epoch, "metric": weights.metric,
                                   "top1": weights.top1}
    _write_dir(out_dir, config, tensors, force)
    file_bytes = (Path(out_dir) / WEIGHTS_FILE).stat().st_size
    alias_bytes = sum(tensors[k].numel() * tensors[k].element_size() for k in aliases)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    return ExportResult(Path(out_dir), file_bytes, total - alias_bytes, aliases, problems, diff, weights)


def export_run(run_dir: Path, out_dir: Path, weights: str = "best", force: bool = False) -> ExportResult:
    """Export a run directory's best, EMA or last weights (see WEIGHT_SOURCES)."""
    from jobs.models import build_model

    if weights not in WEIGHT_SOURCES:
        raise ExportError(f"--weights {weights!r}: valid choices are {', '.join(WEIGHT_SOURCES)}")
    spec, recorded = read_run_spec(run_dir)
    found = WEIGHT_SOURCES[weights](Path(run_dir))
    model = build_model(spec.model.name, spec.strategies, **spec.create_kwargs())
    try:
        ckpt.load_model_state(model, ckpt.pack_state(found.state))
    except RuntimeError as exc:
        raise ExportError(f"{found.source} does not fit the model of {Path(run_dir) / SPEC_JSON}: "
                          f"{str(exc).splitlines()[0]}") from None
    return export_model(model, spec, out_dir, weights=found, force=force, architecture=recorded.architecture)


# ---- load -------------------------------------------------------------------------------------


def read_config(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path} is missing: {out_dir} is not an export (python -m jobs export RUN_DIR OUT_DIR)") \
            from None
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} is not valid JSON ({exc})") from None
    if OURS not in config:
        raise ExportError(f"{path} has no {OURS!r} block: it was not written by python -m jobs export")
    return config


def load(out_dir: str | Path) -> nn.Module:
    """The reduced model of an export, rebuilt with its strategies and its shared modules tied again
    (same Parameter objects), in eval mode on the CPU."""
    from jobs.models import build_model

    ours = read_config(out_dir)[OURS]
    tensors = load_file(str(Path(out_dir) / WEIGHTS_FILE), device="cpu")
    aliases: dict[str, str] = ours["tied"]
    for alias, canonical in aliases.items():
        if not torch.equal(tensors[alias], tensors[canonical]):
            raise ExportError(f"{Path(out_dir) / WEIGHTS_FILE}: {alias} should equal {canonical} (they are one "
                              "shared tensor) but differs; the file was changed after export")
    model = build_model(ours["model"], ours["strategies"], **ours["create_kwargs"])
    unique = {k: v for k, v in tensors.items() if k not in aliases}
    ckpt.load_model_state(model, {"tensors": unique, "aliases": aliases})
    return model.eval()


# ---- `python -m jobs export RUN_DIR OUT_DIR` --------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs export",
        description="Write a run's model as timm's Hugging Face layout (config.json + model.safetensors).",
    )
    parser.add_argument("run_dir", type=Path, help="the run directory, output_root/study/run_id")
    parser.add_argument("out_dir", type=Path, help="folder to write (must not exist or be empty, unless --force)")
    parser.add_argument("--weights", choices=list(WEIGHT_SOURCES), default="best",
                        help="best: checkpoints/best (by checkpoint.best_metric); ema / last: the EMA or the "
                             "model of the latest checkpoint (default: best)")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")
    args = parser.parse_args(argv)
    try:
        result = export_run(args.run_dir, args.out_dir, args.weights, force=args.force)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(result.summary()))
    return 0
