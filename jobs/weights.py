"""Starting weights of a model (`model.init`) and of a teacher: where they come from, whether they fit,
and loading them with timm's own machinery.

Sources (one string each):
    random                      timm's random initialisation (the default)
    pretrained                  timm's weights for the model name, read from the local Hugging Face cache
                                only (never the network: works with HF_HUB_OFFLINE=1)
    <path>.safetensors|.pth|.pt a local file; a torch file may hold the state dict under `state_dict` or `model`
    local-dir:<folder>          a folder with model.safetensors / pytorch_model.bin (timm's `local-dir` source)
    run:<condition>             the best export of that condition's run with the same seed and grid point
                                of this study (jobs.dependencies.resolve_run_export)

Checking never reads weight values: shapes come from the safetensors header or a memory-mapped torch
file, and timm's loading path (checkpoint filter, position-embedding resampling, strict key match) is
run on the meta device. Loading then calls `timm.create_model(pretrained=True,
pretrained_cfg_overlay=dict(file=...))`, so timm adapts the position embedding and the classifier
exactly as it does for its own weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import get_pretrained_cfg
from torch import nn

from jobs.sources import Source, WeightsError, parse_source

# timm's order of preference for a weights folder and for a Hugging Face repo
DIR_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
HF_FILES = ("model.safetensors", "pytorch_model.bin")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


# ---- locating files ---------------------------------------------------------------------------


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment names it now (HF_HUB_CACHE, HF_HOME, default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def pretrained_file(model_name: str, field: str = "model.init") -> Path:
    """timm's weights file for `model_name` in the local Hugging Face cache; never downloads."""
    from huggingface_hub import try_to_load_from_cache

    cfg = get_pretrained_cfg(model_name)
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsError(f"{field}: timm has no Hugging Face weights for {model_name!r}; give a file instead")
    repo, _, revision = cfg.hf_hub_id.partition("@")
    cache = hf_cache_dir()
    names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILES
    for name in names:
        found = try_to_load_from_cache(repo, name, cache_dir=cache, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    folder = cache / f"models--{repo.replace('/', '--')}"
    raise WeightsError(
        f"{field}: pretrained weights of {model_name} are not in the Hugging Face cache {cache}: place "
        f"{names[0]} of hf repo {repo} there (`huggingface-cli download {repo} {names[0]}` on a machine with "
        f"network, then copy {folder}), set HF_HUB_CACHE to a cache holding it, or give a file path"
    )


def dir_weights_file(folder: Path, field: str) -> Path:
    if not folder.is_dir():
        raise WeightsError(f"{field}: local-dir {folder} is not a folder; give a folder holding model.safetensors")
    for name in DIR_FILES:
        if (folder / name).is_file():
            return folder / name
    raise WeightsError(f"{field}: local-dir {folder} holds none of {', '.join(DIR_FILES)}; put the weights there")


def existing_file(path: Path, field: str) -> Path:
    if not path.is_file():
        raise WeightsError(f"{field}: weights file {path} does not exist; fix the path or create the file")
    return path


# ---- shapes without values ----------------------------------------------------------------------


def _safetensors_shapes(path: Path, field: str) -> dict[str, torch.Tensor]:
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
        end = 0
        shapes = {}
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            end = max(end, entry["data_offsets"][1])
            dtype = _SAFETENSORS_DTYPES.get(entry["dtype"], torch.float32)
            shapes[key] = torch.empty(entry["shape"], dtype=dtype, device="meta")
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise WeightsError(f"{field}: {path} is not a readable safetensors file ({exc}); replace it") from None
    if 8 + n + end > size:
        raise WeightsError(f"{field}: {path} is truncated ({size} bytes, its header needs {8 + n + end}); replace it")
    return shapes


def _torch_shapes(path: Path, field: str) -> dict[str, torch.Tensor]:
    try:
        # mmap: tensors stay on disk; only their shapes are read below
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch reports corrupt zips, pickles and legacy files with many types
        reason = " ".join(str(exc).split())[:200]
        raise WeightsError(f"{field}: {path} is not a readable PyTorch weights file ({reason}); replace it") from None
    if isinstance(obj, dict):
        # timm's load_state_dict order: EMA weights first, then the usual wrapper keys
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise WeightsError(f"{field}: {path} holds no state dict (a dict of tensors, or one under 'state_dict' or "
                           "'model'); save model.state_dict()")
    from timm.models import clean_state_dict

    return {k: torch.empty_like(v, device="meta") for k, v in clean_state_dict(tensors).items()}


def read_shapes(path: Path, field: str = "model.init") -> dict[str, torch.Tensor]:
    """Key -> meta tensor of the file's state dict (its shapes and dtypes, no values)."""
    path = Path(path)
    return _safetensors_shapes(path, field) if path.suffix == ".safetensors" else _torch_shapes(path, field)


def classifier_outputs(model_name: str, shapes: dict[str, torch.Tensor]) -> int:
    """Outputs of the file's classifier (timm's `classifier` of the model's pretrained config); 0 = none."""
    cfg = get_pretrained_cfg(model_name)
    names = (cfg.classifier if cfg is not None and cfg.classifier else "head")
    head = names if isinstance(names, str) else names[0]
    weight = shapes.get(f"{head}.weight")
    return int(weight.shape[0]) if weight is not None else 0


_SIZE = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from checkpoint, "
                   r"the shape in current model is torch\.Size\((\[.*?\])\)")
