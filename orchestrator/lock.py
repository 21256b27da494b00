"""The study lock: one driver (`run`, `sweep` or `slurm`) works on a study directory at a time.

`<study dir>/.study.lock` holds the owner's pid, host and process start time. A lock left by a dead process on
this host is taken over (exactly one of several racing drivers wins); one held from another host is refused,
since its owner's liveness cannot be checked from here.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from rundir import LOCK_FILE


class StudyLocked(RuntimeError):
    """Another live process holds the study directory."""


def _proc_start(pid: int) -> str | None:
    """Kernel start time of a process (guards against a recycled pid), None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"


def _owner() -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": _proc_start(pid), "since": time.time(),
            "cmd": " ".join(sys.argv)[:300]}


def _is_stale(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return False  # cannot see other hosts' processes: only the user can declare it stale
    start = _proc_start(int(owner.get("pid", -1)))
    return start is None or (owner.get("start") not in (None, "?") and start not in ("?", owner.get("start")))


def _create_with(path: Path, owner: dict) -> bool:
    """Create `path` holding `owner`, atomically (a hard link of a complete temp file, never an empty
    lock that others must wait on); False when it exists. Link is atomic on NFS too."""
    tmp = path.with_name(f"{path.name}.new-{owner['pid']}-{os.urandom(4).hex()}")
    with open(tmp, "w") as f:
        json.dump(owner, f)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _claim_stale(path: Path, stale_text: str) -> bool:
    """Remove the stale lock whose content is `stale_text`, if this driver is the one to do it.

    Drivers that judged the same lock stale race to create a claim file named after its content; only
    the one that creates it may remove the lock, and only while the lock still holds that content. No
    other driver can remove the lock meanwhile (removing needs the claim), so the lock path is never
    vacant except between this removal and the next create, where link() lets exactly one driver in."""
    digest = hashlib.sha256(stale_text.encode()).hexdigest()[:16]
    claim = path.with_name(f"{path.name}.takeover-{digest}")
    if not _create_with(claim, _owner()):
        return False  # another driver is taking this stale lock over
    try:
        try:
            if path.read_text() != stale_text:
                return False  # already taken over and replaced
        except FileNotFoundError:
            return False
        path.unlink()
        return True
    finally:
        claim.unlink(missing_ok=True)


@contextlib.contextmanager
def study_lock(study_dir: str | Path) -> Iterator[Path]:
    """Hold `<study_dir>/.study.lock` (owner pid/host) for the duration; a second holder is refused.

    A lock left by a dead process on this host is taken over with a warning. One held from another
    host is refused with a message naming the file, since its owner's liveness cannot be checked."""
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / LOCK_FILE
    me = _owner()
    for _ in range(100):
        if _create_with(path, me):
            break
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue  # released (or taken over) meanwhile: try again
        except OSError:
            text = ""
        try:
            owner = json.loads(text or "{}")
        except json.JSONDecodeError:
            owner = {}
        if owner and not _is_stale(owner):
            raise StudyLocked(
                f"study {study_dir} is in use by pid {owner.get('pid')} on {owner.get('host')} "
                f"(since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner.get('since', 0)))}); "
                f"wait for it, or delete {path} if that process is gone") from None
        with contextlib.suppress(FileNotFoundError):
            if not owner and time.time() - path.stat().st_mtime < 5:
                time.sleep(0.2)  # an old-style writer between create and write
                continue
        if _claim_stale(path, text):
            warnings.warn(f"taking over stale lock {path} of dead pid {owner.get('pid')} on {owner.get('host')}", stacklevel=3)
        else:
            time.sleep(0.05)  # another driver is mid-takeover: look again once it has replaced the lock
    else:
        raise StudyLocked(f"could not take the lock {path}; if no other process uses the study, delete it "
                          f"and any {path.name}.takeover-* file beside it")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, json.JSONDecodeError):
            if json.loads(path.read_text()).get("pid") == me["pid"]:
                path.unlink()
