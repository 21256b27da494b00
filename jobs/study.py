"""Studies: a run spec (jobs.spec) plus sweep axes, expanded to one RunSpec per run.

A study YAML is a run spec with four extra top-level keys:

    base: demo.yaml              # optional: a run-spec YAML (relative to this file) the rest is merged onto
    seeds: [0, 1]                # one run per seed for every condition x grid point
    conditions:                  # named model variants: strategies and any run-spec overrides
      baseline: {}
      grouped: {strategies: [{name: grouped, params: {group_size: 2, scale: 0.7071}}]}
      shallow: {strategies: [{name: shallow, params: {keep_ratio: 0.5}}], overrides: {train.lr: 0.001}}
    grid:                        # dotted run-spec field -> values (cartesian product)
      train.epochs: [2, 4]
      strategy.shallow.keep_ratio: [0.25, 0.5]   # only multiplies conditions that use `shallow`
    sweep: {max_failures: 2}     # Ray options, see SweepOptions
    tune: {...}                  # optional: tune every condition, then confirm the winners (jobs.tune_space)

Everything else (model, data, train, resources, checkpoint, output_root, study, ...) is the run
spec that every run starts from. `load_study` reports every error of the study and of every
expanded run at once (SpecError, one line each) before anything expensive starts. The expansion itself
(axes, run ids) is jobs.study_expand; the engines add their own checks (orchestrator.plan.load_config).
"""
from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rundir import write_index
from rundir.stages import check_dependencies, needed_conditions

from .dependencies import run_sources
from .overrides import apply_overrides, parse_value, set_dotted
from .spec import RunSpec, SpecError, format_validation_error, read_yaml
from .study_expand import check_axes, check_axis, expand, with_values, without_bad_axes
from .tune_space import TuneBlock, check_block, check_trials, validate_block

STUDY_KEYS = ("base", "seeds", "conditions", "grid", "sweep", "tune")


class Condition(BaseModel):
    """One named variant of the model: its strategies and any run-spec overrides."""

    model_config = ConfigDict(extra="forbid")
    strategies: list[dict[str, Any]] = Field(default_factory=list, description="Strategies ({name, params}) of this condition; [] is the baseline.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted run-spec field -> value applied to this condition's runs only.")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Extra grid axes swept for this condition only.")


class SweepOptions(BaseModel):
    """How Ray Tune schedules the study's runs."""

    model_config = ConfigDict(extra="forbid")
    max_concurrent_trials: int | None = Field(None, ge=1, description="Upper bound on runs at once; default: as many as the cluster fits.")
    max_failures: int = Field(2, ge=-1, description="Worker-group restarts per run (ray.train.FailureConfig); -1 = unlimited.")
    trial_max_failures: int = Field(1, ge=0, description="Tune-level retries of a whole trial after its TorchTrainer failed.")
    storage_path: str | None = Field(None, description="Where Ray keeps its state (local/shared path or cloud URI); default: the study dir.")
    progress_every_s: float = Field(30.0, gt=0, description="Seconds between rows of Tune's live trial table.")
    one_worker_in_trial: bool = Field(True, description=(
        "A one-worker run trains inside its Tune trial, without a TorchTrainer (4 fewer processes, ~0.4 GB less "
        "per concurrent run; restarts: max_failures + trial_max_failures); false: a TorchTrainer as for "
        "multi-worker runs."))


class StudyAxes(BaseModel):
    """The study-only keys of a study YAML (the run-spec part is validated by jobs.spec)."""

    model_config = ConfigDict(extra="forbid")
    base: str | None = Field(None, description="Run-spec YAML the study extends, relative to the study file.")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="Seeds; every condition x grid point runs once per seed.")
    conditions: dict[str, Condition] = Field(default_factory=lambda: {"baseline": Condition()}, min_length=1, description="Named model variants.")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Dotted run-spec field -> values (cartesian product over all conditions).")
    sweep: SweepOptions = Field(default_factory=SweepOptions, description="Ray Tune options.")
    tune: TuneBlock | None = Field(None, description="Tune each condition on a held-out slice of train, then run the "
                                                     "winners on the confirm seeds (the study's runs).")

    @field_validator("conditions")
    @classmethod
    def _names_are_ids(cls, value: dict[str, Condition]) -> dict[str, Condition]:
        bad = [n for n in value if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+]*", n)]
        if bad:
            raise ValueError(f"condition names must be letters/digits/_.+ (they become folder names): {bad}")
        return value


