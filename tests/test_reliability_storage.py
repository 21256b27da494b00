"""Reliability: damaged checkpoints and storage trouble, through the real training loop
on the shipped digits (tiny ViT, CPU).

5. The latest checkpoint truncated / bit-flipped / without its manifest -> the previous one is used with a
   warning and the recomputed epoch equals the undamaged run's; every checkpoint damaged -> a clear error
   and nothing deleted or moved.
6. The run directory's disk fills up, or turns read-only, mid-run -> the run stops with the OS error naming
   the file, and the last good checkpoint and metrics rows are intact (and a resume after the disk is
   freed finishes the run exactly). A small tmpfs is mounted when this process may (root); otherwise the
   same failures are injected by a failing write hook.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

import rundir as metrics
from jobs import checkpoint_files as ckpt
from jobs.train import Hooks
from rundir import CHECKPOINT_DIR, EVENTS_FILE
from tests.tiny import run_local, stable_rows, tiny_spec

# 5 batches of 256 per epoch, no EMA (one evaluation per epoch): about a few seconds an epoch on CPU.
RECIPE = (
    "study=rel", "model.kwargs={}", "model.drop_path_rate=0.1", "train.epochs=2", "train.batch_size=256",
    "train.grad_accum=1", "train.warmup_epochs=0", "train.ema=false", "checkpoint.keep_last=3",
)


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes (to prove nothing was deleted, moved or rewritten)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(demo_data, tmp_path_factory):
    """An undamaged 2-epoch run: checkpoints ckpt-000001 (epoch 1) and ckpt-000002 (epoch 2)."""
    spec = tiny_spec(demo_data, tmp_path_factory.mktemp("finished"), *RECIPE)
    run_local(spec)
    assert [p.name for p in ckpt.numbered(spec.run_dir / CHECKPOINT_DIR)] == ["ckpt-000002", "ckpt-000001"]
    return spec


def copy_run(finished, demo_data, out: Path):
    spec = tiny_spec(demo_data, out, *RECIPE)
    shutil.copytree(finished.run_dir, spec.run_dir)
    return spec


def _truncate(folder: Path) -> None:
    f = folder / "model.pt"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _bit_flip(folder: Path) -> None:
    f = folder / "train_state.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


def _no_manifest(folder: Path) -> None:
    (folder / ckpt.MANIFEST).unlink()


DAMAGE = {"truncate": _truncate, "bit_flip": _bit_flip, "no_manifest": _no_manifest}


# ---- 5. checkpoint damage ----------------------------------------------------------------------


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(finished, demo_data, tmp_path, damage):
    spec = copy_run(finished, demo_data, tmp_path)
    ckpts = spec.run_dir / CHECKPOINT_DIR
    latest = ckpts / "ckpt-000002"
    DAMAGE[damage](latest)
    damaged_files = tree(latest)

    with pytest.warns(RuntimeWarning, match="skipping corrupt checkpoint ckpt-000002"):
        run_local(spec)

    events = (spec.run_dir / EVENTS_FILE).read_text()
    assert "resume: from ckpt-000001: epoch 1 batch 0" in events
    # epoch 2 recomputed from epoch 1's checkpoint: bitwise the undamaged run's row, replaced (not appended)
    assert stable_rows(spec.run_dir) == stable_rows(finished.run_dir)
    assert [r["resumed_from"] for r in metrics.read_metrics(spec.run_dir).to_pylist()] == [None, 1]
    # the damaged checkpoint is kept aside for inspection, byte for byte, not deleted
    moved = list(ckpts.glob("corrupt-ckpt-000002-*"))
    assert len(moved) == 1 and tree(moved[0]) == damaged_files
    redone = ckpt.latest_valid(ckpts)  # epoch 2 checkpointed again, in the freed number
    assert redone.name == "ckpt-000002" and ckpt.read_manifest(redone)["epoch"] == 2
    assert metrics.read_status(spec.run_dir)["state"] == "finished"


def test_every_checkpoint_damaged_stops_with_a_clear_error_and_deletes_nothing(finished, demo_data, tmp_path):
    spec = copy_run(finished, demo_data, tmp_path)
    ckpts = spec.run_dir / CHECKPOINT_DIR
    _truncate(ckpts / "ckpt-000002")
    _no_manifest(ckpts / "ckpt-000001")
    before = tree(ckpts)
    rows_before = metrics.read_metrics(spec.run_dir).to_pylist()

    with pytest.warns(RuntimeWarning), pytest.raises(ckpt.CheckpointError) as info:
        run_local(spec)
    message = str(info.value)
    assert "\n" not in message
    assert f"all 2 checkpoints in {ckpts} are damaged" in message
    assert "ckpt-000002: " in message and "model.pt has" in message
    assert "ckpt-000001: " in message and "manifest.json is missing" in message
    assert "nothing was deleted" in message
    assert tree(ckpts) == before, "no checkpoint may be deleted, moved or rewritten"
    assert metrics.read_metrics(spec.run_dir).to_pylist() == rows_before
    status = metrics.read_status(spec.run_dir)
    assert status["state"] == "failed" and "are damaged" in status["error"]


# ---- 6. storage trouble --------------------------------------------------------------------------


class Disk:
    """A small filesystem for the run directory: a real tmpfs where mounting is allowed, else a plain
    folder whose writes are made to fail by a hook (the same OSError the kernel would raise)."""

    def __init__(self, path: Path, monkeypatch):
        self.path, self.monkeypatch = path, monkeypatch
        path.mkdir()
        self.mounted = os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)], capture_output=True).returncode == 0

    def fill(self, leave: int = 0) -> None:
        """Disk full: a filler file takes every free byte but `leave` (room for the small files, not
        for a checkpoint: without a mount, only writes under checkpoints/ fail then)."""
        if not self.mounted:
            return self._fail_writes(errno.ENOSPC, under=CHECKPOINT_DIR if leave else "")
        fd = os.open(self.path / f"filler-{uuid.uuid4().hex}", os.O_WRONLY | os.O_CREAT)
        try:
            for chunk in (1 << 20, 1 << 12, 1):
                try:
                    while os.write(fd, b"\0" * chunk):
                        pass
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
        finally:
            os.close(fd)
        return None

    def free(self) -> None:
        for filler in self.path.glob("filler-*"):
            filler.unlink()
        self.monkeypatch.undo()

    def read_only(self) -> None:
        if not self.mounted:
            return self._fail_writes(errno.EROFS)
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True, capture_output=True)
        return None

    def _fail_writes(self, code: int, under: str = "") -> None:
        import builtins

        real_open, root = builtins.open, str(self.path)

        def failing_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and str(file).startswith(root) and f"/{under}" in str(file):
                raise OSError(code, os.strerror(code), str(file))
            return real_open(file, mode, *args, **kwargs)

        self.monkeypatch.setattr(builtins, "open", failing_open)

    def close(self) -> None:
        self.monkeypatch.undo()
        if self.mounted:
            if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def disk(tmp_path, monkeypatch):
    d = Disk(tmp_path / "disk", monkeypatch)
    yield d
    d.close()


def _after_epoch_one(action):
    def hook(state):
        if state.row["epoch"] == 1:
            action()
    return hook


def _check_intact(spec, row1: list[dict], code: int, exc: OSError, failed_under: Path | None = None) -> None:
    ckpts = spec.run_dir / CHECKPOINT_DIR
    assert exc.errno == code, exc
    failed_under = failed_under or spec.run_dir
    assert exc.filename and str(exc.filename).startswith(str(failed_under)), \
        f"the error must name the file it failed on, got {exc!r}"
    latest = ckpt.latest_valid(ckpts)
    assert latest is not None and latest.name == "ckpt-000001" and ckpt.verify(latest) is None
    assert ckpt.read_manifest(latest)["epoch"] == 1
    assert stable_rows(spec.run_dir)[:1] == row1  # epoch 2's row may be written: a resume replaces it
    leftovers = [p.name for p in spec.run_dir.rglob("*") if p.name.startswith(".") and "tmp" in p.name]
    assert not leftovers, f"half-written temp files left behind: {leftovers}"


@pytest.mark.parametrize("leave", [0, 96 << 10], ids=["full", "no_room_for_a_checkpoint"])
def test_disk_full_stops_the_run_and_keeps_the_last_checkpoint_and_rows(finished, demo_data, disk, leave):
    spec = tiny_spec(demo_data, disk.path, *RECIPE)
    expected = stable_rows(finished.run_dir)
    with pytest.raises(OSError) as info:
        run_local(spec, Hooks(after_epoch=_after_epoch_one(lambda: disk.fill(leave))))
    _check_intact(spec, expected[:1], errno.ENOSPC, info.value,
                  failed_under=spec.run_dir / CHECKPOINT_DIR if leave else None)
    if leave:
        assert metrics.read_status(spec.run_dir)["state"] == "failed"
        assert "No space left on device" in metrics.read_status(spec.run_dir)["error"]
        return

    disk.free()
    run_local(spec)  # space again: resumes from the intact checkpoint and finishes exactly
    assert stable_rows(spec.run_dir) == expected
    assert metrics.read_status(spec.run_dir)["state"] == "finished"


def test_read_only_run_directory_stops_the_run_and_keeps_the_last_checkpoint_and_rows(finished, demo_data, disk):
    spec = tiny_spec(demo_data, disk.path, *RECIPE)
    with pytest.raises(OSError) as info:
        run_local(spec, Hooks(after_epoch=_after_epoch_one(disk.read_only)))
    _check_intact(spec, stable_rows(finished.run_dir)[:1], errno.EROFS, info.value)
