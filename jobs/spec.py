"""The run spec: one typed, validated description of a training run (model, strategies, data, recipe,
resources, checkpointing, where it writes).

Defaults are the seed's command lines (ViT-B/16, AdamW 1e-3 at global batch 1024, wd 0.05, cosine with
5 warmup epochs, mixup 0.8 / cutmix 1.0 / smoothing 0.1, EMA 0.9998, AMP, channels-last, seed 42).

Loaded from YAML plus `key=value` overrides (`train.epochs=3 strategies.0.params.group_size=3`); each
value is parsed as a YAML scalar and then typed by the schema. `load_spec` reports every problem at once,
one line each, as `SpecError.errors`: schema errors (unknown keys with a "did you mean"), the model /
strategy combination (`jobs.models.check`) and the data (`DataConfig.check`: missing files, label map vs
`num_classes`). With `files=False` (`--print-config`, `jobs inspect`) the files on disk (dataset, starting
weights, teacher) are not required: `file_problems` lists what is missing, for a warning.

Learning-rate scaling rule: `train.lr` is the learning rate at a global batch of `train.lr_base_batch`
(1024 = 256 per GPU x 2 accumulation steps x 2 GPUs in the seed). The optimizer gets
`lr * (global_batch / lr_base_batch)` with `lr_scale: linear` (default; Goyal et al.), the square root of
that ratio with `sqrt`, or `lr` unchanged with `none`; `global_batch = batch_size x grad_accum x workers`.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from data.config import DataConfig
from jobs.checkpoint_policy import CheckpointConfig
from jobs.distill.config import DistillConfig
from jobs.overrides import apply_overrides, submodel
from jobs.run_logger import LoggingConfig
from jobs.sources import WeightsError, absolute, parse_source
from jobs.strategies import StrategySpec
from rundir import SPEC_FILE, atomic_write_text, write_spec_record

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+,\-]*$")


class SpecError(ValueError):
    """Every problem with a run spec; `.errors` holds one line per problem."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("invalid run spec:\n" + "\n".join(f"  {e}" for e in self.errors))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSpec(_Strict):
    name: str = Field("vit_base_patch16_224", description="timm model name given to timm.create_model")
    num_classes: int = Field(1000, ge=1, description="classifier outputs; must match the dataset's label map")
    img_size: int | None = Field(None, ge=8, description="input resolution; None = data.img_size")
    drop_path_rate: float = Field(0.1, ge=0.0, lt=1.0, description="stochastic depth rate (seed: --drop-path 0.1)")
    patch_size: int | None = Field(None, ge=1, description="ViT patch size; None = the timm model's own")
    depth: int | None = Field(None, ge=1, description="number of transformer blocks; None = the timm model's own")
    embed_dim: int | None = Field(None, ge=1, description="token width; None = the timm model's own")
    num_heads: int | None = Field(None, ge=1, description="attention heads; None = the timm model's own")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="further timm.create_model keyword arguments")
    init: str = Field("random", description="starting weights, loaded before strategies: random, pretrained (timm's, "
                                            "from the local Hugging Face cache), a .safetensors/.pth/.pt file, "
                                            "local-dir:<folder>, or run:<condition> (that run's best export)")

    @field_validator("init")
    @classmethod
    def _init_source(cls, value: str) -> str:
        try:
            parse_source(value, "model.init")
        except WeightsError as exc:
            raise ValueError(str(exc).removeprefix("model.init: ")) from None
        return absolute(value)

    def create_kwargs(self, img_size: int) -> dict[str, Any]:
        """Keyword arguments for `jobs.models.build_model` (timm.create_model) at this resolution."""
        kw: dict[str, Any] = {
            "num_classes": self.num_classes,
            "img_size": self.img_size or img_size,
            "drop_path_rate": self.drop_path_rate,
        }
        for key in ("patch_size", "depth", "embed_dim", "num_heads"):
            if getattr(self, key) is not None:
                kw[key] = getattr(self, key)
        return {**kw, **self.kwargs}


