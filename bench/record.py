"""Run one benchmark command and append what it measured to BENCHMARKS.md's log.

    python bench/record.py -- python bench/convert_bench.py --images 1000
    python bench/record.py --figures-file build/bench/inference.json -- python -m jobs bench --json build/bench/inference.json

The command runs unchanged (its output passes through). Its figures are the last JSON object it
printed on stdout (or, with --figures-file, the JSON file it wrote during this run): the object's
"figures" entry when it has one, else every number whose key names a ratio (ratio, _over_, _vs_),
else every number and true/false in it. One entry is appended to the "## Log" section at the end of the log file
(created when missing): UTC date, machine (CPU model, cores, RAM, GPU or none, load average at the
start and at the end, git commit), the exact command, exit status, duration and the figures. A command that
fails is logged with its exit status and no figures; the recorder exits with the command's status.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOG_HEADING = "## Log"
RATIO_KEY = re.compile(r"ratio|_over_|_vs_", re.IGNORECASE)
MAX_FIGURES = 24


# --------------------------------------------------------------------------- machine

def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict:
    cpu = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.MULTILINE)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    gpu = "none"
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            names = [x.strip() for x in out.stdout.splitlines() if x.strip()]
            if out.returncode == 0 and names:
                gpu = f"{len(names)} x {names[0]}" if len(set(names)) == 1 else ", ".join(names)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return {
        "host": platform.node(),
        "cpu": cpu.group(1).strip() if cpu else (platform.processor() or platform.machine()),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "gpu": gpu,
    }


def code_version() -> str:
    """The commit the benchmark ran on, '+ local changes' when tracked files differ from it (the log
    itself, which every recorded run changes, does not count)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=30)
        if sha.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md"], cwd=REPO,
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return sha.stdout.strip() + (" + local changes" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git not available)"


# --------------------------------------------------------------------------- figures

def last_json(text: str):
    """The last JSON object printed (one line, or indented over several lines); None if none."""
    dec = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"^\{", text, re.MULTILINE)]
    for pos in reversed(starts):
        try:
            obj, _ = dec.raw_decode(text[pos:])
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _flatten(obj, prefix: str = ""):
    """(dotted key, value) for every number and yes/no; list items named by their 'strategy'/'name' field."""
    if isinstance(obj, (bool, int, float)):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            name = v.get("strategy", v.get("name", i)) if isinstance(v, dict) else None
            if name is not None:  # lists of plain numbers (spreads, per-round samples) are not figures
                yield from _flatten(v, f"{prefix}.{name}" if prefix else str(name))


def figures(obj) -> dict[str, float]:
    if not isinstance(obj, dict):
        return {}
    if isinstance(obj.get("figures"), dict):
        return dict(_flatten(obj["figures"]))
    flat = dict(_flatten(obj))
    ratios = {k: v for k, v in flat.items() if not isinstance(v, bool) and RATIO_KEY.search(k.rsplit(".", 1)[-1])}
    return ratios or flat


def _fmt(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:.4g}"  # bool is an int: True/False


# --------------------------------------------------------------------------- log

def entry(started: float, cmd: list[str], mach: dict, load0: float, load1: float, rc: int, seconds: float,
          figs: dict[str, float], note: str = "") -> str:
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    status = "exit 0" if rc == 0 else f"**failed, exit {rc}**"
    lines = [f"- **{date}** `{shlex.join(cmd)}`: {status}, {seconds:.0f} s",
             f"  - machine: {mach['host']}, {mach['cpu']}, {mach['cores']} cores, {mach['ram_gib']} GiB RAM, "
             f"GPU {mach['gpu']}; load average {load0:.2f} at the start, {load1:.2f} at the end; code {mach['code']}"]
    if figs:
        shown = list(figs.items())[:MAX_FIGURES]
        more = f" (+{len(figs) - MAX_FIGURES} more)" if len(figs) > MAX_FIGURES else ""
        lines.append("  - figures: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in shown) + more)
    elif rc == 0:
        lines.append("  - figures: none found in the output")
    if note:
        lines.append(f"  - {note}")
    return "\n".join(lines) + "\n"


def append(log: Path, text: str) -> None:
    """Append under '## Log' (added at the end when missing); locked against concurrent recorders."""
    with open(log, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        body = f.read()
        add = ""
        if not re.search(rf"^{re.escape(LOG_HEADING)}\s*$", body, re.MULTILINE):
            add += ("" if body.endswith("\n\n") or not body else "\n" if body.endswith("\n") else "\n\n")
            add += (f"{LOG_HEADING}\n\nEvery run of a benchmark through `bench/record.py` (`make bench`, `make bench-pN`) "
                    "appends one entry here.\n\n")
        elif not body.endswith("\n"):
            add += "\n"
        f.write(add + text)
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("error: usage: python bench/record.py [--log FILE] [--figures-file FILE] -- COMMAND ...", file=sys.stderr)
        return 2
    i = argv.index("--")
    p = argparse.ArgumentParser(prog="python bench/record.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", type=Path, default=REPO / "BENCHMARKS.md", help="the Markdown file to append to")
    p.add_argument("--figures-file", type=Path, help="read the figures from this JSON file the command writes")
    args = p.parse_args(argv[:i])
    cmd = argv[i + 1:]
    if not cmd:
        print("error: no command after '--' (e.g. -- python bench/convert_bench.py)", file=sys.stderr)
        return 2
    if not args.log.parent.is_dir():
        print(f"error: --log: folder {args.log.parent} does not exist", file=sys.stderr)
        return 2
    mach, load0, started = machine(), os.getloadavg()[0], time.time()
    mach["code"] = code_version()
    t0 = time.perf_counter()
    out: list[str] = []
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
    except OSError as e:
        print(f"error: cannot run {cmd[0]!r}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            out.append(line)
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
    seconds = time.perf_counter() - t0
    note, figs = "", {}
    if rc == 0:
        if args.figures_file:
            ff = args.figures_file
            if not ff.exists() or ff.stat().st_mtime < started - 1:
                note = f"{ff} was not written by this run; no figures"
            else:
                figs = figures(json.loads(ff.read_text()))
        else:
            figs = figures(last_json("".join(out)))
    append(args.log, entry(started, cmd, mach, load0, os.getloadavg()[0], rc, seconds, figs, note))
    print(f"recorded in {args.log}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
