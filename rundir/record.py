"""A run folder as every package reads it: its recorded spec, status, state, checkpoints and metrics.

The run spec is recorded twice at every start of a run: `spec.yaml` for people (never parsed by the code)
and `spec.json`, which this module alone parses, for the code: rundir stays on the standard library, so the
engines, the job and the analysis of a folder copied off the cluster read one file one way.
`spec.json` is `{"format": 1, "spec": <the resolved run spec, jobs.spec.RunSpec as JSON>, "architecture":
<the model as built: depth, embed_dim, num_heads, mlp_hidden after the strategies>}`; the architecture is what
the run built, so no reader works it out again from weight shapes or parameter counts.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa

from rundir.atomic import atomic_write_json
from rundir.errors import exception_line
from rundir.metrics import check_metrics
from rundir.names import BEST_DIR, BEST_WEIGHTS, CHECKPOINT_DIR, SPEC_JSON
from rundir.schema import best_metric_column
from rundir.stages import SOURCE_FIELDS, Node, needed_conditions
from rundir.state import RunState, run_state
from rundir.status import check_status

SPEC_FORMAT = 1


@dataclass(frozen=True)
class Architecture:
    """The model the run built (strategies applied), as jobs.models.architecture records it."""
    depth: int
    embed_dim: int
    num_heads: int
    mlp_hidden: int  # MLP hidden width of the first block

    @property
    def expansion_ratio(self) -> float:
        return self.mlp_hidden / self.embed_dim


def _get(raw: Mapping[str, Any], dotted: str) -> Any:
    value: Any = raw
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = raw.get(name)
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class RecordedSpec:
    """The parts of a run spec that the engines, the job and the analysis read, typed; `raw` is all of it."""
    raw: Mapping[str, Any]
    architecture: Architecture | None = None

    @property
    def study(self) -> str | None:
        return self.raw.get("study")

    @property
    def run_id(self) -> str | None:
        return self.raw.get("run_id")

    @property
    def strategies(self) -> list[dict[str, Any]]:
        return [s for s in self.raw.get("strategies") or [] if isinstance(s, dict)]

    @property
    def strategy(self) -> str:
        """Strategy names joined by `+`, `baseline` without any (jobs.spec.RunSpec.strategy_label)."""
        return "+".join(str(s.get("name", "?")) for s in self.strategies) or "baseline"

    @property
    def condition(self) -> str:
        """The condition label: the spec's `condition`, else the strategy label (RunSpec.condition_label)."""
        return str(self.raw.get("condition") or self.strategy)

    @property
    def seed(self) -> int | None:
        seed = self.raw.get("seed")
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else None

    @property
    def ablation(self) -> dict[str, Any]:
        return dict(_section(self.raw, "ablation"))

    @property
    def model(self) -> str | None:
        name = _section(self.raw, "model").get("name")
        return name if isinstance(name, str) else None

    @property
    def epochs(self) -> int | None:
        epochs = _section(self.raw, "train").get("epochs")
        return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None

    @property
    def init(self) -> str:
        return str(_section(self.raw, "model").get("init") or "random")

    @property
    def distill(self) -> Mapping[str, Any] | None:
        return _section(self.raw, "distill") or None

    @property
    def teacher(self) -> str | None:
        teacher = (self.distill or {}).get("teacher")
        return teacher.get("init") if isinstance(teacher, Mapping) else teacher

    @property
    def sources(self) -> dict[str, Any]:
        """{field: source string} of the starting weights and the teacher (rundir.stages.SOURCE_FIELDS)."""
        return {f: _get(self.raw, f) for f in SOURCE_FIELDS}

    @property
    def needs(self) -> tuple[str, ...]:
        """The conditions this run starts from or learns from (`run:<condition>`)."""
        return needed_conditions(self.sources.values())

    @property
    def best_metric(self) -> str:
        """The metrics column its best export is chosen by (checkpoint.best_metric, auto resolved)."""
        return best_metric_column(str(_section(self.raw, "checkpoint").get("best_metric", "auto")),
                                  bool(_section(self.raw, "train").get("ema")))

    def node(self, run_id: str | None = None) -> Node:
        return Node(run_id or str(self.run_id), self.condition, self.seed, self.ablation, self.needs)