class StudySpec(BaseModel):
    """A validated study: the axes and the expanded runs."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    path: Path | None = Field(None, description="The study YAML it was loaded from.")
    axes: StudyAxes = Field(description="Seeds, conditions, grid and sweep options.")
    runs: list[RunSpec] = Field(description="Expanded runs, in a deterministic order.")

    @property
    def name(self) -> str:
        return self.runs[0].study

    @property
    def study_dir(self) -> Path:
        return Path(self.runs[0].run_dir).parent

    @property
    def sweep(self) -> SweepOptions:
        return self.axes.sweep

    def write_index(self) -> Path:
        """runs.json in the study dir: what each run folder is (condition, ablation, seed)."""
        # `needs`: the conditions a run starts from or learns from, so a copied folder still has its stage graph.
        return write_index(self.study_dir, {r.run_id: {"condition": r.condition, "ablation": r.ablation,
                                                         "seed": r.seed, "needs": list(_needs(r))} for r in self.runs})


# ---------------------------------------------------------------------------------------------- loading


def study_kind(raw: dict[str, Any], overrides: Sequence[str] = ()) -> Literal["run", "study"]:
    """The one rule telling a study from a run spec: any study key at the top, or an override of one."""
    keys = set(raw) | {o.split("=", 1)[0].split(".")[0] for o in overrides}
    return "study" if keys & set(STUDY_KEYS) else "run"


def _needs(run: RunSpec) -> tuple[str, ...]:
    return needed_conditions(run_sources(run).values())


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, files: bool = True,
               judge: Callable[[Sequence[Any]], list[str]] | None = None) -> StudySpec:
    """Read a study YAML, apply `key=value` overrides, validate and expand it.

    Raises SpecError with every problem (study keys, axes, each expanded run's spec) one line each.
    Overrides whose first key is a study key (seeds, grid, conditions, sweep, base) change the study;
    all others change the run spec every run starts from (typed by jobs.spec like `jobs train`'s).
    `judge`: the engine's checks of every run's resources (the invalid runs' too, where their resources
    section is valid), e.g. against the cluster. `files=False`: the runs' dataset and weights files are
    not required (jobs.spec.file_problems).
    """
    path = Path(path)
    raw = read_yaml(path)
    errors: list[str] = []
    study_raw = {k: raw.pop(k) for k in STUDY_KEYS if k in raw}
    run_overrides: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            errors.append(f"override {item!r}: expected key=value (e.g. seeds=[0,1] or train.epochs=3)")
        elif key.split(".")[0] in STUDY_KEYS:
            try:
                _set_study_key(study_raw, key, parse_value(value))
            except ValueError as exc:
                errors.append(f"override {item!r}: {exc}")
        else:
            run_overrides.append(item)

    tune, tune_errors = validate_block(study_raw.pop("tune")) if "tune" in study_raw else (None, [])
    errors.extend(tune_errors)
    try:
        axes = StudyAxes.model_validate(study_raw)
    except ValidationError as exc:
        errors.extend(format_validation_error(exc))
        axes = _valid_part(study_raw)  # still expand with what is valid, to report the runs' errors too
    axes = axes.model_copy(update={"tune": tune})
    base: dict[str, Any] = {}
    if axes.base:
        try:
            base = read_yaml(path.parent / axes.base)
        except SpecError as exc:
            errors.extend(f"base: {e}" for e in exc.errors)
    _deep_merge(base, raw)
    errors.extend(apply_overrides(base, run_overrides))
    if axes.tune is not None:  # the study's runs are the confirm runs: the winners at full length on val
        axes = _confirm_axes(axes, base)
    axis_errors = check_axes(axes)
    errors.extend(axis_errors)
    if axis_errors:
        axes = without_bad_axes(axes)
    runs, run_errors, invalid = expand(axes, base, files)
    errors.extend(run_errors)
    errors.extend(check_dependencies(runs, run_sources))  # run:<condition> names, cycles, grids
    if axes.tune is not None:
        errors.extend(_check_tune(axes, runs, files))
    judged = runs + invalid
    if judge is not None and judged:
        errors.extend(judge(judged))
    if errors:
        raise SpecError(errors)
    return StudySpec(path=path, axes=axes, runs=runs)


# ---------------------------------------------------------------------------------------------- tuning


def _confirm_axes(axes: StudyAxes, base: dict) -> StudyAxes:
    """The confirm stage as plain study axes: the confirm seeds, confirm epochs set on the base run spec."""
    if axes.tune.confirm.epochs is not None:
        set_dotted(base, "train.epochs", axes.tune.confirm.epochs)
    return axes.model_copy(update={"seeds": axes.tune.confirm.seeds or axes.seeds})


def _check_tune(axes: StudyAxes, runs: list[RunSpec], files: bool) -> list[str]:
    """The tune block's checks, then each condition's trial spec at the ends of every range (tune_space)."""
    grids = bool(axes.grid) or any(c.grid for c in axes.conditions.values())
    used = {s.get("name") for c in axes.conditions.values() for s in c.strategies if isinstance(s, dict)}
    errors = check_block(axes.tune, grids, stages=any(_needs(r) for r in runs))
    errors += [e for key in axes.tune.space for e in check_axis(key, used, "tune.space")]
    return errors or check_trials(axes.tune, runs, functools.partial(with_values, files=files))


# ---------------------------------------------------------------------------------------------- helpers


def _set_study_key(study: dict, key: str, value: Any) -> None:
    """Like set_dotted, but grid axes and condition overrides are dotted names themselves:
    `grid.train.lr=[..]` sets axis 'train.lr', `conditions.x.overrides.train.lr=..` sets key 'train.lr'."""
    parts = key.split(".")
    if parts[0] == "grid" and len(parts) > 1:
        study.setdefault("grid", {})[".".join(parts[1:])] = value
    elif parts[0] == "conditions" and len(parts) > 3 and parts[2] in ("grid", "overrides"):
        cond = study.setdefault("conditions", {}).setdefault(parts[1], {})
        cond.setdefault(parts[2], {})[".".join(parts[3:])] = value
    else:
        set_dotted(study, key, value)


def _deep_merge(dst: dict, src: dict) -> dict:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_merge(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)
    return dst


def _valid_part(study_raw: dict) -> StudyAxes:
    good = {}
    for key, value in study_raw.items():
        try:
            StudyAxes.model_validate({key: value})
            good[key] = value
        except ValidationError:
            pass
    return StudyAxes.model_validate(good)
