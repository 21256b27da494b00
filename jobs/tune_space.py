"""The `tune:` block of a study: a search space over run-spec keys, the budget per condition, the searcher, the
scheduler, the metric, the held-out slice and the confirm stage (run on Ray Tune by orchestrator.tune_study, on Slurm by orchestrator.slurm_tune).

Distributions are written as one-key mappings, so a study stays plain YAML:

    tune:
      space:
        train.lr: {loguniform: [1.0e-4, 3.0e-3]}
        train.weight_decay: {uniform: [0.0, 0.1]}
        model.drop_path_rate: {choice: [0.0, 0.1]}
        train.warmup_epochs: {grid: [0, 1]}
      trials: 8
      scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
      confirm: {seeds: [0, 1], epochs: 12}

Each distribution is a registry entry (its check and the values that cover it), validated before anything
starts; its Ray Tune domain is the engine's (orchestrator.tune_domains), so this layer needs no Ray.
"""
from __future__ import annotations

import copy
import difflib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data.holdout import HoldoutConfig

from .spec import SpecError


@dataclass(frozen=True)
class Distribution:
    check: Callable[[Any], str | None]      # why the arguments are wrong, or None
    extremes: Callable[[Any], list[Any]]    # values that validate every run the distribution can produce


def _range(args: Any, *, positive: bool) -> str | None:
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                                              for a in args)):
        return "expects [low, high] (two numbers)"
    low, high = args
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        return f"needs low < high, got [{low}, {high}]"
    if positive and low <= 0:
        return f"needs low > 0 (a log scale), got {low}; use uniform for ranges that include 0"
    return None


def _values(args: Any) -> str | None:
    return None if isinstance(args, list) and args else "expects a non-empty list of values"


def _range_points(args: list) -> list:
    """Both ends and a fractional value inside: an integer field (epochs) must be tuned with choice or grid."""
    low, high = args
    return [low, high, float(low + 0.37 * (high - low))]


DISTRIBUTIONS: dict[str, Distribution] = {
    "loguniform": Distribution(lambda a: _range(a, positive=True), _range_points),
    "uniform": Distribution(lambda a: _range(a, positive=False), _range_points),
    "choice": Distribution(_values, list),
    "grid": Distribution(_values, list),
}


