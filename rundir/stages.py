"""The stage graph of a study: which run needs which, and which runs a failed dependency blocks.

A run of condition A with seed s at grid point g that names `run:B` (in `model.init` or
`distill.teacher.init`) needs B's run with seed s whose grid point is part of g: every grid axis of B's run
has the same value in A's run (A may sweep more axes, e.g. `strategy.shallow.keep_ratio`, that B does not
use). These rules live here once: the engines build the graph from their run specs, the analysis from the
recorded specs of a copied study folder (rundir.record), the starting job finds its teacher run with
`part_of`, and `check_dependencies` reports every problem of a study before anything runs. Only the standard
library: rundir sits below every other package.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

RUN_PREFIX = "run:"
SOURCE_FIELDS = ("model.init", "distill.teacher.init")


@dataclass(frozen=True)
class Node:
    run_id: str
    condition: str
    seed: int | None
    ablation: Mapping[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # conditions named by run:<condition>


def run_condition(source: Any) -> str | None:
    """The condition a `run:<condition>` source string names ("" when the name is missing), None for any other
    source."""
    if not isinstance(source, str) or not source.strip().startswith(RUN_PREFIX):
        return None
    return source.strip()[len(RUN_PREFIX):].strip()


def run_source(condition: str) -> str:
    """The source string that names the run of `condition`: `run:<condition>`."""
    return f"{RUN_PREFIX}{condition}"


def named_conditions(sources: Mapping[str, Any]) -> dict[str, str]:
    """{field: condition} for every `run:<condition>` among {field: source string} (others ignored)."""
    return {f: c for f, s in sources.items() if (c := run_condition(s))}


def needed_conditions(sources: Iterable[Any]) -> tuple[str, ...]:
    """The condition names of every `run:<condition>` among source strings, each once, in order."""
    return tuple(dict.fromkeys(c for s in sources if (c := run_condition(s))))


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def part_of(dependency: Mapping[str, Any], dependent: Mapping[str, Any]) -> bool:
    """True when every grid axis of the `dependency` run's grid point has the same value in `dependent`'s."""
    return all(k in dependent and _same(dependent[k], v) for k, v in dependency.items())


def dependencies(nodes: Iterable[Node]) -> dict[str, list[str]]:
    """run_id -> the run_ids it needs (empty for a first-stage run). A name with no matching run is left out:
    the study's validation reports it before anything runs."""
    nodes = list(nodes)
    out: dict[str, list[str]] = {}
    for n in nodes:
        out[n.run_id] = [d.run_id for cond in n.needs for d in nodes
                         if d.condition == cond and d.seed == n.seed and part_of(d.ablation, n.ablation)]
    return out


def stage_of(deps: Mapping[str, list[str]]) -> dict[str, int]:
    """run_id -> stage number: 0 for runs that need nothing, else one more than the latest stage they need."""
    stages: dict[str, int] = {}

    def visit(run: str, seen: tuple[str, ...]) -> int:
        if run not in stages:
            if run in seen:  # a cycle is a config error reported elsewhere; do not recurse forever
                return 0
            stages[run] = 1 + max((visit(d, seen + (run,)) for d in deps.get(run, ()) if d in deps), default=-1)
        return stages[run]

    for run in deps:
        visit(run, ())
    return stages


def condition_graph(nodes: Iterable[Node]) -> dict[str, list[str]]:
    """condition -> the conditions it needs (the study's stage graph as a researcher states it)."""
    out: dict[str, list[str]] = {}
    for n in nodes:
        entry = out.setdefault(n.condition, [])
        entry += [c for c in n.needs if c not in entry]
    return out


def blocker(run_id: str, deps: Mapping[str, list[str]], stuck: Mapping[str, str]) -> str | None:
    """The run that keeps `run_id` from starting: the first dependency, direct or further up, found in `stuck`
    (run_id -> why it cannot finish: failed, blocked). None when nothing upstream is stuck."""
    seen: set[str] = set()
    todo = list(deps.get(run_id, ()))
    while todo:
        d = todo.pop(0)
        if d in seen:
            continue
        seen.add(d)
        if d in stuck:
            return d
        todo += deps.get(d, ())
    return None


def index_nodes(index: Mapping[str, Mapping[str, Any]]) -> list[Node]:
    """Nodes from a study index (runs.json: run_id -> {condition, ablation, seed, needs})."""
    return [Node(run_id, str(e.get("condition") or ""), e.get("seed"), dict(e.get("ablation") or {}),
                 tuple(e.get("needs") or ())) for run_id, e in index.items()]


def stage_lines(nodes: Iterable[Node]) -> list[str]:
    """The study's stage graph as text, one line per condition: `pruned <- baseline` (stage 1)."""
    graph = condition_graph(nodes)
    stages = stage_of({c: [d for d in needs if d in graph] for c, needs in graph.items()})
    return [f"stage {stages[c]}: {c}" + (f" <- {', '.join(graph[c])}" if graph[c] else "")
            for c in sorted(graph, key=lambda c: (stages[c], c))]


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


def check_dependencies(runs: Iterable[Any], sources_of: Callable[[Any], Mapping[str, Any]]) -> list[str]:
    """Every dependency problem of a study's expanded runs, one line each: unknown names, grids that do not
    line up, cycles. `runs` have `.run_id`, `.condition`, `.seed`, `.ablation`; `sources_of(run)` gives its
    {field: source string} (e.g. {"model.init": "run:baseline"})."""
    runs = list(runs)
    conditions = {r.condition for r in runs}
    errors: list[str] = []
    edges: dict[str, set[str]] = {}
    reported: set[tuple] = set()
    for run in runs:
        for source_field, cond in named_conditions(sources_of(run)).items():
            edges.setdefault(run.condition, set()).add(cond)
            if cond not in conditions:
                if (run.condition, source_field, cond) not in reported:
                    reported.add((run.condition, source_field, cond))
                    errors.append(f"condition {run.condition}: {source_field} names {run_source(cond)}, which is not "
                                  f"a condition of this study (conditions: {', '.join(sorted(conditions))}); fix the name")
                continue
            matches = [d for d in runs if d.condition == cond and d.seed == run.seed and part_of(d.ablation, run.ablation)]
            if len(matches) != 1:
                what = "no run" if not matches else f"{len(matches)} runs"
                errors.append(
                    f"run {run.run_id}: {source_field} {run_source(cond)} has {what} with seed {run.seed} and a grid "
                    f"point within {json.dumps(run.ablation, sort_keys=True, default=str)}; give {cond} the same "
                    f"seeds and only grid axes that {run.condition} also sweeps"
                )
    for cycle in _cycles(edges):
        errors.append(f"conditions {' -> '.join(cycle)} form a cycle through {RUN_PREFIX}; a condition cannot need "
                      "itself")
    return errors
