"""Screenshot of TensorBoard showing a study (the README's picture of the demo study's live curves).

    python bench/tensorboard_screenshot.py runs/demo --out docs/tensorboard_demo.png

Starts TensorBoard on a free local port for STUDY_DIR, waits until it serves a scalar of every run folder
that has event files, photographs its scalars dashboard with headless Chromium (`apt-get install -y
chromium`), and stops TensorBoard again whatever happens.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runs_with_events(study_dir: Path) -> set[str]:
    return {p.parent.relative_to(study_dir).as_posix() for p in study_dir.rglob("events.out.tfevents.*")}


def wait_for_runs(base: str, expected: set[str], proc: subprocess.Popen, timeout_s: float) -> list[str]:
    """Poll TensorBoard until it lists every expected run with scalars (or it exits / the limit passes)."""
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tensorboard exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/data/plugin/scalars/tags", timeout=10) as r:
                seen = sorted(run for run, tags in json.load(r).items() if tags)
            if expected <= set(seen):
                return seen
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"tensorboard listed {seen}, expected {sorted(expected)} within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path, help="folder given to tensorboard --logdir (e.g. runs/demo)")
    parser.add_argument("--out", type=Path, default=Path("docs/tensorboard_demo.png"))
    parser.add_argument("--tags", default="epoch/top1|epoch/ema_top1|train/loss|train/grad_norm",
                        help="regex of the scalar tags shown")
    parser.add_argument("--size", default="1400,1000", help="window width,height in pixels")
    parser.add_argument("--render-ms", type=int, default=20000, help="virtual time Chromium gives the page")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for TensorBoard to load runs")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        print("error: no chromium on PATH; apt-get install -y chromium", file=sys.stderr)
        return 2
    expected = runs_with_events(args.study_dir)
    if not expected:
        print(f"error: no TensorBoard event files under {args.study_dir}; run the study first (make demo)",
              file=sys.stderr)
        return 2
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(args.study_dir), "--host",
                           "127.0.0.1", "--port", str(port), "--reload_interval", "0"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        runs = wait_for_runs(base, expected, tb, args.timeout)
        # The classic scalars dashboard, light theme, smoothing off, the chosen tags.
        query = urllib.parse.quote(args.tags, safe="")
        url = f"{base}/?darkMode=false#scalars&tagFilter={query}&_smoothingWeight=0"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                            f"--window-size={args.size}", f"--virtual-time-budget={args.render_ms}",
                            f"--screenshot={args.out.resolve()}", url],
                           check=True, capture_output=True, timeout=300)
    finally:
        tb.terminate()
        try:
            tb.wait(timeout=30)
        except subprocess.TimeoutExpired:
            tb.kill()
            tb.wait()
    print(json.dumps({"screenshot": str(args.out), "runs": runs, "url": url}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
