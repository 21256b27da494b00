"""Training runs: models and strategies, the training loop, checkpoints, export.

`jobs.load(OUT_DIR)` rebuilds an exported model (python -m jobs export) with its shared weights tied.
"""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Resolved on first use: `import jobs` (every subcommand, every worker) must not pay for torch/timm.
    if name == "load":
        from jobs.export import load

        return load
    raise AttributeError(f"module 'jobs' has no attribute {name!r}")
