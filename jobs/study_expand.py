"""A study's axes (grid, per-condition grids and overrides, strategy parameters) checked and expanded to one
validated RunSpec per run (jobs.study loads the YAML; this is the cartesian product and its run ids)."""
from __future__ import annotations

import copy
import difflib
import itertools
import json
import re
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .overrides import field_path_error, set_dotted
from .spec import ResourcesConfig, RunSpec, SpecError, validate_spec

if TYPE_CHECKING:
    from .study import StudyAxes

STRATEGY_AXIS = "strategy"  # grid axis prefix `strategy.<name>.<param>` addresses a strategy parameter


AXIS_ALIASES = {"model": "model.name"}  # the spelling of the most common axis
RESERVED_AXES = ("seed", "run_id", "study", "condition", "ablation", "strategies", "output_root")


def check_axis(axis: str, strategy_names: set[str], where: str) -> list[str]:
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


def check_axes(axes: StudyAxes) -> list[str]:
    errors: list[str] = []
    used = {s.get("name") for c in axes.conditions.values() for s in c.strategies if isinstance(s, dict)}
    if len(set(axes.seeds)) != len(axes.seeds):
        errors.append(f"seeds: {axes.seeds} has duplicates; each seed must appear once")
    for axis, values in axes.grid.items():
        errors.extend(check_axis(axis, used, "grid"))
        if not values:
            errors.append(f"grid: axis {axis!r} has no values; give at least one or remove the axis")
    for name, cond in axes.conditions.items():
        cond_used = {s.get("name") for s in cond.strategies if isinstance(s, dict)}
        for axis, values in cond.grid.items():
            errors.extend(check_axis(axis, cond_used, f"conditions.{name}.grid"))
            if not values:
                errors.append(f"conditions.{name}.grid: axis {axis!r} has no values; give at least one or remove it")
        for key in cond.overrides:
            errors.extend(check_axis(key, cond_used, f"conditions.{name}.overrides"))
        for i, s in enumerate(cond.strategies):
            if not isinstance(s, dict) or "name" not in s:
                errors.append(f"conditions.{name}.strategies[{i}]: expected {{name: ..., params: {{...}}}}, got {s!r}")
    return errors


def without_bad_axes(axes: StudyAxes) -> StudyAxes:
    """The study minus the axes check_axes rejected (so the runs can still be checked)."""
    used = {s.get("name") for c in axes.conditions.values() for s in c.strategies if isinstance(s, dict)}
    grid = {k: v for k, v in axes.grid.items() if v and not check_axis(k, used, "")}
    conditions = {}
    for name, cond in axes.conditions.items():
        cu = {s.get("name") for s in cond.strategies if isinstance(s, dict)}
        conditions[name] = cond.model_copy(update={
            "grid": {k: v for k, v in cond.grid.items() if v and not check_axis(k, cu, "")},
            "overrides": {k: v for k, v in cond.overrides.items() if not check_axis(k, cu, "")},
            "strategies": [x for x in cond.strategies if isinstance(x, dict) and "name" in x]})
    # duplicate seeds are reported once by _check_axes, not again as colliding run ids
    return axes.model_copy(update={"grid": grid, "conditions": conditions, "seeds": list(dict.fromkeys(axes.seeds))})



def with_values(spec: RunSpec, values: dict[str, Any], *, files: bool = True, **update: Any) -> RunSpec:
    """`spec` with dotted run-spec keys (grid-axis spelling) set to `values` and fields in `update`; validated
    (`files=False`: its dataset and weights files need not exist yet)."""
    data = spec.model_dump(mode="json")
    data.update(update, data_root=None)  # the data paths are already resolved against it
    for key, value in values.items():
        _apply_axis(data, key, value)
    spec_data, errs = _validate_run(data, files)
    if errs:
        raise SpecError(errs)
    return spec_data


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


def expand(axes: StudyAxes, base: dict, files: bool = True) -> tuple[list[RunSpec], list[str], list]:
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


