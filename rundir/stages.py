"""The stage graph of a study: which run needs which, and which runs a failed dependency blocks.

A run that names `run:<condition>` (in `model.init` or `distill.teacher.init`) needs the run of that condition
with the same seed whose grid point is part of its own. The engines build the graph from their run specs, the
analysis from the `spec.yaml` files of a copied study folder; both go through `Node`, so the graph is
defined once. Only the standard library: rundir sits below every other package.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
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


def _get(raw: Mapping[str, Any], dotted: str) -> Any:
    value: Any = raw
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def needed_conditions(sources: Iterable[Any]) -> tuple[str, ...]:
    """The condition names of every `run:<condition>` among source strings (others ignored)."""
    out = []
    for s in sources:
        if isinstance(s, str) and s.strip().startswith(RUN_PREFIX):
            name = s.strip()[len(RUN_PREFIX):].strip()
            if name not in out:
                out.append(name)
    return tuple(out)


def node_from_spec(run_id: str, raw: Mapping[str, Any]) -> Node:
    """A node from a run spec as a plain mapping (spec.yaml, or a RunSpec's model_dump)."""
    return Node(run_id, str(raw.get("condition") or ""), raw.get("seed"), dict(raw.get("ablation") or {}),
                needed_conditions(_get(raw, f) for f in SOURCE_FIELDS))


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _part_of(dependency: Mapping[str, Any], dependent: Mapping[str, Any]) -> bool:
    return all(k in dependent and _same(dependent[k], v) for k, v in dependency.items())


def dependencies(nodes: Iterable[Node]) -> dict[str, list[str]]:
    """run_id -> the run_ids it needs (empty for a first-stage run). A name with no matching run is left out:
    the study's validation reports it before anything runs."""
    nodes = list(nodes)
    out: dict[str, list[str]] = {}
    for n in nodes:
        out[n.run_id] = [d.run_id for cond in n.needs for d in nodes
                         if d.condition == cond and d.seed == n.seed and _part_of(d.ablation, n.ablation)]
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
