"""Live metrics of a run, written by rank 0 from inside the training loop, whatever engine runs it.

Every `logging.every_steps` optimizer updates: train loss (mean over those updates), lr, gradient norm,
images/s and the share of the time spent waiting for the data loader; every epoch: the metrics row. They
go to the sinks of the `logging:` block (TensorBoard by default, W&B and MLflow on request) and, as one
line, to the Python logger `jobs.progress` (a tqdm bar too when `python -m jobs train` runs in a terminal).

The x axis of every curve is the run's global optimizer-update count. A resumed run reopens its sinks
at the update it resumes from: TensorBoard gets `purge_step` (steps logged after the checkpoint, by the
attempt that died, are dropped by every TensorBoard reader), W&B continues the run with our id, MLflow
the run tagged with our run id.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobs.layer_stats import LayerStats
from rundir.names import MLFLOW_DIR

progress_log = logging.getLogger("jobs.progress")

RUN_TAG = "vitreduce.run_id"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class WandbConfig(_Strict):
    project: str = Field(description="W&B project the runs are logged to")
    entity: str | None = Field(None, description="W&B team or user; None = the logged-in user's default")
    mode: Literal["online", "offline"] = Field(
        "online", description="offline writes to run_dir/wandb only (upload later with `wandb sync`)")


class MlflowConfig(_Strict):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; None = a file store in the study directory (<study>/mlruns)")
    experiment: str | None = Field(None, description="MLflow experiment name; None = the study name")


class LoggingConfig(_Strict):
    every_steps: int = Field(10, ge=1, description="log train scalars (and layer_stats) every N optimizer updates")
    tensorboard: bool = Field(True, description="TensorBoard event files in the run directory")
    console: bool = Field(True, description="a step line through Python logging (`jobs.progress`) every N updates")
    progress_bar: bool | None = Field(
        None, description="tqdm bar on rank 0; null = only when stdout is a terminal")
    layer_stats: bool = Field(
        False, description="per block: attention/MLP gradient l2 norm and update-to-weight ratio -> layer_stats.parquet")
    wandb: WandbConfig | None = Field(None, description="also log to Weights & Biases (extra: pip install -e .[wandb])")
    mlflow: MlflowConfig | None = Field(None, description="also log to MLflow (extra: pip install -e .[mlflow])")

    @model_validator(mode="after")
    def _extras_installed(self) -> "LoggingConfig":
        for name, module, extra in (("wandb", "wandb", "wandb"), ("mlflow", "mlflow", "mlflow")):
            if getattr(self, name) is not None and importlib.util.find_spec(module) is None:
                raise ValueError(f"logging.{name} is set but the {module} package is not installed; "
                                 f"pip install -e '.[{extra}]' or remove logging.{name}")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("logging.tensorboard is on but the tensorboard package is not installed; "
                             "pip install tensorboard or set logging.tensorboard=false")
        return self


# ---- sinks: where the scalars go --------------------------------------------------------------------


class _TensorBoard:
    def __init__(self, spec, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only where a run logs

        # Events straight into the run directory: `tensorboard --logdir <study>` names each curve by run_id.
        # purge_step: a resumed run drops what the failed attempt logged after its checkpoint.
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_step + 1 if start_step else None,
                                    flush_secs=30)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


def wandb_run_id(spec) -> str:
    """Ours, so a resumed or requeued run continues the same W&B run (unique across the studies of a project)."""
    return f"{spec.study}.{spec.run_id}"


class _Wandb:
    def __init__(self, spec, run_dir: Path, start_step: int):
        import wandb

        cfg = spec.logging.wandb
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, mode=cfg.mode, id=wandb_run_id(spec), resume="allow",
            name=spec.run_id, group=spec.condition_label, dir=str(run_dir), config=spec.model_dump(mode="json"),
            settings=wandb.Settings(silent=True, console="off"),
        )

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def mlflow_tracking_uri(spec) -> str:
    cfg = spec.logging.mlflow
    if cfg.tracking_uri:
        return cfg.tracking_uri
    return (Path(spec.run_dir).parent / MLFLOW_DIR).resolve().as_uri()


class _Mlflow:
    def __init__(self, spec, run_dir: Path, start_step: int):
        uri = mlflow_tracking_uri(spec)
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked; a folder in the study directory is what lets a
            # study copied off the cluster carry its MLflow runs (no database server on the nodes).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        self.client = MlflowClient(uri)
        name = spec.logging.mlflow.experiment or spec.study
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        runs = self.client.search_runs([experiment], filter_string=f"tags.`{RUN_TAG}` = '{spec.run_id}'")
        self.logged_up_to = -1
        if runs:
            self.run_id = runs[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            # MLflow cannot delete points: steps the failed attempt logged after its checkpoint are kept
            # and not logged again, so no step appears twice.
            history = self.client.get_metric_history(self.run_id, "train.loss")
            self.logged_up_to = max([m.step for m in history], default=-1)
        else:
            tags = {RUN_TAG: spec.run_id, "condition": spec.condition_label, "seed": str(spec.seed)}
            self.run_id = self.client.create_run(experiment, run_name=spec.run_id, tags=tags).info.run_id

    def scalars(self, step: int, values: dict[str, float]) -> None:
        stamp = int(time.time() * 1000)
        metrics = [self._metric(k.replace("/", "."), float(v), stamp, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


SINKS: dict[str, Callable[[Any], bool]] = {
    "tensorboard": lambda lc: lc.tensorboard,
    "wandb": lambda lc: lc.wandb is not None,
    "mlflow": lambda lc: lc.mlflow is not None,
}
SINK_TYPES = {"tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _Mlflow}

# Columns of the epoch row that become curves (the rest are constants of the run or bookkeeping).
EPOCH_SCALARS = ("train_loss", "top1", "top5", "ema_top1", "ema_top5", "lr", "train_img_s", "epoch_s")


def _progress_bar_wanted(setting: bool | None) -> bool:
    return sys.stdout.isatty() if setting is None else setting


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class RunLogger:
    """One per process; does nothing on ranks other than 0 (gradients are all-reduced, rank 0's are global)."""

    def __init__(self, spec, run_dir: Path | str, *, rank: int, world_size: int, start_step: int,
                 steps_per_epoch: int, log_event: Callable[[str, str], None] | None = None):
        self.spec, self.cfg = spec, spec.logging
        self.run_dir = Path(run_dir)
        self.active = rank == 0
        self.world_size = world_size
        self.every = self.cfg.every_steps
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * spec.train.epochs
        self.start_step = start_step
        self.sinks: list[Any] = []
        self._sinks_open = False
        self._log_event = log_event
        self.bar = None
        self.layer_stats: LayerStats | None = None
        self._reset_window(time.perf_counter())
        self._reset_loss()
        self._t_start = self._t_window
        if not self.active:
            return
        if _progress_bar_wanted(self.cfg.progress_bar):
            from tqdm import tqdm

            self.bar = tqdm(total=self.total_steps, initial=start_step, unit="upd", dynamic_ncols=True,
                            file=sys.stdout, desc=spec.run_id)

    def _reset_window(self, now: float) -> None:
        """Throughput and data-wait window."""
        self._t_window = now
        self._wait = 0.0
        self._images = 0

    def _reset_loss(self) -> None:
        """Loss window: the updates since the last logged step (epoch ends do not cut it)."""
        self._loss_sum: Any = 0.0
        self._loss_n = 0
        self._grad_norm = float("nan")  # stays NaN for a skipped (non-finite) update

    # ---- called by the loop ----------------------------------------------------------------------

    def attach(self, model) -> None:
        """The model whose per-block statistics `layer_stats` records (after strategies, before DDP)."""
        if self.active and self.cfg.layer_stats:
            self.layer_stats = LayerStats(model, self.run_dir, self.spec, start_step=self.start_step)

    def timed(self, batches: Iterable) -> Iterator:
        """The loader's batches, with the time spent waiting for each one counted as data wait."""
        it = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self._wait += time.perf_counter() - t0
            yield item

    def micro_batch(self, loss, images: int) -> None:
        """One forward/backward: its (detached) mean loss and images. No device sync."""
        if self.active:
            self._loss_sum = self._loss_sum + loss.detach() * images
            self._loss_n += images
            self._images += images

    def logs_at(self, step: int) -> bool:
        return self.active and step % self.every == 0

    def before_step(self, step: int, model) -> None:
        """Gradients final and unscaled, optimizer step `step` (1-based) not yet taken."""
        if not self.logs_at(step):
            return
        import torch

        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self._grad_norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))) if grads else 0.0
        if self.layer_stats is not None:
            self.layer_stats.before_step()

    def after_step(self, step: int, epoch: int, lr: float) -> None:
        """Optimizer update `step` done (1-based global count); `epoch` is 0-based."""
        if not self.active:
            return
        if self.bar is not None:
            self.bar.update(1)
        if not self.logs_at(step):
            return
        if self.layer_stats is not None:
            self.layer_stats.after_step(step, epoch)
        now = time.perf_counter()
        elapsed = max(now - self._t_window, 1e-9)
        loss = float(self._loss_sum) / self._loss_n if self._loss_n else float("nan")
        values = {
            "train/loss": loss, "train/lr": lr, "train/grad_norm": self._grad_norm,
            "train/img_s": self._images * self.world_size / elapsed, "train/data_wait": min(self._wait / elapsed, 1.0),
        }
        self._emit(step, values)
        done = step - self.start_step
        eta = (now - self._t_start) / done * (self.total_steps - step) if done > 0 else float("nan")
        if self.cfg.console:
            in_epoch = step - epoch * self.steps_per_epoch
            progress_log.info(
                "epoch %d/%d step %d/%d loss %.4f lr %.3g %.0f img/s data wait %.0f%% ETA %s",
                epoch + 1, self.spec.train.epochs, in_epoch, self.steps_per_epoch, loss, lr,
                values["train/img_s"], 100 * values["train/data_wait"], _format_eta(eta))
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{values['train/img_s']:.0f}", refresh=False)
        self._reset_window(time.perf_counter())
        self._reset_loss()

    def epoch_end(self, step: int, row: dict) -> None:
        """The epoch's metrics row, at the global update count the epoch ended on."""
        if not self.active:
            return
        values = {f"epoch/{k}": float(row[k]) for k in EPOCH_SCALARS if row.get(k) is not None}
        self._emit(step, values)
        if self.layer_stats is not None:
            self.layer_stats.flush()
        for sink in self.sinks:
            flush = getattr(getattr(sink, "writer", None), "flush", None)
            if flush:
                flush()
        # Evaluation time is not train time: the next window starts now.
        self._reset_window(time.perf_counter())

    def close(self) -> None:
        if not self.active:
            return
        if self.layer_stats is not None:
            self.layer_stats.flush()
        if self.bar is not None:
            self.bar.close()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                progress_log.warning("closing %s: %s", type(sink).__name__, exc)
        self.sinks = []

    def _open_sinks(self) -> None:
        """On the first value: a resumed run that has nothing left to train leaves its folder as it was."""
        self._sinks_open = True
        for name, wanted in SINKS.items():
            if wanted(self.cfg):
                try:
                    self.sinks.append(SINK_TYPES[name](self.spec, self.run_dir, self.start_step))
                except Exception as exc:  # a tracking server down must not stop a 300-epoch run
                    text = f"{name} logging disabled: {type(exc).__name__}: {' '.join(str(exc).split())}"
                    progress_log.warning(text)
                    if self._log_event:
                        self._log_event("warning", text)

    def _emit(self, step: int, values: dict[str, float]) -> None:
        if not self._sinks_open:
            self._open_sinks()
        for sink in self.sinks:
            if getattr(sink, "logged_up_to", -1) >= step:
                continue
            try:
                sink.scalars(step, values)
            except Exception as exc:
                progress_log.warning("%s: %s", type(sink).__name__, exc)