class TrainConfig(_Strict):
    epochs: int = Field(300, ge=0, description="epochs of the run (the cosine schedule spans them); 0 = evaluate the "
                                               "model as built (loaded, reduced): one metrics row at epoch 0 and "
                                               "its best export")
    batch_size: int = Field(256, ge=1, description="images per worker per forward pass (micro-batch)")
    grad_accum: int = Field(2, ge=1, description="micro-batches accumulated into one optimizer update")
    opt: str = Field("adamw", description="timm optimizer name (timm.optim.create_optimizer_v2)")
    opt_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra optimizer arguments, e.g. betas, eps")
    lr: float = Field(1e-3, gt=0, description="peak learning rate at a global batch of lr_base_batch")
    lr_base_batch: int = Field(1024, ge=1, description="global batch that `lr` is stated for (seed: 256 x 2 x 2)")
    lr_scale: Literal["linear", "sqrt", "none"] = Field("linear", description="how lr follows the global batch")
    weight_decay: float = Field(0.05, ge=0, description="AdamW decay; norms, biases, pos-embed, cls-token get 0 "
                                                      "unless wd_skip_norm_bias is false")
    wd_skip_norm_bias: bool = Field(
        True, description="timm's param groups: no decay on 1-D params (norms, biases) and model.no_weight_decay() "
                          "(pos_embed, cls_token); false = one group, every parameter decayed (DGMR distill.py)")
    weight_decay_end: float | None = Field(
        None, ge=0, description="weight decay at the end of the run, reached by a cosine from `weight_decay` over "
                                "every optimizer update (DGMR: 0.04 -> 0.2); None = constant")
    sched: str = Field("cosine", description="timm scheduler name (timm.scheduler.create_scheduler_v2)")
    warmup_epochs: int = Field(5, ge=0, description="linear warmup epochs (the cosine includes them, as timm's)")
    sched_on_updates: bool = Field(
        False, description="step the schedule every optimizer update; false = once per epoch, as timm's train.py "
                           "without --sched-on-updates (epoch 0 trains entirely at warmup_lr)")
    warmup_prefix: bool = Field(
        False, description="the cosine starts after warmup and spans the remaining epochs (DINOv2's CosineScheduler, "
                           "DGMR); false = timm's: the cosine spans all epochs and warmup replaces its start")
    warmup_lr: float = Field(1e-5, ge=0, description="learning rate at the start of warmup")
    min_lr: float = Field(0.0, ge=0, description="floor of the cosine schedule")
    lr_scale_bounds: bool = Field(
        False, description="scale warmup_lr and min_lr by the same global-batch factor as lr (Mini-Swin main.py "
                           "linear_scaled_warmup_lr / linear_scaled_min_lr); false = as given (timm, DeiT)")
    clip_grad: float | None = Field(None, gt=0, description="gradient clipping threshold; None = off")
    clip_mode: Literal["norm", "value", "agc"] = Field("norm", description="timm dispatch_clip_grad mode")
    mixup: float = Field(0.8, ge=0, description="mixup alpha; 0 = off")
    cutmix: float = Field(1.0, ge=0, description="cutmix alpha; 0 = off")
    mixup_prob: float = Field(1.0, ge=0, le=1, description="probability of applying mixup or cutmix to a batch")
    mixup_switch_prob: float = Field(0.5, ge=0, le=1, description="probability of cutmix instead of mixup")
    mixup_mode: Literal["batch", "pair", "elem"] = Field("batch", description="timm Mixup mode")
    smoothing: float = Field(0.1, ge=0, lt=1, description="label smoothing")
    ema: bool = Field(True, description="keep and evaluate a timm ModelEmaV3 of the weights")
    ema_decay: float = Field(0.9998, gt=0, lt=1, description="EMA decay per optimizer update")
    ema_warmup: bool = Field(False, description="ModelEmaV3 decay warmup")
    ema_shared: Literal["once", "per_reference"] = Field(
        "once", description="EMA of a weight shared by several blocks: once = one decay per update; per_reference = "
                            "once per block that uses it (decay^2 for a pair), as timm's EMA over state_dict() "
                            "does in the seed's train.py")
    amp: bool = Field(True, description="autocast on CUDA (seed: --amp)")
    amp_dtype: Literal["bfloat16", "float16"] = Field(
        "bfloat16", description="autocast dtype; float16 (timm's --amp) adds a torch.amp.GradScaler, saved in checkpoints")
    amp_cpu: bool = Field(False, description="also autocast (amp_dtype) on CPU; off so CPU runs stay fp32")
    channels_last: bool = Field(True, description="channels-last memory format (GPU only)")
    compile: bool = Field(False, description="torch.compile the model (GPU only)")
    deterministic: bool = Field(False, description="torch deterministic algorithms (bitwise resume on GPU too)")
    skip_nonfinite: bool = Field(False, description="skip an update with a NaN/inf loss instead of stopping")

    @model_validator(mode="after")
    def _mixup_needs_even_batch(self) -> "TrainConfig":
        if (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0 and self.batch_size % 2:
            raise ValueError(
                f"batch_size {self.batch_size} must be even when mixup/cutmix is on (timm Mixup pairs samples)"
            )
        return self

    @model_validator(mode="after")
    def _prefix_leaves_a_cosine(self) -> "TrainConfig":
        if self.warmup_prefix and 0 < self.epochs <= self.warmup_epochs:
            raise ValueError(f"warmup_prefix: epochs {self.epochs} must exceed warmup_epochs {self.warmup_epochs} "
                             "(the cosine runs after warmup); lower warmup_epochs or set warmup_prefix=false")
        return self

    @property
    def mixup_active(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0

    def global_batch(self, world_size: int) -> int:
        return self.batch_size * self.grad_accum * world_size

    def scaled_lr(self, world_size: int) -> float:
        ratio = self.global_batch(world_size) / self.lr_base_batch
        factor = {"linear": ratio, "sqrt": ratio**0.5, "none": 1.0}[self.lr_scale]
        return self.lr * factor

    def scaled_bounds(self, peak_lr: float) -> tuple[float, float]:
        """(warmup_lr, min_lr) for a run whose peak lr is `peak_lr` (scaled_lr): scaled by peak_lr / lr, like lr
        itself, with lr_scale_bounds; as given otherwise."""
        factor = peak_lr / self.lr if self.lr_scale_bounds else 1.0
        return self.warmup_lr * factor, self.min_lr * factor

    def lr_rule(self, world_size: int) -> str:
        """The effective learning rate and how it follows from the spec, on one line."""
        g, base = self.global_batch(world_size), self.lr_base_batch
        how = {"linear": f"train.lr {self.lr:g} x {g} / {base}", "sqrt": f"train.lr {self.lr:g} x sqrt({g} / {base})",
               "none": f"train.lr {self.lr:g} as given"}[self.lr_scale]
        return (f"lr {self.scaled_lr(world_size):.6g} = {how} (lr_scale {self.lr_scale}, lr_base_batch {base}; "
                f"global batch {g} = {self.batch_size} x {self.grad_accum} accum x {world_size} workers); "
                f"schedule {self.sched} stepped per {'update' if self.sched_on_updates else 'epoch'}"
                + (", warmup_lr %.3g and min_lr %.3g scaled alike" % self.scaled_bounds(self.scaled_lr(world_size))
                   if self.lr_scale_bounds else ""))


class ResourcesConfig(_Strict):
    num_workers: int = Field(2, ge=1, description="training processes (one per GPU); the seed uses 2 GPUs")
    use_gpu: bool = Field(True, description="train on GPUs; false = CPU (gloo) for debugging and tests")
    cpus_per_worker: int = Field(8, ge=1, description="CPU cores reserved per training process (loader workers)")
    gpus_per_worker: float = Field(1.0, ge=0, description="GPUs reserved per training process")


class RunSpec(_Strict):
    model: ModelSpec = Field(default_factory=ModelSpec, description="timm model and its creation arguments")
    strategies: list[StrategySpec] = Field(default_factory=list, description="parameter-reduction strategies, in order")
    data: DataConfig = Field(description="datasets, loader backend and augmentation (data.config.DataConfig)")
    data_root: Path | None = Field(None, description="folder relative data.train_path/val_path are resolved against")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the optimisation recipe")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="processes and devices")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="checkpointing policy")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="live metrics: TensorBoard, W&B, MLflow, "
                                   "console step lines, per-block stability statistics")
    distill: DistillConfig | None = Field(None, description="a frozen teacher and its loss; None = no distillation")
    seed: int = Field(42, ge=0, description="seeds python/numpy/torch and the loader order")
    output_root: Path = Field(Path("runs"), description="runs are written to output_root/study/run_id")
    study: str = Field("default", description="study name (folder under output_root)")
    run_id: str = Field("run", description="run folder name, unique inside the study")
    condition: str = Field("", description="condition label for tables; empty = the strategy names")
    ablation: dict[str, Any] = Field(default_factory=dict, description="grid values this run was expanded from")

    @field_validator("study", "run_id")
    @classmethod
    def _path_component(cls, value: str) -> str:
        if not _SAFE_NAME.match(value):
            raise ValueError(f"{value!r} must be one folder name (letters, digits, . _ - + = ,)")
        return value

    @model_validator(mode="after")
    def _resolve_data_paths(self) -> "RunSpec":
        if self.data_root is not None:
            self.data = resolve_data_paths(self.data, self.data_root)
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_root) / self.study / self.run_id

    @property
    def img_size(self) -> int:
        return self.model.img_size or self.data.img_size

    @property
    def strategy_label(self) -> str:
        return "+".join(s.name for s in self.strategies) or "baseline"

    @property
    def condition_label(self) -> str:
        return self.condition or self.strategy_label

    def create_kwargs(self) -> dict[str, Any]:
        return self.model.create_kwargs(self.data.img_size)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def record(self, run_dir: Path) -> None:
        """Record the spec a run starts with: spec.yaml for people, spec.json (with the architecture it builds)
        for the code (rundir.record reads it)."""
        from jobs.models import architecture  # imports timm, like semantic_errors below

        atomic_write_text(Path(run_dir) / SPEC_FILE, self.to_yaml())
        write_spec_record(run_dir, self.model_dump(mode="json"),
                          architecture(self.model.name, self.strategies, **self.create_kwargs()))


