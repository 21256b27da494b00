"""P5: conversion throughput, ours (`python -m data convert`) vs an ffcv-imagenet-style writer.

    python bench/convert_bench.py --images 1000 --workers 2                      # proportion 50% (ffcv-imagenet)
    python bench/convert_bench.py --images 1000 --workers 2 --write-mode jpg

Both sides convert the same synthetic JPEG tree (bench/data_synth.py) with the same settings (write
mode, max resolution, JPEG quality, compress probability, worker processes, chunk size), each in
its own child process, interleaved: ours, reference, ours, reference, ... (--rounds pairs), after
one untimed read of every file so both find it in the page cache.

- ours: `data.__main__.main(["convert", TREE, OUT, "--force", ...])`, i.e. the CLI itself, with
  timers wrapped around its phases (scan + fingerprint, sizes (header read for the page size; nothing
  to read when --max-res bounds it), ffcv write (decode failures recorded there), fsync; the rest:
  label map, skip report, convert.json, rename).
- reference: github.com/libffcv/ffcv-imagenet write_imagenet.py: torchvision ImageFolder +
  ffcv.writer.DatasetWriter(path, {'image': RGBImageField(write_mode, max_resolution,
  compress_probability, jpeg_quality), 'label': IntField()}, num_workers) +
  writer.from_indexed_dataset(dataset, chunksize).

Figures per side: img/s (wall) and images per CPU-second (the child and all its descendants: this
machine is shared, so the CPU figure is the one to compare), and the ratio ours / reference of
each, for the conversion alone (without the fixed start-up, imports and exit of each command) and
for the whole command; the CPU and wall time of every phase (ours does more: the sizes pass, fsync,
rename, label map), the write phase's ratio on its own, and the ratio the extra phases alone predict. Afterwards both .beton files are read back: same sample count, same labels (in ImageFolder
order, and equal to the class folders' indices of our label map), same stored image sizes.
The last line of stdout is the JSON result; its "figures" are what `bench/record.py` logs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_paths import default_dir  # noqa: E402
from data_synth import make_tree  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the two children

def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(wall: dict[str, float], cpu: dict[str, float], name: str, fn):
    """Accumulate the wall and CPU time (this process and the children it reaped) of calls to fn."""
    def wrapper(*a, **k):
        t0, c0 = time.perf_counter(), _self_cpu() + _children_cpu()
        try:
            return fn(*a, **k)
        finally:
            wall[name] = wall.get(name, 0.0) + time.perf_counter() - t0
            cpu[name] = cpu.get(name, 0.0) + _self_cpu() + _children_cpu() - c0
    return wrapper


def _seed() -> None:
    """'proportion' draws np.random.rand() per image in the forked writer processes, which inherit
    this state: the same seed on both sides gives both the same share of JPEG-encoded images."""
    import numpy as np

    np.random.seed(0)


def _end(wall: dict, cpu: dict) -> dict:
    """CPU at the end of the work: ffcv leaves its writer processes to be joined at exit; join them
    now so their CPU counts here, and what the parent measures beyond this is the interpreter exit."""
    import multiprocessing

    for proc in multiprocessing.active_children():
        proc.join()
    cpu["end"] = _self_cpu() + _children_cpu()
    return {"wall": wall, "cpu": cpu}


def child_ours(args) -> dict:
    """The CLI's own main(), with timers around the phases of data.convert.convert."""
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    t0 = time.perf_counter()
    import ffcv.fields  # noqa: F401  (imported by data.convert._write; here so "write" is comparable)
    import ffcv.writer  # noqa: F401

    import data.__main__ as dm
    import data.convert as dc

    wall["imports"], cpu["startup"] = time.perf_counter() - t0, _self_cpu()
    _seed()
    for fn, name in (("_scan", "scan"), ("_max_pixels", "sizes"), ("_write", "write")):
        setattr(dc, fn, _timed(wall, cpu, name, getattr(dc, fn)))
    dc.os.fsync = _timed(wall, cpu, "fsync", dc.os.fsync)
    dc.convert = _timed(wall, cpu, "convert", dc.convert)
    rc = dm.main(["convert", str(args.tree), str(args.out), "--force", "--max-res", str(args.max_res),
                  "--write-mode", args.write_mode, "--jpeg-quality", str(args.jpeg_quality),
                  "--compress-probability", str(args.compress_probability), "--workers", str(args.workers),
                  "--chunk-size", str(args.chunk_size)])
    if rc != 0:
        raise SystemExit(f"data convert failed with exit code {rc}")
    wall["other"] = wall.pop("convert") - sum(wall[k] for k in ("scan", "sizes", "write", "fsync"))
    for k in ("convert", "write"):  # the write's CPU is known only once its processes are joined: see _summarise
        cpu.pop(k)
    return _end(wall, cpu)


