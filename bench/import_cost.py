"""CPU that one process spends importing the data package's FFCV side: through data.ffcv_api (FFCV's
IMAGE_MODES as a plain dict) against FFCV's own import (it compiles a numba typed Dict for two constants).

    python bench/record.py -- python bench/import_cost.py            # 7 rounds
    python bench/import_cost.py --rounds 2                           # smoke test

Every process that trains pays this once: `python -m jobs train`, each Ray Train worker and Tune trial, each
Slurm task. The two imports alternate (A B A B ...) in fresh interpreters so a change in load hits both; the
medians of the children's CPU time (user + system) are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "through_ffcv_api": "import data.ffcv_backend",
    "ffcv_own_typed_dict": "import ffcv; import data.ffcv_backend",  # FFCV first: data.ffcv_api leaves it as is
}


def child_cpu_s(code: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    for code in VARIANTS.values():  # warm the page cache and numba's on-disk caches of our own functions
        child_cpu_s(code)
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, code in VARIANTS.items():
            samples[name].append(child_cpu_s(code))
    medians = {name: round(statistics.median(s), 2) for name, s in samples.items()}
    saved = round(medians["ffcv_own_typed_dict"] - medians["through_ffcv_api"], 2)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
              "cpus": len(os.sched_getaffinity(0)), "rounds": args.rounds, "cpu_s_median": medians,
              "cpu_s_all": {name: [round(x, 2) for x in s] for name, s in samples.items()},
              "figures": {**{f"{name}_cpu_s": v for name, v in medians.items()}, "saved_cpu_s_per_process": saved}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