def node_from_spec(run_id: str, raw: Mapping[str, Any]) -> Node:
    """A stage-graph node from a run spec as a plain mapping (a RunSpec's JSON dump)."""
    return RecordedSpec(raw).node(run_id)


def write_spec_record(run_dir: Path | str, spec: Mapping[str, Any], architecture: Mapping[str, Any]) -> Path:
    """spec.json of the run in `run_dir`: the resolved spec (JSON-able) and the architecture it built."""
    path = Path(run_dir) / SPEC_JSON
    atomic_write_json(path, {"format": SPEC_FORMAT, "spec": dict(spec),
                             "architecture": {f.name: int(architecture[f.name]) for f in fields(Architecture)}})
    return path


def check_spec(run_dir: Path | str) -> tuple[RecordedSpec | None, str | None]:
    """(spec, problem): (None, None) without spec.json, (None, one line) when it cannot be read."""
    path = Path(run_dir) / SPEC_JSON
    if not path.exists():
        return None, None
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("spec"), dict):
            raise ValueError('expected an object with a "spec" object')
        arch = doc.get("architecture")
        architecture = Architecture(**{f.name: int(arch[f.name]) for f in fields(Architecture)}) \
            if isinstance(arch, dict) else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{SPEC_JSON} unreadable ({exception_line(exc, path)})"
    return RecordedSpec(doc["spec"], architecture), None


@dataclass(frozen=True)
class RunRecord:
    """What a run folder holds, read once: the recorded spec and status (each with the problem when it cannot
    be used); the state, the metrics and the best export are read on demand."""
    run_dir: Path
    spec: RecordedSpec | None = None
    spec_problem: str | None = None
    status: Mapping[str, Any] | None = None
    status_problem: str | None = None
    planned: Mapping[str, Any] = field(default_factory=dict)  # its entry in the study index runs.json, if any

    @classmethod
    def read(cls, run_dir: Path | str, planned: Mapping[str, Any] | None = None) -> "RunRecord":
        run_dir = Path(run_dir)
        spec, spec_problem = check_spec(run_dir)
        status, status_problem = check_status(run_dir)
        return cls(run_dir, spec, spec_problem, status, status_problem, dict(planned or {}))

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @property
    def condition(self) -> str | None:
        return self.spec.condition if self.spec is not None else self.planned.get("condition")

    @property
    def seed(self) -> int | None:
        return self.spec.seed if self.spec is not None else self.planned.get("seed")

    def state(self, epochs_wanted: int | None = None) -> RunState:
        """rundir.state's one definition of where the run stands (`epochs_wanted`: what a spec asks for now)."""
        return run_state(self.run_dir, epochs_wanted)

    def metrics(self, columns: tuple[str, ...] | None = None) -> tuple[pa.Table | None, list[str], list[str]]:
        """(table, errors, warnings) of metrics.parquet, as rundir.metrics.check_metrics (`columns`: only those)."""
        return check_metrics(self.run_dir, columns)

    @property
    def best_export(self) -> Path | None:
        """checkpoints/best/model.pt when the run wrote one (jobs.checkpoint_files verifies it before use)."""
        path = self.run_dir / CHECKPOINT_DIR / BEST_DIR / BEST_WEIGHTS
        return path if path.is_file() else None


def find_runs(study_dir: Path | str) -> list[RunRecord]:
    """The record of every run folder directly under `study_dir` that holds a spec.json, by folder name."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        return []
    return [RunRecord.read(p) for p in sorted(study_dir.iterdir()) if (p / SPEC_JSON).is_file()]
