"""Numbered, atomic, checksummed checkpoint folders.

Layout: `<run_dir>/checkpoints/ckpt-000007/{manifest.json, <file>.pt ...}` plus `best/` (a plain
state dict for `timm.create_model` + strategies). A checkpoint is written into a hidden temp folder,
every file fsynced, its sha256 recorded in the manifest (written last), then the folder is renamed
into place, so a reader sees either a complete checkpoint or none. A latest checkpoint whose files do
not match their checksums (a torn copy, a full disk, a truncated transfer) is skipped with a warning
and the previous one is used.

Model state is stored deduplicated: tensors shared between modules (GroupedMLP's shared MLPs) are
written once under their first key, the other keys recorded as aliases and re-tied on load.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rundir.names import BEST_DIR, BEST_WEIGHTS

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_NAME = re.compile(r"^ckpt-(\d{6,})$")
_CHUNK = 1 << 22


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which file and why."""


def checkpoint_name(number: int) -> str:
    return f"ckpt-{number:06d}"


def checkpoint_number(path: Path) -> int | None:
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _WriteErrors:
    """A file wrapper that remembers the OSError of a failed write: torch.save turns it into a bare
    `RuntimeError: unexpected pos ...`, which says nothing about a full or read-only disk."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def _write_fsynced(path: Path, obj: Any) -> None:
    try:
        with open(path, "wb") as f:
            if isinstance(obj, bytes):
                f.write(obj)
            else:
                sink = _WriteErrors(f)
                try:
                    torch.save(obj, sink)
                except RuntimeError:
                    if sink.error is None:
                        raise
                    raise sink.error from None
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        if exc.filename is None:  # write()/fsync() errors (disk full) name no file: say which one
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def write_atomic_dir(target: Path, files: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write `files` (name -> object for torch.save, or bytes) and a checksummed manifest as the
    folder `target`, atomically. An existing `target` (e.g. a corrupt one being redone) is replaced."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        entries = {}
        for name, obj in files.items():
            _write_fsynced(tmp / name, obj)
            entries[name] = {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        manifest = {"format": 1, "created": time.time(), **meta, "files": entries}
        _write_fsynced(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        _fsync_dir(tmp)
        if target.exists():
            # rename() cannot replace a non-empty folder: move the old one aside first.
            trash = target.parent / f".trash-{target.name}-{uuid.uuid4().hex[:8]}"
            os.rename(target, trash)
            os.rename(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def save(checkpoints_dir: Path, number: int, files: dict[str, Any], meta: dict[str, Any], keep_last: int) -> Path:
    """Write checkpoint `number`, then prune so only the newest `keep_last` numbered ones remain."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    path = write_atomic_dir(Path(checkpoints_dir) / checkpoint_name(number), files, {"number": number, **meta})
    prune(checkpoints_dir, keep_last)
    return path


def numbered(checkpoints_dir: Path) -> list[Path]:
    """Numbered checkpoint folders, newest first (temp and best folders excluded)."""
    d = Path(checkpoints_dir)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and checkpoint_number(p) is not None]
    return sorted(found, key=lambda p: checkpoint_number(p), reverse=True)


def prune(checkpoints_dir: Path, keep_last: int) -> None:
    for old in numbered(checkpoints_dir)[keep_last:]:
        shutil.rmtree(old, ignore_errors=True)
    # Temp folders of writers that died mid-write; ours are renamed before prune runs.
    for stale in Path(checkpoints_dir).glob(".tmp-*"):
        if f"-{os.getpid()}-" not in stale.name:
            shutil.rmtree(stale, ignore_errors=True)


def verify(path: Path) -> str | None:
    """None when the checkpoint's files match its manifest, else the one-line reason."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        entries = manifest["files"]
    except FileNotFoundError:
        return f"{path / MANIFEST} is missing"
    except (ValueError, KeyError, TypeError) as exc:
        return f"{path / MANIFEST} is unreadable ({exc})"
    for name, entry in entries.items():
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != entry["bytes"]:
            return f"{file} has {file.stat().st_size} bytes, manifest says {entry['bytes']}"
        if _sha256(file) != entry["sha256"]:
            return f"{file} does not match its sha256 in the manifest"
    return None


def scan(checkpoints_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(newest valid checkpoint or None, [(newer corrupt checkpoint, reason), ...])."""
    skipped = []
    for path in numbered(checkpoints_dir):
        reason = verify(path)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped


def latest_valid(checkpoints_dir: Path) -> Path | None:
    """The newest checkpoint whose checksums verify; corrupt newer ones are skipped with a warning."""
    path, skipped = scan(checkpoints_dir)
    for bad, reason in skipped:
        msg = f"skipping corrupt checkpoint {bad.name}: {reason}; falling back to an earlier one"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return path


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / MANIFEST).read_text())


def load_file(path: Path, name: str) -> Any:
    # weights_only=False: the file also holds RNG states (numpy arrays) and scheduler state; it is
    # our own run's file and its sha256 was just verified against the manifest.
    return torch.load(Path(path) / name, map_location="cpu", weights_only=False)


# ---- shared-tensor aware model state -------------------------------------------------------


def _tensor_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def pack_state(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """{"tensors": unique tensors, "aliases": {key: key it shares storage with}}."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            tensors[key] = value
            continue
        ident = _tensor_key(value)
        if ident in first:
            aliases[key] = first[ident]
        else:
            first[ident] = key
            tensors[key] = value.detach()
    return {"tensors": tensors, "aliases": aliases}


def unpack_state(packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    state = dict(packed["tensors"])
    for alias, canonical in packed["aliases"].items():
        state[alias] = state[canonical]
    return state


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    module_path, _, attr = key.rpartition(".")
    return (model.get_submodule(module_path) if module_path else model), attr


def retie(model: nn.Module, aliases: dict[str, str]) -> int:
    """Make every alias parameter the same object as its canonical one; returns how many were re-tied.
    A no-op for a model built with the same strategies (already tied); needed for one that was not."""
    params = dict(model.named_parameters(remove_duplicate=False))
    tied = 0
    for alias, canonical in aliases.items():
        if alias in params and canonical in params and params[alias] is not params[canonical]:
            module, attr = _owner(model, alias)
            setattr(module, attr, params[canonical])
            tied += 1
    return tied


def load_model_state(model: nn.Module, packed: dict[str, Any], strict: bool = True) -> None:
    """Load a `pack_state` dict, tying shared tensors first so they are one parameter again."""
    retie(model, packed["aliases"])
    model.load_state_dict(unpack_state(packed), strict=strict)


# ---- best export ----------------------------------------------------------------------------


def export_best(checkpoints_dir: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """`best/model.pt` = a plain `state_dict` (torch.save keeps shared storages once), loadable with
    `build_model(model, strategies, ...).load_state_dict(torch.load(path))`."""
    return write_atomic_dir(
        Path(checkpoints_dir) / BEST_DIR,
        {BEST_WEIGHTS: to_cpu(state)},
        meta,
    )


def to_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copy of a state dict that keeps shared tensors shared (a plain .cpu() per key would not)."""
    packed = pack_state(state)
    packed["tensors"] = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in packed["tensors"].items()}
    return unpack_state(packed)
