"""Stages on Ray Tune: a Searcher that turns a run into a trial only once every run it needs has finished.

Tune asks `suggest` whenever it has room for a trial; answering None means "nothing ready yet" (Tune asks again
later), so a later-stage run never holds resources while it waits. A run whose dependency ended without finishing
(failed after its retries, or blocked) is never suggested: it stays `blocked by` that run. FINISHED once every
run was either suggested or is blocked, so the experiment ends when the last trial does, and at once when the
driver was asked to stop (orchestrator.ray_stop).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from ray.tune.search import Searcher

from rundir import blocker


class StageSearcher(Searcher):
    """Suggests `{"run_id": r}` for each run of `order`, each once its `deps` are all in `finished`."""

    def __init__(self, order: Iterable[str], deps: Mapping[str, list[str]], finished: Iterable[str],
                 is_finished: Callable[[str], bool], stopping: Callable[[], bool] | None = None):
        super().__init__()
        self._pending = list(order)
        self._deps = {k: list(v) for k, v in deps.items()}
        self._finished = set(finished)
        self._is_finished = is_finished  # the run folder's own word once its trial ends (rundir run state)
        self._stopping = stopping or (lambda: False)  # the driver was asked to stop: no trial starts any more
        self._trials: dict[str, str] = {}
        self.stuck: dict[str, str] = {}    # run_id -> why it ended without finishing
        self.blocked: dict[str, str] = {}  # run_id -> the run it waits for in vain

    def suggest(self, trial_id: str):
        if self._stopping():
            return Searcher.FINISHED
        for run in list(self._pending):
            by = blocker(run, self._deps, self.stuck)
            if by is not None:
                self._pending.remove(run)
                self.blocked[run] = by
                self.stuck[run] = f"blocked by {by}"
                continue
            if all(d in self._finished for d in self._deps.get(run, ())):
                self._pending.remove(run)
                self._trials[trial_id] = run
                return {"run_id": run}
        return Searcher.FINISHED if not self._pending else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        run = self._trials.pop(trial_id, None)
        if run is None:
            return
        if not error and self._is_finished(run):
            self._finished.add(run)
        else:
            self.stuck[run] = "failed" if error else "ended unfinished"
