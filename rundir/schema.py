"""The one definition of a run's per-epoch metrics row (metrics.parquet).

`jobs` writes rows with this schema; `analysis` and the orchestrator read them. Only pyarrow, so the
analysis of a study copied off the cluster needs nothing else.
"""
from __future__ import annotations

import pyarrow as pa

METRICS_SCHEMA = pa.schema(
    [
        pa.field("study", pa.string()),            # study name (the folder under runs/)
        pa.field("run_id", pa.string()),           # run folder name, unique inside the study
        pa.field("condition", pa.string()),        # condition label, e.g. "grouped" or "shallow[keep_ratio=0.25]"
        pa.field("strategy", pa.string()),         # strategy names joined by "+", e.g. "grouped+shallow"
        pa.field("strategy_params", pa.string()),  # JSON list of {"name", "params"} as resolved
        pa.field("ablation", pa.string()),         # JSON object of swept grid values for this run ("{}" if none)
        pa.field("model", pa.string()),            # timm model name
        pa.field("seed", pa.int64()),
        pa.field("epoch", pa.int64()),             # 1-based: the number of epochs completed when the row was written
        pa.field("epochs_total", pa.int64()),      # planned epochs of the run (to tell complete from incomplete)
        pa.field("lr", pa.float64()),              # learning rate at the end of the epoch
        pa.field("train_loss", pa.float64()),
        pa.field("top1", pa.float64()),            # percent, 0..100
        pa.field("top5", pa.float64()),
        pa.field("ema_top1", pa.float64()),        # null when EMA is off
        pa.field("ema_top5", pa.float64()),
        pa.field("params", pa.int64()),            # unique parameters (shared counted once)
        pa.field("mlp_params", pa.int64()),
        pa.field("unique_mlps", pa.int64()),
        pa.field("mlp_hidden", pa.int64()),        # MLP hidden width of the first block
        pa.field("gflops", pa.float64()),          # the paper's "GFLOPs": 1e9 multiply-accumulates per image of every
                                                   # layer except the attention matmuls (16.9 baseline / 11.3 shallow
                                                   # for ViT-B/16); jobs.accounting.ModelStats.gflops
        pa.field("gmacs", pa.float64()),           # 1e9 MACs per image of all matmuls incl. attention (timm's 17.58
                                                   # for ViT-B/16); jobs.accounting.ModelStats.gmacs
        pa.field("train_img_s", pa.float64()),     # training images/s over the epoch, all ranks together
        pa.field("epoch_s", pa.float64()),         # wall seconds of the epoch (train + eval)
        pa.field("wall_time", pa.float64()),       # unix time when the row was written
        pa.field("host", pa.string()),
        pa.field("resumed_from", pa.int64()),      # epoch this process resumed from; null if it started fresh
    ]
)

METRICS_COLUMNS = tuple(METRICS_SCHEMA.names)


def best_metric_column(best_metric: str, ema: bool) -> str:
    """The metrics column that `checkpoint.best_metric` ranks epochs by (auto: ema_top1 when EMA is on), i.e. the
    column whose peak the run's best export holds; the checkpointer and the analysis both read this rule."""
    if best_metric == "auto":
        return "ema_top1" if ema else "top1"
    return best_metric