def child_reference(args) -> dict:
    """ffcv-imagenet's write_imagenet.py (dataset 'imagenet', no subset), same settings."""
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    t0 = time.perf_counter()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    wall["imports"], cpu["startup"] = time.perf_counter() - t0, _self_cpu()
    _seed()
    t0, c0 = time.perf_counter(), _self_cpu()
    my_dataset = ImageFolder(root=str(args.tree))
    wall["scan"], cpu["scan"] = time.perf_counter() - t0, _self_cpu() - c0
    t0 = time.perf_counter()
    writer = DatasetWriter(str(args.out), {
        "image": RGBImageField(write_mode=args.write_mode, max_resolution=args.max_res,
                               compress_probability=args.compress_probability, jpeg_quality=args.jpeg_quality),
        "label": IntField(),
    }, num_workers=args.workers)
    writer.from_indexed_dataset(my_dataset, chunksize=args.chunk_size)
    wall["write"] = time.perf_counter() - t0
    return _end(wall, cpu)


# --------------------------------------------------------------------------- parent

def run_child(side: str, tree: Path, out: Path, argv: list[str]) -> dict:
    """One conversion in a fresh process; wall time, and CPU time of it and every process it started
    (RUSAGE_CHILDREN counts a process and its descendants once reaped)."""
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", side, "--tree", str(tree), "--out", str(out), *argv]
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"{side} conversion failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(next(x[7:] for x in proc.stdout.splitlines() if x.startswith("RESULT ")))
    c = res["cpu"]
    c["exit"] = cpu - c.pop("end")
    c["write"] = cpu - sum(c.values())  # total - (start-up, scan, sizes, fsync, exit)
    return {"wall_s": wall, "cpu_s": cpu, "phase_wall_s": res["wall"], "phase_cpu_s": c}


def verify(ours: Path, ref: Path, tree: Path) -> dict:
    """Both files hold the same images in the same order with the same labels and sizes."""
    import numpy as np
    from ffcv.reader import Reader

    from data.labels import read_label_map

    a, b = Reader(str(ours)), Reader(str(ref))
    # metadata fields: f0 = image (mode, width, height, data_ptr), f1 = label
    la, lb = np.asarray(a.metadata["f1"]), np.asarray(b.metadata["f1"])
    mapping = read_label_map(ours)
    files = sorted(tree.rglob("*.JPEG"))
    expected = np.array([mapping[f.parent.name] for f in files])
    same_n = int(a.num_samples) == int(b.num_samples) == len(files)
    same_labels = same_n and bool((la == lb).all()) and bool((la == expected).all())
    size = lambda r: np.stack([r.metadata["f0"]["width"], r.metadata["f0"]["height"]], 1)  # noqa: E731
    same_sizes = same_n and bool((size(a) == size(b)).all())
    return {"images_ours": int(a.num_samples), "images_reference": int(b.num_samples), "images_in_tree": len(files),
            "same_count": same_n, "same_labels": same_labels, "same_sizes": same_sizes,
            "jpeg_share_ours": float((a.metadata["f0"]["mode"] == 0).mean()),
            "jpeg_share_reference": float((b.metadata["f0"]["mode"] == 0).mean()),
            "beton_mb_ours": round(ours.stat().st_size / 2**20, 1), "beton_mb_reference": round(ref.stat().st_size / 2**20, 1)}