def resolve_data_paths(data: DataConfig, root: Path) -> DataConfig:
    updates = {}
    for key in ("train_path", "val_path"):
        value = getattr(data, key, None)
        if value is not None and not Path(value).is_absolute():
            updates[key] = type(value)(Path(root) / value) if isinstance(value, (str, Path)) else value
    return data.model_copy(update=updates) if updates else data


def _field_names(loc: tuple) -> list[str] | None:
    cls: type[BaseModel] | None = RunSpec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part) if cls else None
        cls = submodel(field.annotation) if field else None
        if cls is None:
            return None
    return list(cls.model_fields) if cls else None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_error(exc: ValidationError, prefix: tuple = ()) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        where = ".".join(str(p) for p in loc) or "spec"
        if err["type"] == "extra_forbidden":
            names = _field_names(loc) or []
            close = difflib.get_close_matches(str(loc[-1]), names, n=1)
            hint = f"; did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))!r}?" if close else ""
            valid = f" (valid: {', '.join(names)})" if names and not close else ""
            lines.append(f"{where}: unknown key{hint}{valid}")
        elif err["type"] == "missing":
            lines.append(f"{where}: required, but not given")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = f" (got {_short(err['input'])})" if "input" in err and err["type"] != "value_error" else ""
            lines.append(f"{where}: {msg}{got}")
    return lines


