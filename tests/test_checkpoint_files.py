"""jobs.checkpoint_files and the rundir files without training: atomic folders, checksums, pruning, fallback,
shared-tensor storage, metrics rows without duplicates."""
from __future__ import annotations

import json
import math

import pytest
import torch

import rundir as metrics
from jobs import checkpoint_files as ckpt
from jobs.models import build_model
from rundir import METRICS_COLUMNS

TINY = dict(num_classes=10, img_size=32, patch_size=8, depth=4, embed_dim=32, num_heads=2)


def _save(d, n, value=0.0, keep_last=3):
    return ckpt.save(d, n, {"state.pt": {"x": torch.full((4,), value)}}, {"epoch": n}, keep_last=keep_last)


def test_save_is_atomic_numbered_and_pruned(tmp_path):
    for n in range(1, 6):
        _save(tmp_path, n, float(n), keep_last=3)
    assert [p.name for p in ckpt.numbered(tmp_path)] == ["ckpt-000005", "ckpt-000004", "ckpt-000003"]
    assert not list(tmp_path.glob(".tmp-*")), "no temp folder may survive a finished save"
    latest = ckpt.latest_valid(tmp_path)
    assert latest.name == "ckpt-000005"
    manifest = ckpt.read_manifest(latest)
    assert manifest["number"] == 5 and manifest["epoch"] == 5
    assert len(manifest["files"]["state.pt"]["sha256"]) == 64
    assert torch.equal(ckpt.load_file(latest, "state.pt")["x"], torch.full((4,), 5.0))


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "no_manifest", "missing_file"])
def test_corrupt_latest_falls_back_with_warning(tmp_path, damage):
    _save(tmp_path, 1, 1.0)
    bad = _save(tmp_path, 2, 2.0)
    target = bad / "state.pt"
    if damage == "flip_byte":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:10])
    elif damage == "no_manifest":
        (bad / ckpt.MANIFEST).unlink()
    else:
        target.unlink()
    with pytest.warns(RuntimeWarning, match="ckpt-000002"):
        chosen = ckpt.latest_valid(tmp_path)
    assert chosen.name == "ckpt-000001"
    assert ckpt.verify(bad) is not None


def test_no_valid_checkpoint_gives_none(tmp_path):
    assert ckpt.latest_valid(tmp_path / "absent") is None
    bad = _save(tmp_path, 1)
    (bad / "state.pt").write_bytes(b"")
    with pytest.warns(RuntimeWarning):
        assert ckpt.latest_valid(tmp_path) is None


def test_resave_replaces_a_corrupt_folder_of_the_same_number(tmp_path):
    bad = _save(tmp_path, 3, 1.0)
    (bad / "state.pt").write_bytes(b"garbage")
    _save(tmp_path, 3, 7.0)
    assert ckpt.verify(bad) is None
    assert torch.equal(ckpt.load_file(bad, "state.pt")["x"], torch.full((4,), 7.0))


def test_grouped_state_stores_shared_mlps_once_and_reties(tmp_path):
    grouped = build_model("vit_tiny_patch16_224", [{"name": "grouped", "params": {"group_size": 2}}], **TINY)
    packed = ckpt.pack_state(grouped.state_dict())
    assert packed["aliases"], "blocks 1 and 3 share their MLP with blocks 0 and 2"
    assert packed["aliases"]["blocks.1.mlp.fc1.weight"] == "blocks.0.mlp.fc1.weight"
    assert not set(packed["aliases"]) & set(packed["tensors"]), "an aliased tensor must not be stored again"
    path = ckpt.save(tmp_path, 1, {"model.pt": packed}, {}, keep_last=2)

    # A plain (untied) model: loading re-ties the shared MLPs into one parameter each.
    plain = build_model("vit_tiny_patch16_224", [], **TINY)
    assert plain.blocks[1].mlp.fc1.weight is not plain.blocks[0].mlp.fc1.weight
    ckpt.load_model_state(plain, ckpt.load_file(path, "model.pt"))
    assert torch.equal(plain.blocks[0].mlp.fc1.weight, grouped.blocks[0].mlp.fc1.weight)
    with torch.no_grad():
        plain.blocks[0].mlp.fc1.weight.add_(1.0)
    assert torch.equal(plain.blocks[1].mlp.fc1.weight, plain.blocks[0].mlp.fc1.weight)
    assert not torch.equal(plain.blocks[2].mlp.fc1.weight, plain.blocks[0].mlp.fc1.weight)
    unique = {id(p) for p in plain.parameters()}
    assert len(unique) == len(list(grouped.parameters()))


def _row(epoch: int, loss: float) -> dict:
    row = {c: None for c in METRICS_COLUMNS}
    row.update(study="s", run_id="r", condition="c", strategy="baseline", strategy_params="[]", ablation="{}",
               model="m", seed=0, epoch=epoch, epochs_total=5, lr=0.1, train_loss=loss, top1=1.0, top5=2.0,
               params=1, mlp_params=1, unique_mlps=1, mlp_hidden=1, gflops=0.1, gmacs=0.1, train_img_s=1.0,
               epoch_s=1.0, wall_time=0.0, host="h")
    return row


def test_metrics_rows_have_no_duplicate_epochs_after_a_resume(tmp_path):
    for e in (1, 2, 3):
        metrics.append_row(tmp_path, _row(e, float(e)))
    # A resume from epoch 1 drops rows 2 and 3; rewriting epoch 2 then replaces, never duplicates.
    assert metrics.truncate_after(tmp_path, 1) == 2
    metrics.append_row(tmp_path, _row(2, 20.0))
    metrics.append_row(tmp_path, _row(2, 21.0))
    table = metrics.read_metrics(tmp_path)
    assert table.column("epoch").to_pylist() == [1, 2]
    assert table.column("train_loss").to_pylist() == [1.0, 21.0]
    assert table.schema.names == list(METRICS_COLUMNS)
    with pytest.raises(ValueError, match="missing"):
        metrics.append_row(tmp_path, {k: v for k, v in _row(3, 1.0).items() if k != "top1"})


def test_status_and_events(tmp_path):
    metrics.write_status(tmp_path, "failed", 2, 5, "boom")
    status = metrics.read_status(tmp_path)
    assert status["state"] == "failed" and status["epoch"] == 2 and status["error"] == "boom"
    assert math.isfinite(status["updated"])
    log = metrics.EventLog(tmp_path)
    log("epoch", "one\ntwo")
    assert json.dumps(log.path.read_text()).count("\\n") == 1
