"""Conversion throughput: `data convert` of the benchmark JPEG tree (bench/data_synth.py).

    python bench/convert_bench.py --images 1000 --workers 2

Times a forced conversion of the first --images files with the given writer options and prints
img/s for the check pass and for the whole conversion.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_paths import default_dir  # noqa: E402
from data_synth import make_tree  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=default_dir())
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-res", type=int, default=500)
    p.add_argument("--write-mode", default="proportion")
    args = p.parse_args(argv)
    from data.convert import ConvertOptions, _check_files, convert

    tree = make_tree(args.dir / f"tree_{args.images}", args.images, args.workers)
    files = [str(f) for f in sorted(tree.rglob("*.JPEG"))]
    t0 = time.perf_counter()
    _check_files(files, args.workers)
    check_rate = len(files) / (time.perf_counter() - t0)
    out = args.dir / "convert_bench" / "out.beton"
    shutil.rmtree(out.parent, ignore_errors=True)
    opts = ConvertOptions(max_res=args.max_res, write_mode=args.write_mode, workers=args.workers)
    t0 = time.perf_counter()
    res = convert(tree, out, opts, force=True)
    total = time.perf_counter() - t0
    report = {"images": res.converted, "workers": args.workers, "max_res": args.max_res,
              "write_mode": args.write_mode, "check_img_s": round(check_rate, 1),
              "convert_img_s": round(res.converted / total, 1), "beton_mb": round(out.stat().st_size / 2**20, 1)}
    print(res.summary())
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
