"""The submission plan, one for both engines: what a `run`, `sweep` or `slurm` invocation runs, continues,
keeps or holds back. Ray Tune and Slurm differ only in how they submit `Plan.to_submit`.

1. `load_config`: a run spec or a study, by one rule (a study has any of the study keys `base`, `seeds`,
   `conditions`, `grid`, `sweep`, at the top or in an override), or as the caller says explicitly.
2. `resolve_paths`: output_root and the data paths made absolute against this process's cwd (workers run
   elsewhere); cloud URIs are kept; `data_root` is folded in once.
3. `make_plan`: per run, from `rundir.run_state` (the one definition of a run's state):
   finished -> kept, never recomputed; unfinished with output -> continues from its checkpoints; no output
   (runs added to the study since) -> starts; failed -> retried from its checkpoints; blocked -> held back
   and reported; a run whose dependency (an earlier stage, rundir.stages) is held is held too, `blocked by` it.
   Without `resume`, any run with output refuses the whole plan. A run whose job an engine
   still has queued (`live`) is left to it.
4. The caller holds `study_lock(plan.study_dir)` (the same lock for run, sweep and slurm) from before the
   plan is made until its submissions end.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from jobs.configdoc import print_config
from jobs.spec import RunSpec, SpecError, file_problems, load_spec, read_yaml
from jobs.study import StudySpec, load_study, study_kind
from orchestrator.resources import ClusterShape, fits_on
from rundir import RunState, State, blocker, dependencies, node_from_spec, print_errors, run_state, stage_of

Kind = Literal["run", "study"]


class Action(str, Enum):
    START = "start"        # no output yet: trains from scratch
    CONTINUE = "continue"  # unfinished or failed: continues from its newest valid checkpoint
    KEEP = "keep"          # finished: never recomputed
    HOLD = "hold"          # blocked: not submitted until the user repairs its folder
    QUEUED = "queued"      # the engine still has a job for it: not submitted twice


SUBMITTED = (Action.START, Action.CONTINUE)


@dataclass(frozen=True)
class PlannedRun:
    spec: RunSpec
    state: RunState
    action: Action
    job: str | None = None  # the live job of a QUEUED run, as the engine names it

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    def line(self) -> str:
        """One line saying what happens to the run and why (the same wording on every engine)."""
        what = {
            Action.START: "starts",
            Action.CONTINUE: f"continues from its checkpoints ({self.state.describe()})",
            Action.KEEP: f"kept ({self.state.describe()})",
            Action.HOLD: f"held back, {self.state.describe()}",
            Action.QUEUED: f"still queued as {self.job}, not submitted again",
        }[self.action]
        return f"{self.run_id}: {what}"


@dataclass
class Plan:
    kind: Kind
    config: Path
    runs: list[PlannedRun]
    study: StudySpec | None = None
    resume: bool = False
    errors: list[str] = field(default_factory=list)  # why the plan must not be submitted (nothing started)
    deps: dict[str, list[str]] = field(default_factory=dict)  # run_id -> run_ids of earlier stages it needs

    @property
    def stages(self) -> dict[str, int]:
        """run_id -> stage number (0: needs no other run)."""
        return stage_of(self.deps)

    @property
    def study_dir(self) -> Path:
        return Path(self.runs[0].spec.run_dir).parent

    @property
    def to_submit(self) -> list[RunSpec]:
        return [p.spec for p in self.runs if p.action in SUBMITTED]

    def count(self, action: Action) -> int:
        return sum(p.action is action for p in self.runs)

    @property
    def held(self) -> list[PlannedRun]:
        return [p for p in self.runs if p.action is Action.HOLD]

    def summary(self) -> str:
        """`resuming DIR: F finished runs kept, C continue from their checkpoints, N new[, ...]`."""
        text = (f"{'resuming' if self.resume else 'starting'} {self.study_dir}: {self.count(Action.KEEP)} finished "
                f"runs kept, {self.count(Action.CONTINUE)} continue from their checkpoints, "
                f"{self.count(Action.START)} new")
        if self.count(Action.QUEUED):
            text += f", {self.count(Action.QUEUED)} still queued"
        if self.held:
            text += f", {len(self.held)} blocked"
        return text

    def lines(self) -> list[str]:
        """One line per run that is not simply started (kept, continued, queued, held)."""
        return [p.line() for p in self.runs if p.action is not Action.START]

    def write_index(self) -> None:
        if self.study is not None:
            self.study.write_index()


def resolve_paths(spec: RunSpec) -> RunSpec:
    """The spec with output_root and data paths made absolute against this process's cwd, so the workers
    (whose cwd Ray or Slurm chooses, also after a requeue) read and write the same files. Cloud URIs kept."""
    def fix(p: Any) -> Any:
        text = str(p)
        return p if "://" in text or os.path.isabs(text) else type(p)(os.path.abspath(text))

    data = spec.data.model_copy(update={"train_path": fix(spec.data.train_path), "val_path": fix(spec.data.val_path)})
    # data_root is already folded into the data paths by the spec's validator; drop it so a reload of the
    # dumped spec does not prefix it twice.
    return spec.model_copy(update={"output_root": fix(spec.output_root), "data": data, "data_root": None})


def load_config(config: Path | str, overrides: list[str] | tuple[str, ...] = (), *, kind: Kind | None = None,
                cluster: ClusterShape | None = None, files: bool = True) -> tuple[Kind, list[RunSpec], StudySpec | None]:
    """(kind, runs with resolved paths, the study or None). SpecError lists every problem of the config.
    `files=False`: the dataset and weights files need not exist yet (jobs.spec.file_problems)."""
    config = Path(config)
    overrides = list(overrides)
    kind = kind or study_kind(read_yaml(config), overrides)
    if kind == "study":
        study = load_study(config, overrides, files=files, judge=fits_on(cluster))
        return kind, [resolve_paths(r) for r in study.runs], study
    return kind, [resolve_paths(load_spec(config, overrides, files=files))], None


def print_resolved(config: Path | str, overrides: list[str] | tuple[str, ...] = (), kind: Kind | None = None) -> int:
    """`--print-config`: the config as it would run (every default, paths resolved) as YAML; exit status.
    Missing datasets or weights files are warnings here, so a config can be read before they exist."""
    try:
        kind, runs, study = load_config(config, overrides, kind=kind, files=False)
    except SpecError as exc:
        what = {"run": "run spec", "study": "study"}.get(kind or "", "config")
        return print_errors(f"{config} is not a valid {what}", exc.errors)
    warnings = [line for r in runs for line in file_problems(r)]
    return print_config(study.model_copy(update={"runs": runs}) if study is not None else runs[0], warnings)


def plan_run(spec: RunSpec, job: str | None = None) -> PlannedRun:
    """What happens to one run: from its state (rundir) and whether an engine still has a job queued for it."""
    state = run_state(spec.run_dir, spec.train.epochs)
    if job is not None and not state.finished:
        action = Action.QUEUED
    elif state.state is State.BLOCKED:
        action = Action.HOLD
    elif state.finished:
        action = Action.KEEP
    elif state.started:
        action = Action.CONTINUE
    else:
        action = Action.START
    return PlannedRun(spec, state, action, job)


def make_plan(kind: Kind, config: Path | str, runs: list[RunSpec], study: StudySpec | None = None, *,
              resume: bool, live: dict[str, str] | None = None) -> Plan:
    """The plan for `runs` as their folders are now. `live`: run_id -> the engine's job still queued for it."""
    live = live or {}
    deps = run_dependencies(runs)
    planned = hold_dependents([plan_run(r, live.get(r.run_id)) for r in runs], deps)
    plan = Plan(kind, Path(config), planned, study, resume, deps=deps)
    if not resume:
        existing = [p for p in planned if p.state.started or p.action is Action.QUEUED]
        if existing:
            shown = ", ".join(f"{p.run_id} ({p.state.describe()})" for p in existing[:4])
            more = f" and {len(existing) - 4} more" if len(existing) > 4 else ""
            plan.errors.append(f"output already exists for {shown}{more}; pass --resume to continue, "
                               "or set another study/run_id")
    return plan