_KEYS = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: (.*)")


def _names(items: list[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _one_line_load_error(exc: Exception) -> str:
    """torch's multi-line load_state_dict error as one line: missing, unexpected, size mismatches."""
    text = str(exc)
    parts = []
    for kind, keys in _KEYS.findall(text):
        names = re.findall(r'"([^"]+)"', keys)
        parts.append(f"{kind.lower()} {len(names)} keys: {_names(names)}")
    sizes = [f"{k} file {a} vs model {b}" for k, a, b in _SIZE.findall(text)]
    if sizes:
        parts.append(f"{len(sizes)} shapes differ: {_names(sizes, 3)}")
    return "; ".join(parts) or " ".join(text.split())[:300]


def check_fits(path: Path, model_name: str, create_kwargs: dict[str, Any], field: str = "model.init",
               shapes: dict[str, torch.Tensor] | None = None) -> int:
    """Raise WeightsError unless the file loads strictly into `model_name` built with `create_kwargs` (its
    classifier aside); returns the file's classifier outputs. Runs timm's load path on the meta device."""
    shapes = read_shapes(path, field) if shapes is None else shapes
    outputs = classifier_outputs(model_name, shapes)
    kwargs = {**create_kwargs, "num_classes": outputs}
    try:
        with torch.device("meta"):
            timm.create_model(model_name, pretrained=True, pretrained_strict=True,
                              pretrained_cfg_overlay=dict(state_dict=shapes, num_classes=outputs), **kwargs)
    except RuntimeError as exc:
        raise WeightsError(
            f"{field}: {path} does not fit {model_name} with {_kwargs_text(create_kwargs)} "
            f"({_one_line_load_error(exc)}); give weights of this architecture or change model.*"
        ) from None
    return outputs


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items() if k != "num_classes")


# ---- loading --------------------------------------------------------------------------------------


def _overlay(source: Source, path: Path, outputs: int) -> dict[str, Any]:
    if source.kind == "local-dir":
        return dict(source="local-dir", file=str(path.parent), num_classes=outputs)
    return dict(file=str(path), num_classes=outputs)


def create_with_weights(model_name: str, create_kwargs: dict[str, Any], source: Source, path: Path,
                        field: str = "model.init") -> nn.Module:
    """`timm.create_model` with the file's weights loaded by timm (classifier re-initialised when the
    class count differs, position embedding resampled when the grid differs)."""
    outputs = check_fits(path, model_name, create_kwargs, field)
    return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=_overlay(source, path, outputs),
                             **create_kwargs)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


# ---- a run's starting point -------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Where a run sits in its study: what `run:<condition>` is resolved against."""

    study_dir: Path
    seed: int
    ablation: dict[str, Any]

    @classmethod
    def of(cls, spec: Any) -> "Place":
        return cls(Path(spec.output_root) / spec.study, spec.seed, dict(spec.ablation))


def weights_path(source: Source, model_name: str, place: Place | None, field: str) -> Path | None:
    """The file a source names (None for random); WeightsError when it is not there (yet)."""
    if source.kind == "random":
        return None
    if source.kind == "pretrained":
        return pretrained_file(model_name, field)
    if source.kind == "local-dir":
        return dir_weights_file(Path(source.value), field)
    if source.kind == "file":
        return existing_file(Path(source.value), field)
    from jobs.dependencies import resolve_run_export

    if place is None:
        raise WeightsError(f"{field}: run:{source.value} is only resolvable inside a study")
    found = resolve_run_export(place.study_dir, source.value, place.seed, place.ablation)
    if isinstance(found, str):
        raise WeightsError(f"{field}: {found}")
    return found


def check_init(init: str, model_name: str, create_kwargs: dict[str, Any], place: Place | None,
               field: str = "model.init") -> None:
    """Validation of `model.init` without loading weights. `run:` sources are checked when the run
    starts (their file is written by an earlier stage)."""
    source = parse_source(init, field)
    if source.kind in ("random", "run"):
        return
    check_fits(weights_path(source, model_name, place, field), model_name, create_kwargs, field)


def create_initial(model_name: str, create_kwargs: dict[str, Any], init: str, place: Place | None,
                   field: str = "model.init") -> nn.Module:
    """The model before strategies, with its starting weights."""
    source = parse_source(init, field)
    path = weights_path(source, model_name, place, field)
    if path is None:
        return timm.create_model(model_name, **create_kwargs)
    return create_with_weights(model_name, create_kwargs, source, path, field)


@dataclass
class Start:
    """A run's model as built: strategies applied to the starting weights."""

    model: nn.Module
    unreduced: nn.Module | None   # a copy taken after loading, before strategies (kept on request)


def build_start(model_name: str, strategies: list, create_kwargs: dict[str, Any], init: str = "random",
                place: Place | None = None, keep_unreduced: bool = False) -> Start:
    """Create the model, load `init` into it with timm, keep an unreduced copy if asked, apply strategies."""
    import copy

    from jobs.models import build_model

    kept: dict[str, Any] = {"unreduced": None}

    def create(name: str, **kwargs: Any) -> nn.Module:
        net = create_initial(name, kwargs, init, place)
        if keep_unreduced:
            kept["unreduced"] = copy.deepcopy(net)
        return net

    model = build_model(model_name, strategies, create_fn=create, **create_kwargs)
    return Start(model, kept["unreduced"])
