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
    tune: {...}                  # optional: tune every condition, then confirm the winners (orchestrator.tune_space)

Everything else (model, data, train, resources, checkpoint, output_root, study, ...) is the run
spec that every run starts from. `load_study` reports every error of the study and of every
expanded run at once (SpecError, one line each) before anything expensive starts.
"""
from __future__ import annotations

import copy
import difflib
import itertools
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jobs.dependencies import run_sources
from jobs.overrides import apply_overrides, field_path_error, parse_value, set_dotted
from jobs.spec import ResourcesConfig, RunSpec, SpecError, format_validation_error, read_yaml, validate_spec
from orchestrator.resources import ClusterShape, check_fits
from orchestrator.tune_space import TuneBlock, check_block, check_trials, validate_block
from rundir import write_index
from rundir.stages import check_dependencies, needed_conditions

STUDY_KEYS = ("base", "seeds", "conditions", "grid", "sweep", "tune")
STRATEGY_AXIS = "strategy"  # grid axis prefix `strategy.<name>.<param>` addresses a strategy parameter


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


def _needs(run: RunSpec) -> tuple[str, ...]:
    return needed_conditions(run_sources(run).values())


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
               cluster: ClusterShape | None = None, files: bool = True) -> StudySpec:
    """Read a study YAML, apply `key=value` overrides, validate and expand it.

    Raises SpecError with every problem (study keys, axes, each expanded run's spec) one line each.
    Overrides whose first key is a study key (seeds, grid, conditions, sweep, base) change the study;
    all others change the run spec every run starts from (typed by jobs.spec like `jobs train`'s).
    With `cluster`, resource requests it can never satisfy are errors too. `files=False`: the runs'
    dataset and weights files are not required (jobs.spec.file_problems).
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
    axis_errors = _check_axes(axes)
    errors.extend(axis_errors)
    if axis_errors:
        axes = _without_bad_axes(axes)
    runs, run_errors, invalid = _expand(axes, base, files)
    errors.extend(run_errors)
    errors.extend(check_dependencies(runs, run_sources))  # run:<condition> names, cycles, grids
    if axes.tune is not None:
        errors.extend(_check_tune(axes, runs))
    judged = runs + invalid
    if cluster is not None and judged:
        errors.extend(check_fits(judged, cluster))
    if errors:
        raise SpecError(errors)
    return StudySpec(path=path, axes=axes, runs=runs)


# ---------------------------------------------------------------------------------------------- axes


AXIS_ALIASES = {"model": "model.name"}  # the spelling of the most common axis
RESERVED_AXES = ("seed", "run_id", "study", "condition", "ablation", "strategies", "output_root")


def _check_axis(axis: str, strategy_names: set[str], where: str) -> list[str]:
    axis = AXIS_ALIASES.get(axis, axis)
    if axis in RESERVED_AXES:
        return [f"{where}: axis {axis!r} is set by the study itself; use `seeds`/`conditions` instead"]
    if axis.startswith(STRATEGY_AXIS + "."):
        parts = axis.split(".")
        if len(parts) != 3:
            return [f"{where}: axis {axis!r} must be strategy.<name>.<param> (e.g. strategy.shallow.keep_ratio)"]
        if parts[1] not in strategy_names:
            hint = difflib.get_close_matches(parts[1], sorted(strategy_names), n=1)
            tip = f"; did you mean strategy.{hint[0]}.{parts[2]}?" if hint else ""
            return [f"{where}: axis {axis!r}: no condition uses strategy {parts[1]!r}{tip}"]
        return []
    problem = field_path_error(axis, RunSpec, what="axis")
    return [f"{where}: {problem}"] if problem else []


def _check_axes(axes: StudyAxes) -> list[str]:
    errors: list[str] = []
    used = {s.get("name") for c in axes.conditions.values() for s in c.strategies if isinstance(s, dict)}
    if len(set(axes.seeds)) != len(axes.seeds):
        errors.append(f"seeds: {axes.seeds} has duplicates; each seed must appear once")
    for axis, values in axes.grid.items():
        errors.extend(_check_axis(axis, used, "grid"))
        if not values:
            errors.append(f"grid: axis {axis!r} has no values; give at least one or remove the axis")
    for name, cond in axes.conditions.items():
        cond_used = {s.get("name") for s in cond.strategies if isinstance(s, dict)}
        for axis, values in cond.grid.items():
            errors.extend(_check_axis(axis, cond_used, f"conditions.{name}.grid"))
            if not values:
                errors.append(f"conditions.{name}.grid: axis {axis!r} has no values; give at least one or remove it")
        for key in cond.overrides:
            errors.extend(_check_axis(key, cond_used, f"conditions.{name}.overrides"))
        for i, s in enumerate(cond.strategies):
            if not isinstance(s, dict) or "name" not in s:
                errors.append(f"conditions.{name}.strategies[{i}]: expected {{name: ..., params: {{...}}}}, got {s!r}")
    return errors


def _valid_part(study_raw: dict) -> StudyAxes:
    good = {}
    for key, value in study_raw.items():
        try:
            StudyAxes.model_validate({key: value})
            good[key] = value
        except ValidationError:
            pass
    return StudyAxes.model_validate(good)


def _without_bad_axes(axes: StudyAxes) -> StudyAxes:
    """The study minus the axes _check_axes rejected (so the runs can still be checked)."""
    used = {s.get("name") for c in axes.conditions.values() for s in c.strategies if isinstance(s, dict)}
    grid = {k: v for k, v in axes.grid.items() if v and not _check_axis(k, used, "")}
    conditions = {}
    for name, cond in axes.conditions.items():
        cu = {s.get("name") for s in cond.strategies if isinstance(s, dict)}
        conditions[name] = cond.model_copy(update={
            "grid": {k: v for k, v in cond.grid.items() if v and not _check_axis(k, cu, "")},
            "overrides": {k: v for k, v in cond.overrides.items() if not _check_axis(k, cu, "")},
            "strategies": [x for x in cond.strategies if isinstance(x, dict) and "name" in x]})
    # duplicate seeds are reported once by _check_axes, not again as colliding run ids
    return axes.model_copy(update={"grid": grid, "conditions": conditions, "seeds": list(dict.fromkeys(axes.seeds))})


# ---------------------------------------------------------------------------------------------- tuning


def _confirm_axes(axes: StudyAxes, base: dict) -> StudyAxes:
    """The confirm stage as plain study axes: the confirm seeds, confirm epochs set on the base run spec."""
    if axes.tune.confirm.epochs is not None:
        set_dotted(base, "train.epochs", axes.tune.confirm.epochs)
    return axes.model_copy(update={"seeds": axes.tune.confirm.seeds or axes.seeds})


def _check_tune(axes: StudyAxes, runs: list[RunSpec]) -> list[str]:
    """The tune block's checks, then each condition's trial spec at the ends of every range (tune_space)."""
    grids = bool(axes.grid) or any(c.grid for c in axes.conditions.values())
    used = {s.get("name") for c in axes.conditions.values() for s in c.strategies if isinstance(s, dict)}
    errors = check_block(axes.tune, grids, stages=any(_needs(r) for r in runs))
    errors += [e for key in axes.tune.space for e in _check_axis(key, used, "tune.space")]
    return errors or check_trials(axes.tune, runs, with_values)


def with_values(spec: RunSpec, values: dict[str, Any], **update: Any) -> RunSpec:
    """`spec` with dotted run-spec keys (grid-axis spelling) set to `values` and fields in `update`; validated."""
    data = spec.model_dump(mode="json")
    data.update(update, data_root=None)  # the data paths are already resolved against it
    for key, value in values.items():
        _apply_axis(data, key, value)
    spec_data, errs = _validate_run(data)
    if errs:
        raise SpecError(errs)
    return spec_data


# ---------------------------------------------------------------------------------------------- expansion


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+]", "_", text)


def _short_names(axes: list[str]) -> dict[str, str]:
    """Last dotted component as the run-id label, the full path where two axes would collide."""
    last = [a.split(".")[-1] for a in axes]
    return {a: (s if last.count(s) == 1 else a) for a, s in zip(axes, last)}


def _expand(axes: StudyAxes, base: dict, files: bool = True) -> tuple[list[RunSpec], list[str], list]:
    """(valid runs, error lines, resource requests of the invalid runs: still judged against the cluster)."""
    runs: list[RunSpec] = []
    invalid: list = []
    errors: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for cond_name, cond in axes.conditions.items():
        cond_strategies = {s["name"] for s in cond.strategies}
        grid = {k: v for k, v in axes.grid.items()
                if not k.startswith(STRATEGY_AXIS + ".") or k.split(".")[1] in cond_strategies}
        grid.update(cond.grid)
        names = list(grid)
        short = _short_names(names)
        for point in itertools.product(*(grid[n] for n in names)):
            ablation = dict(zip(names, point))
            for seed in axes.seeds:
                label = "-".join([cond_name, *(f"{short[n]}={_format_value(v)}" for n, v in ablation.items()), f"s{seed}"])
                data = copy.deepcopy(base)
                data["strategies"] = copy.deepcopy(cond.strategies)
                errs = []
                for key, value in [*cond.overrides.items(), *ablation.items()]:
                    try:
                        _apply_axis(data, key, value)
                    except ValueError as exc:
                        errs.append(str(exc))
                data.update(seed=seed, run_id=label, condition=cond_name, ablation=_jsonable(ablation))
                if label in seen:
                    errors.setdefault(label, []).append(f"run {label}: same run id as another run; rename a condition")
                    continue
                seen[label] = cond_name
                spec, more = _validate_run(data, files) if not errs else (None, [])
                errs += more
                if errs:
                    errors[label] = errs
                    invalid.append(_resources_only(label, data))
                else:
                    runs.append(spec)
    return runs, _merge_run_errors(errors, total=len(seen)), [r for r in invalid if r is not None]


def _resources_only(label: str, data: dict):
    """run_id + resources of an invalid run, when its resources section is valid by itself."""
    try:
        return SimpleNamespace(run_id=label, resources=ResourcesConfig.model_validate(data.get("resources", {})))
    except ValidationError:
        return None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _apply_axis(data: dict, key: str, value: Any) -> None:
    if key.startswith(STRATEGY_AXIS + "."):
        _, name, param = key.split(".")
        for s in data["strategies"]:
            if s.get("name") == name:
                s.setdefault("params", {})[param] = value
        return
    set_dotted(data, AXIS_ALIASES.get(key, key), value)


def _validate_run(data: dict, files: bool = True) -> tuple[RunSpec | None, list[str]]:
    """RunSpec from an expanded dict: the schema plus jobs.spec's cross-field checks."""
    try:
        return validate_spec(data, files=files), []
    except SpecError as exc:
        return None, list(exc.errors)


def _merge_run_errors(errors: dict[str, list[str]], total: int) -> list[str]:
    """The same problem in many runs (e.g. every seed) is one line naming all of them."""
    by_msg: dict[str, list[str]] = {}
    for label, msgs in errors.items():
        for m in msgs:
            by_msg.setdefault(m, []).append(label)
    out = []
    for msg, labels in by_msg.items():
        if msg.startswith("run "):
            out.append(msg)
        elif len(labels) == total and total > 1:
            out.append(f"all {total} runs: {msg}")
        else:
            who = labels[0] if len(labels) == 1 else f"{labels[0]} (+{len(labels) - 1} more runs)"
            out.append(f"run {who}: {msg}")
    return out


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