def semantic_errors(
    model: ModelSpec | None, strategies: list[StrategySpec] | None, data: DataConfig | None, num_classes: int | None = None,
    files: bool = True,
) -> list[str]:
    """Checks that need more than one field: the model + strategies combination and (with `files`) the data files."""
    from jobs import models  # imports timm; kept out of module import so the schema stays cheap

    errors: list[str] = []
    if model is not None and strategies is not None:
        img = model.img_size or (data.img_size if data is not None else None)
        if img is not None:
            errors += [f"model/strategies: {e}" for e in models.check(model.name, strategies, **model.create_kwargs(img))]
        if data is not None and model.img_size is not None and model.img_size != data.img_size:
            errors.append(
                f"model.img_size: {model.img_size} differs from data.img_size {data.img_size}; "
                "set one of them (model.img_size defaults to data.img_size)"
            )
    num_classes = model.num_classes if model is not None else num_classes
    if files and data is not None and num_classes is not None:
        errors += data.check(num_classes)
    return errors


def start_errors(spec: RunSpec) -> list[str]:
    """Starting weights and teacher: files exist, are readable and fit, checked without loading them."""
    from jobs import weights  # imports timm, like jobs.models above
    from jobs.distill.teacher import check_teacher

    place = weights.Place.of(spec)
    errors = []
    try:
        weights.check_init(spec.model.init, spec.model.name, spec.create_kwargs(), place)
    except weights.WeightsError as exc:
        errors.append(str(exc))
    if spec.distill is not None:
        errors += check_teacher(spec.distill, spec.model.name, spec.create_kwargs(), place)
    return errors