def run_dependencies(runs: list[RunSpec]) -> dict[str, list[str]]:
    """run_id -> the run_ids it needs through run:<condition> (rundir.stages, the one definition)."""
    return dependencies(node_from_spec(r.run_id, r.model_dump(mode="json")) for r in runs)


def hold_dependents(planned: list[PlannedRun], deps: dict[str, list[str]]) -> list[PlannedRun]:
    """Runs that would be submitted while a run they need is held back are held too, `blocked by` that run."""
    stuck = {p.run_id: p.state.describe() for p in planned if p.action is Action.HOLD}
    out = []
    for p in planned:
        by = blocker(p.run_id, deps, stuck) if p.action in SUBMITTED else None
        out.append(PlannedRun(p.spec, p.state.waiting_for(by), Action.HOLD, p.job) if by else p)
    return out


def current_states(plan: Plan) -> dict[str, RunState]:
    """Each run's state as its folder says now, `blocked by` the run of an earlier stage that failed or is blocked
    (what an engine prints after the study ran)."""
    states = {p.run_id: run_state(p.spec.run_dir, p.spec.train.epochs) for p in plan.runs}
    # After the engine ran, a dependency that started and did not finish (failed, blocked, killed) blocks what
    # needs it, directly or through runs that never started.
    stuck = {r: s.describe() for r, s in states.items() if s.started and not s.finished}
    return {r: s.waiting_for(blocker(r, plan.deps, stuck)) if not s.started else s for r, s in states.items()}
