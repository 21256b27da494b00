"""Runs that start from, or learn from, another run of the same study (`run:<condition>`).

A run of condition A with seed s at grid point g that names `run:B` (in `model.init` or
`distill.teacher.init`) needs B's run with seed s whose grid point is part of g: every grid axis of B's
run has the same value in A's run (A may sweep more axes, e.g. `strategy.shallow.keep_ratio`, that B
does not use). `check_study` reports unknown names, cycles and grids that do not line up, all at
once, before anything runs; `resolve_run_export` is what a starting run calls to find the file.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from jobs import checkpoint as ckpt
from rundir import CHECKPOINT_DIR, SPEC_FILE, read_status

RUN_PREFIX = "run:"


def named_conditions(sources: Mapping[str, Any]) -> dict[str, str]:
    """{field: condition} for every `run:<condition>` among {field: source string}."""
    found = {}
    for field, source in sources.items():
        if isinstance(source, str) and source.strip().startswith(RUN_PREFIX):
            found[field] = source.strip()[len(RUN_PREFIX):].strip()
    return found


def _grid_part_of(dependency: Mapping[str, Any], dependent: Mapping[str, Any]) -> bool:
    return all(k in dependent and _same(dependent[k], v) for k, v in dependency.items())


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle of the condition graph once, as a path that returns to its start."""
    found, seen_sets = [], set()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                key = frozenset(cycle)
                if key not in seen_sets:
                    seen_sets.add(key)
                    found.append(cycle)
            elif state.get(nxt) is None:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if state.get(node) is None:
            visit(node, [node])
    return found


def check_study(runs: Iterable[Any], sources_of) -> list[str]:
    """Every dependency problem of a study's expanded runs, one line each.

    `runs` have `.run_id`, `.condition`, `.seed`, `.ablation`; `sources_of(run)` gives its
    {field: source string} (e.g. {"model.init": "run:baseline"})."""
    runs = list(runs)
    conditions = {r.condition for r in runs}
    errors: list[str] = []
    edges: dict[str, set[str]] = {}
    reported: set[tuple] = set()
    for run in runs:
        for field, cond in named_conditions(sources_of(run)).items():
            edges.setdefault(run.condition, set()).add(cond)
            if cond not in conditions:
                if (run.condition, field, cond) not in reported:
                    reported.add((run.condition, field, cond))
                    errors.append(f"condition {run.condition}: {field} names run:{cond}, which is not a condition "
                                  f"of this study (conditions: {', '.join(sorted(conditions))}); fix the name")
                continue
            matches = [d for d in runs if d.condition == cond and d.seed == run.seed
                       and _grid_part_of(d.ablation, run.ablation)]
            if len(matches) != 1:
                what = "no run" if not matches else f"{len(matches)} runs"
                errors.append(
                    f"run {run.run_id}: {field} run:{cond} has {what} with seed {run.seed} and a grid point within "
                    f"{json.dumps(run.ablation, sort_keys=True, default=str)}; give {cond} the same seeds and "
                    f"only grid axes that {run.condition} also sweeps"
                )
    for cycle in _cycles(edges):
        errors.append(f"conditions {' -> '.join(cycle)} form a cycle through run:; a condition cannot need itself")
    return errors


# ---- at run start --------------------------------------------------------------------------------


def _run_identity(run_dir: Path) -> dict[str, Any] | None:
    try:
        raw = yaml.safe_load((run_dir / SPEC_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return raw if isinstance(raw, dict) else None


def find_run(study_dir: Path, condition: str, seed: int, ablation: Mapping[str, Any]) -> Path | None:
    """The run folder of `condition` with `seed` whose grid point is part of `ablation`, if it started."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        return None
    for run_dir in sorted(p for p in study_dir.iterdir() if p.is_dir()):
        ident = _run_identity(run_dir)
        if ident and ident.get("condition") == condition and ident.get("seed") == seed \
                and _grid_part_of(ident.get("ablation") or {}, ablation):
            return run_dir
    return None


def resolve_run_export(study_dir: Path, condition: str, seed: int, ablation: Mapping[str, Any]) -> Path | str:
    """The verified best export (`checkpoints/best/model.pt`) of the run `run:<condition>` names, or a
    one-line reason it cannot be used yet."""
    run_dir = find_run(study_dir, condition, seed, ablation)
    where = f"run:{condition} (seed {seed}, grid {json.dumps(dict(ablation), sort_keys=True, default=str)})"
    if run_dir is None:
        return f"{where} has not started in {study_dir}; run that condition first"
    status = read_status(run_dir) or {}
    if status.get("state") != "finished":
        return (f"{where} is {status.get('state', 'not started')} in {run_dir}, not finished; "
                f"let it finish (or resume it) first")
    best = Path(run_dir) / CHECKPOINT_DIR / ckpt.BEST_DIR
    if not (best / ckpt.BEST_WEIGHTS).is_file():
        return f"{where} finished without a best export in {best}; rerun it with checkpoint.best=true"
    problem = ckpt.verify(best)
    if problem:
        return f"{where}: its best export is damaged ({problem}); rerun {run_dir.name}"
    return best / ckpt.BEST_WEIGHTS


def export_meta(weights: Path) -> dict[str, Any]:
    """What `export_best` recorded next to a best export: model, create_kwargs, strategies, epoch, metric."""
    return ckpt.read_manifest(Path(weights).parent)


def run_sources(spec: Any) -> dict[str, Any]:
    """{field: source string} of a RunSpec's starting weights and teacher, for `check_study`."""
    return {"model.init": spec.model.init,
            "distill.teacher.init": spec.distill.teacher.init if spec.distill is not None else None}