def _summarise(runs: list[dict], images: int) -> dict:
    """Whole command (process start to exit), and the conversion alone: without the interpreter
    start-up, imports and exit (fixed costs: torch, torchvision, ffcv), which a 1.28 M image run does not feel."""
    n = images * len(runs)
    conv_wall = sum(sum(v for k, v in r["phase_wall_s"].items() if k != "imports") for r in runs)
    conv_cpu = sum(sum(v for k, v in r["phase_cpu_s"].items() if k not in ("startup", "exit")) for r in runs)
    med = lambda key: {k: round(statistics.median(r[key][k] for r in runs), 3) for k in runs[0][key]}  # noqa: E731
    return {"img_s": n / sum(r["wall_s"] for r in runs), "img_per_cpu_s": n / sum(r["cpu_s"] for r in runs),
            "conversion_img_s": n / conv_wall, "conversion_img_per_cpu_s": n / conv_cpu,
            "write_img_s": n / sum(r["phase_wall_s"]["write"] for r in runs),
            "write_img_per_cpu_s": n / sum(r["phase_cpu_s"]["write"] for r in runs),
            "wall_s": [round(r["wall_s"], 2) for r in runs], "cpu_s": [round(r["cpu_s"], 2) for r in runs],
            "phase_wall_median_s": med("phase_wall_s"), "phase_cpu_median_s": med("phase_cpu_s")}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=default_dir())
    p.add_argument("--images", type=int, default=1000, help="size of the generated JPEG tree")
    p.add_argument("--rounds", type=int, default=3, help="(ours, reference) pairs")
    p.add_argument("--workers", type=int, default=2, help="writer processes, both sides")
    p.add_argument("--max-res", type=int, default=500)
    p.add_argument("--write-mode", default="proportion", choices=["raw", "jpg", "smart", "proportion"])
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--compress-probability", type=float, default=0.5)
    p.add_argument("--chunk-size", type=int, default=100)
    p.add_argument("--child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        res = (child_ours if args.child == "ours" else child_reference)(args)
        print("RESULT " + json.dumps(res), flush=True)
        return res
    if args.rounds < 1 or args.images < 1:
        p.error("--rounds and --images must be >= 1")

    load0 = os.getloadavg()[0]
    tree = make_tree(args.dir / f"tree_{args.images}", args.images, args.workers)
    files = sorted(tree.rglob("*.JPEG"))
    for f in files:  # page cache: neither side pays for the first read
        f.read_bytes()
    work = args.dir / "convert_bench"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    settings = ["--max-res", str(args.max_res), "--write-mode", args.write_mode, "--jpeg-quality",
                str(args.jpeg_quality), "--compress-probability", str(args.compress_probability),
                "--workers", str(args.workers), "--chunk-size", str(args.chunk_size)]
    runs: dict[str, list[dict]] = {"ours": [], "reference": []}
    for i in range(args.rounds):
        for side in ("ours", "reference"):
            r = run_child(side, tree, work / f"{side}.beton", settings)
            runs[side].append(r)
            print(f"round {i + 1} {side:9s} {len(files) / r['wall_s']:6.1f} img/s wall  "
                  f"{len(files) / r['cpu_s']:6.1f} img per CPU-second;  wall "
                  + " ".join(f"{k}={v:.2f}" for k, v in r["phase_wall_s"].items()) + "  CPU "
                  + " ".join(f"{k}={v:.2f}" for k, v in r["phase_cpu_s"].items()), flush=True)
    check = verify(work / "ours.beton", work / "reference.beton", tree)
    ours, ref = _summarise(runs["ours"], len(files)), _summarise(runs["reference"], len(files))
    pair = [r["cpu_s"] / o["cpu_s"] for o, r in zip(runs["ours"], runs["reference"])]
    ow, oc = ours["phase_wall_median_s"], ours["phase_cpu_median_s"]
    extra = ow["scan"] + ow["sizes"] + ow["fsync"] + ow["other"] - ref["phase_wall_median_s"]["scan"]
    extra_cpu = oc["scan"] + oc["sizes"] + oc["fsync"] - ref["phase_cpu_median_s"]["scan"]
    ref_conv_cpu = len(files) / ref["conversion_img_per_cpu_s"]
    figures = {
        "p5_ours_over_reference_cpu": round(ours["conversion_img_per_cpu_s"] / ref["conversion_img_per_cpu_s"], 3),
        "p5_ours_over_reference_wall": round(ours["conversion_img_s"] / ref["conversion_img_s"], 3),
        "p5_whole_command_ours_over_reference_cpu": round(ours["img_per_cpu_s"] / ref["img_per_cpu_s"], 3),
        "p5_whole_command_ours_over_reference_wall": round(ours["img_s"] / ref["img_s"], 3),
        "p5_write_phase_ours_over_reference_cpu": round(ours["write_img_per_cpu_s"] / ref["write_img_per_cpu_s"], 3),
        "p5_write_phase_ours_over_reference_wall": round(ours["write_img_s"] / ref["write_img_s"], 3),
        "ours_extra_cpu_ms_per_img": round(1000 * extra_cpu / len(files), 3),
        # what the ratio would be if our write cost exactly the reference's and only the extra phases differed
        "p5_expected_from_extra_work_cpu": round(ref_conv_cpu / (ref_conv_cpu + extra_cpu), 3),
        "ours_img_per_cpu_s": round(ours["conversion_img_per_cpu_s"], 1),
        "reference_img_per_cpu_s": round(ref["conversion_img_per_cpu_s"], 1),
    }
    print(f"conversion alone (no start-up/imports/exit), ours / reference: {figures['p5_ours_over_reference_cpu']:.3f} by CPU "
          f"({figures['ours_img_per_cpu_s']} vs {figures['reference_img_per_cpu_s']} img per CPU-second), "
          f"{figures['p5_ours_over_reference_wall']:.3f} by wall; whole commands: "
          f"{figures['p5_whole_command_ours_over_reference_cpu']:.3f} by CPU, "
          f"{figures['p5_whole_command_ours_over_reference_wall']:.3f} by wall (per round, CPU: "
          + ", ".join(f"{x:.3f}" for x in pair) + f"); write phase alone {figures['p5_write_phase_ours_over_reference_cpu']:.3f} "
          f"by CPU, {figures['p5_write_phase_ours_over_reference_wall']:.3f} by wall; our extra phases (scan+sizes+fsync+rest, "
          f"less the reference's scan: median) {extra:.2f}s wall, {extra_cpu:.2f}s CPU per conversion")
    print(f"expected from the extra work alone (CPU): {figures['p5_expected_from_extra_work_cpu']:.3f}")
    print(f"read back: {check}")
    if not (check["same_count"] and check["same_labels"]):
        raise SystemExit(f"the two .beton files differ: {check}")
    report = {"bench": "p5_convert", "images": len(files), "rounds": args.rounds, "workers": args.workers,
              "max_res": args.max_res, "write_mode": args.write_mode, "jpeg_quality": args.jpeg_quality,
              "compress_probability": args.compress_probability, "chunk_size": args.chunk_size,
              "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
              "figures": figures, "ours": ours, "reference": ref, "pair_ratios_cpu": [round(x, 3) for x in pair],
              "ours_extra_s": round(extra, 3), "ours_extra_cpu_s": round(extra_cpu, 3), "verify": check}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