def _section(cls: type[BaseModel], raw: Any) -> Any:
    """The section validated without its bad keys (their errors are already reported), or None."""
    if not isinstance(raw, dict):
        return None
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        bad = {err["loc"][0] for err in exc.errors() if err["loc"]}
        if not bad:
            return None
    try:
        return cls.model_validate({k: v for k, v in raw.items() if k not in bad})
    except (ValidationError, TypeError, ValueError):
        return None


def _strategies(raw: Any) -> list[StrategySpec]:
    """The strategies when all are valid (their errors are already reported), else none: the model
    alone is still checked, and no strategy is checked against a list it was not written for."""
    try:
        return [StrategySpec.model_validate(s) for s in raw or []]
    except (ValidationError, TypeError):
        return []


def file_problems(spec: RunSpec) -> list[str]:
    """What a valid spec still needs on disk before it can run: the dataset, starting weights, teacher."""
    return spec.data.check(spec.model.num_classes) + start_errors(spec)


def validate_spec(raw: dict[str, Any], files: bool = True) -> RunSpec:
    """Validate a raw dict (YAML + overrides applied); raises SpecError with every problem. `files=False`: the
    config alone, without the files it names (see `file_problems`)."""
    errors: list[str] = []
    spec = None
    try:
        spec = RunSpec.model_validate(raw)
    except ValidationError as exc:
        errors += format_validation_error(exc)
    if spec is not None:
        errors += semantic_errors(spec.model, spec.strategies, spec.data, files=files)
        if not errors and files:
            errors += start_errors(spec)
    else:
        # Run the cross-field checks on every section that is valid by itself, so one bad key
        # does not hide a missing dataset.
        model = _section(ModelSpec, raw.get("model") or {})
        strategies = _strategies(raw.get("strategies"))
        data = _section(DataConfig, raw.get("data"))
        if data is not None and isinstance(raw.get("data_root"), (str, Path)):
            data = resolve_data_paths(data, Path(raw["data_root"]))
        raw_classes = (raw.get("model") or {}).get("num_classes", ModelSpec.model_fields["num_classes"].default) \
            if isinstance(raw.get("model") or {}, dict) else None
        errors += semantic_errors(model, strategies, data, raw_classes if isinstance(raw_classes, int) else None,
                                  files=files)
    if errors:
        raise SpecError(errors)
    return spec


def read_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError([f"{path}: no such config file"]) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"{path}: invalid YAML: {' '.join(str(exc).split())}"]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError([f"{path}: top level must be a mapping of sections, got {type(raw).__name__}"])
    return raw


def load_spec(path: Path | str, overrides: list[str] = (), files: bool = True) -> RunSpec:
    """YAML file + `key=value` overrides -> validated RunSpec, or SpecError listing every problem."""
    raw = read_yaml(Path(path))
    errors = apply_overrides(raw, list(overrides))
    try:
        spec = validate_spec(raw, files=files)
    except SpecError as exc:
        raise SpecError(errors + exc.errors) from None
    if errors:
        raise SpecError(errors)
    return spec