class Scheduler(BaseModel):
    """Early stopping within one condition's trials; epochs are Tune's time unit (training_iteration)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["asha", "none"] = Field("asha", description="asha: Tune's ASHAScheduler; none: every trial runs all epochs.")
    grace_period: int = Field(1, ge=1, description="Epochs every trial trains before it can be stopped.")
    reduction_factor: float = Field(2, gt=1, description="ASHA keeps 1/reduction_factor of the trials at each rung.")


class Confirm(BaseModel):
    """The winners, trained at full length on the real train set and scored on val, once per seed."""

    model_config = ConfigDict(extra="forbid")
    seeds: list[int] | None = Field(None, min_length=1, description="Seeds of the confirm runs; default: the study's `seeds`.")
    epochs: int | None = Field(None, ge=1, description="Epochs of a confirm run; default: train.epochs.")
    untuned: bool = Field(False, description="Also run each condition's base recipe (no tuned values) on the same seeds.")


class TuneBlock(BaseModel):
    """The `tune:` key of a study."""

    model_config = ConfigDict(extra="forbid")
    space: dict[str, dict[str, Any]] = Field(min_length=1, description="Dotted run-spec key -> {distribution: args}.")
    trials: int = Field(ge=1, description="Samples per condition (Tune num_samples; grid values multiply it), the same for all.")
    search: Literal["random", "optuna"] = Field("random", description="random: Tune's BasicVariantGenerator; optuna: OptunaSearch (pip install optuna).")
    seed: int = Field(0, description="Searcher seed: the same seed samples the same configs.")
    max_concurrent: int | None = Field(None, ge=1, description="Trials at once; default: as many as the cluster fits.")
    epochs: int | None = Field(None, ge=1, description="Epochs of a tuning trial (ASHA's max_t); default: train.epochs.")
    scheduler: Scheduler = Field(default_factory=Scheduler, description="Early stopping of the trials.")
    metric: str = Field("top1", description="metrics.parquet column the trials are ranked by (top1, ema_top1, train_loss, ...).")
    mode: Literal["max", "min"] = Field("max", description="Whether a higher or lower metric is better.")
    holdout: HoldoutConfig = Field(default_factory=lambda: HoldoutConfig(fraction=0.1),
                                   description="Slice of the train set the trials are scored on.")
    tune_on_val: bool = Field(False, description="Score trials on the val set instead (biased; the report warns).")
    confirm: Confirm = Field(default_factory=Confirm, description="The winners' runs, scored on val.")

    def distribution(self, key: str) -> tuple[str, Any]:
        (name, args), = self.space[key].items()
        return name, args

    def extremes(self) -> list[dict[str, Any]]:
        """A few points covering every value range (each low end, each high end), to validate trial specs."""
        values = {k: DISTRIBUTIONS[n].extremes(a) for k, (n, a) in ((k, self.distribution(k)) for k in self.space)}
        width = max(len(v) for v in values.values())
        return [{k: v[min(i, len(v) - 1)] for k, v in values.items()} for i in range(width)]


METRIC_COLUMNS = ("top1", "top5", "ema_top1", "ema_top5", "train_loss")
TRIALS_FOLDER = "tuning"  # <study dir>/tuning/<condition>-tNNN: one run folder per trial


def validate_block(raw: Any) -> tuple[TuneBlock | None, list[str]]:
    """The tune block and its schema errors (one line each, unknown keys with the closest valid name). With unknown
    keys only, the block without them is still returned, so its other checks are reported too."""
    try:
        return TuneBlock.model_validate(raw), []
    except ValidationError as exc:
        errors, unknown = [], []
        for err in exc.errors():
            loc = tuple(err["loc"])
            where = ".".join(map(str, ("tune", *loc)))
            if err["type"] == "extra_forbidden":
                unknown.append(loc)
                names = list(_model_at(loc[:-1]).model_fields)
                close = difflib.get_close_matches(str(loc[-1]), names, n=1)
                errors.append(f"{where}: unknown key; " + (f"did you mean {close[0]!r}?" if close else
                                                             f"valid keys: {', '.join(names)}"))
            else:
                errors.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    if len(unknown) == len(errors) and isinstance(raw, dict):
        cleaned = copy.deepcopy(raw)
        for loc in unknown:
            parent = cleaned
            for part in loc[:-1]:
                parent = parent[part]
            parent.pop(loc[-1], None)
        try:
            return TuneBlock.model_validate(cleaned), errors
        except ValidationError:
            pass
    return None, errors


def _model_at(loc: tuple) -> type[BaseModel]:
    model: type[BaseModel] = TuneBlock
    for part in loc:
        sub = model.model_fields[str(part)].annotation
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            break
        model = sub
    return model


def check_block(block: TuneBlock, grids: bool = False, stages: bool = False) -> list[str]:
    """Everything wrong with a tune block that its schema cannot see, one line each with the fix. `grids`: the
    study also has grid axes; `stages`: a condition starts from run:<condition>."""
    errors: list[str] = []
    for key, dist in block.space.items():
        where = f"tune.space.{key}"
        if len(dist) != 1:
            errors.append(f"{where}: expected one distribution as {{name: args}} (e.g. {{loguniform: [1e-4, 1e-2]}}), "
                          f"got {dist!r}")
            continue
        (name, args), = dist.items()
        if name not in DISTRIBUTIONS:
            errors.append(f"{where}: unknown distribution {name!r}; use one of {', '.join(DISTRIBUTIONS)}")
            continue
        problem = DISTRIBUTIONS[name].check(args)
        if problem:
            errors.append(f"{where}: {name} {problem}")
        elif name == "grid" and block.search == "optuna":
            errors.append(f"{where}: grid needs search: random (Optuna samples; use choice instead)")
    if block.metric not in METRIC_COLUMNS:
        errors.append(f"tune.metric: {block.metric!r} is not a metrics column; use one of {', '.join(METRIC_COLUMNS)}")
    if block.search == "optuna" and importlib.util.find_spec("optuna") is None:
        errors.append("tune.search: optuna is not installed (pip install optuna, or pip install -e '.[tune]'); "
                      "or use search: random")
    if block.scheduler.name == "asha" and block.epochs is not None and block.scheduler.grace_period > block.epochs:
        errors.append(f"tune.scheduler.grace_period: {block.scheduler.grace_period} is longer than a trial "
                      f"(tune.epochs={block.epochs}); lower it")
    if grids:
        errors.append("grid: a tuned study has no grid; put the values in tune.space as {grid: [...]}")
    if stages:
        errors.append("conditions: a tuned study cannot start from run:<condition> (stages); tune those in a study "
                      "of their own")
    return errors


def trial_spec(confirm: Any, block: TuneBlock, sampled: dict[str, Any], index: int, with_values: Callable) -> Any:
    """The run spec of trial `index` of a condition, from the condition's first confirm run: the sampled values,
    the trial length, scored on the held-out slice of train, in <study dir>/tuning/<condition>-tNNN."""
    fixed: dict[str, Any] = {"data.holdout": None if block.tune_on_val else block.holdout.model_dump()}
    if block.epochs is not None:
        fixed["train.epochs"] = block.epochs
    return with_values(confirm, {**sampled, **fixed}, study=TRIALS_FOLDER, run_id=f"{confirm.condition}-t{index:03d}",
                       output_root=str(confirm.run_dir.parent), ablation=dict(sampled))


def check_trials(block: TuneBlock, runs: list[Any], with_values: Callable) -> list[str]:
    """Each condition's trial spec at the ends of every range: a value that can never train is an error now."""
    errors: list[str] = []
    firsts: dict[str, Any] = {}
    for r in runs:
        firsts.setdefault(r.condition, r)
    for run in firsts.values():
        for point in block.extremes():
            try:
                trial_spec(run, block, point, 0, with_values)
            except SpecError as exc:
                values = ", ".join(f"{k}={v}" for k, v in point.items())
                errors.extend(f"tune.space ({values}), condition {run.condition}: {e}" for e in exc.errors)
    return list(dict.fromkeys(errors))
