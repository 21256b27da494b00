"""Per-block training-stability statistics (`logging.layer_stats`): every N updates, for the attention and
the MLP of every transformer block, the gradient l2 norm, the weight l2 norm and the update-to-weight ratio
||W_after - W_before|| / ||W_before|| of that optimizer step, one row each, in the run's layer_stats.parquet.

MiniViT attributes weight sharing's instability to large, fluctuating per-layer gradient norms; these rows
make that visible per condition (analysis.layer_stats). A module used by several blocks (grouped,
multiplexed) is one parameter set with one gradient: it is recorded once, under the first block that uses
it, with `shared` true and `blocks` listing every block it serves. A module that shares only part of its
parameters (e.g. shared projections plus per-layer transforms) records the parameters it owns, flagged shared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from jobs.strategies.vit import blocks
from rundir.atomic import atomic_write_bytes
from rundir.names import LAYER_STATS_FILE

PARTS = ("attn", "mlp")

LAYER_STATS_SCHEMA = pa.schema([
    pa.field("study", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("condition", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("step", pa.int64()),           # global optimizer-update count after the step
    pa.field("epoch", pa.int64()),          # 1-based epoch the step belongs to
    pa.field("block", pa.int64()),          # first block using the module (0-based)
    pa.field("blocks", pa.string()),        # every block the module serves, e.g. "0,1"
    pa.field("part", pa.string()),          # "attn" or "mlp"
    pa.field("shared", pa.bool_()),         # parameters used by more than one block
    pa.field("grad_norm", pa.float64()),    # l2 norm of the (unscaled, all-reduced) gradient
    pa.field("weight_norm", pa.float64()),  # l2 norm of the weights before the step
    pa.field("update_ratio", pa.float64()),  # ||W_after - W_before|| / ||W_before||
])


@dataclass
class _Group:
    block: int
    part: str
    params: list[nn.Parameter]
    blocks: list[int] = field(default_factory=list)
    shared: bool = False


def parameter_groups(model: nn.Module) -> list[_Group]:
    """One group per distinct (attention or MLP) parameter set, in block order."""
    owner: dict[int, _Group] = {}
    groups: list[_Group] = []
    for i, block in enumerate(blocks(model)):
        for part in PARTS:
            module = getattr(block, part, None)
            if module is None:
                continue
            params = [p for p in module.parameters() if p.requires_grad]
            seen = {id(owner[id(p)]): owner[id(p)] for p in params if id(p) in owner}
            for group in seen.values():
                group.shared = True
                if i not in group.blocks:
                    group.blocks.append(i)
            new = [p for p in params if id(p) not in owner]
            if new:
                group = _Group(i, part, new, [i], shared=bool(seen))
                owner.update((id(p), group) for p in new)
                groups.append(group)
    return groups


def _group_norms(tensors: list[list[torch.Tensor]], device: torch.device) -> torch.Tensor:
    """l2 norm of each list of tensors, as one tensor (no host sync)."""
    flat = [t for ts in tensors for t in ts]
    if not flat:
        return torch.zeros(len(tensors), device=device)
    norms = torch.stack(torch._foreach_norm(flat)).double()
    out, k = [], 0
    for ts in tensors:
        out.append(torch.linalg.vector_norm(norms[k:k + len(ts)]) if ts else torch.zeros((), dtype=torch.float64,
                                                                                         device=device))
        k += len(ts)
    return torch.stack(out)


class LayerStats:
    """Rank 0 only. `before_step()` with the final gradients, `after_step()` once the optimizer has stepped."""

    def __init__(self, model: nn.Module, run_dir: Path | str, spec, start_step: int = 0):
        self.groups = parameter_groups(model)
        self.path = Path(run_dir) / LAYER_STATS_FILE
        self.static = {"study": spec.study, "run_id": spec.run_id, "condition": spec.condition_label,
                       "seed": spec.seed}
        self.rows: list[dict] = []
        self.start_step = start_step
        self._table: pa.Table | None = None
        self._pending: tuple | None = None

    @torch.no_grad()
    def before_step(self) -> None:
        if not self.groups:
            return
        device = self.groups[0].params[0].device
        grads = [[p.grad for p in g.params if p.grad is not None] for g in self.groups]
        snapshot = [[p.detach().clone() for p in g.params] for g in self.groups]
        self._pending = (_group_norms(grads, device), _group_norms(snapshot, device), snapshot)

    @torch.no_grad()
    def after_step(self, step: int, epoch: int) -> None:
        if self._pending is None:
            return
        grad_norms, weight_norms, snapshot = self._pending
        self._pending = None
        device = grad_norms.device
        deltas = [torch._foreach_sub([p.detach() for p in g.params], before) for g, before in zip(self.groups, snapshot)]
        delta_norms = _group_norms(deltas, device)
        ratio = delta_norms / weight_norms.clamp_min(1e-30)
        values = torch.stack([grad_norms, weight_norms, ratio]).cpu().tolist()  # one sync
        for k, g in enumerate(self.groups):
            self.rows.append({
                **self.static, "step": step, "epoch": epoch + 1, "block": g.block,
                "blocks": ",".join(map(str, g.blocks)), "part": g.part, "shared": g.shared,
                "grad_norm": values[0][k], "weight_norm": values[1][k], "update_ratio": values[2][k],
            })

    def flush(self) -> None:
        """Rewrite the file with every row so far (atomically). The first flush of a resumed run drops the
        rows its failed attempt wrote after the checkpoint it resumes from."""
        if self._table is None:
            old = pq.read_table(self.path, schema=LAYER_STATS_SCHEMA) if self.path.exists() else \
                LAYER_STATS_SCHEMA.empty_table()
            keep = [i for i, s in enumerate(old.column("step").to_pylist()) if s <= self.start_step]
            self._table = old.take(pa.array(keep, type=pa.int64()))
        elif not self.rows:
            return
        new = pa.Table.from_pylist(self.rows, schema=LAYER_STATS_SCHEMA)
        self._table = pa.concat_tables([self._table, new])
        self.rows = []
        sink = pa.BufferOutputStream()
        pq.write_table(self._table, sink)
        atomic_write_bytes(self.path, sink.getvalue().to_pybytes())
