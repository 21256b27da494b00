"""Loader throughput on one machine: our FFCV loader vs stock FFCV vs torchvision vs the decode ceiling.

    python bench/loader_bench.py --images 5000 --workers 2

Same JPEG tree (bench/data_synth.py: synthetic photos 400-500 px), same output (224 px
RandomResizedCrop + flip + normalize, float32 NCHW), same number of worker threads/processes. The
ceiling is libjpeg-turbo (ffcv's imdecode, full decode, no crop/resize) over the same JPEG bytes with
the same number of threads.

Each loader runs alone in a child process: built, warmed up on --drain images (compilation, worker
start, page cache), then timed over --measure-images images. Two figures: wall-clock img/s, and
images per CPU-second of the process and its DataLoader workers. On a shared, oversubscribed
machine the wall figure mostly measures the neighbours; the CPU figure is the loader's own cost and
is what the ratios are about (on a dedicated machine, wall img/s ~ cores x img per CPU-second when
the loader keeps its workers busy).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_paths import default_dir  # noqa: E402  (helpers next to this file)


class Stream:
    """Endless batches from a loader factory; measure() times the next `images` images."""

    def __init__(self, make_iter):
        self.make_iter = make_iter
        self.it = make_iter()

    def _next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = self.make_iter()
            return next(self.it)

    def measure(self, images: int, drain: int = 0) -> float:
        """Rate over `images` images, after consuming `drain` images untimed: batches the loader
        prefetched while other loaders were measured must not count."""
        n = 0
        while n < drain:
            n += self._next()[0].shape[0]
        n, t0 = 0, time.perf_counter()
        while n < images:
            n += self._next()[0].shape[0]
        return n / (time.perf_counter() - t0)


def bench_ours(beton: Path, workers: int, bs: int, dct: bool = True, crop: bool = True) -> Stream:
    from data.config import DataConfig
    from data.loaders import build_train_loader

    cfg = DataConfig(train_path=beton, val_path=beton, img_size=224, num_workers=workers, auto_augment=None,
                     reprob=0.0, aug_repeats=1, dct_scaling=dct, crop_decode=crop)
    loader = build_train_loader(cfg, batch_size=bs, seed=0)
    epoch = iter(range(1000))

    def make():
        loader.set_epoch(next(epoch))
        return iter(loader)
    return Stream(make)


def bench_stock_ffcv(beton: Path, workers: int, bs: int) -> Stream:
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToTensor, ToTorchImage

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    loader = Loader(str(beton), batch_size=bs, num_workers=workers, order=OrderOption.RANDOM, drop_last=True,
                    pipelines={"image": [RandomResizedCropRGBImageDecoder((224, 224)), RandomHorizontalFlip(),
                                         ToTensor(), ToTorchImage(channels_last=False)],
                               "label": [IntDecoder(), ToTensor()]})

    def make():
        return ((((x.float() - mean) / std), y) for x, y in loader)
    return Stream(make)


def bench_torchvision(tree: Path, workers: int, bs: int) -> Stream:
    from torch.utils.data import DataLoader
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    dl = DataLoader(ImageFolder(str(tree), tf), batch_size=bs, shuffle=True, num_workers=workers, drop_last=True,
                    persistent_workers=True)
    return Stream(lambda: iter(dl))


def bench_decode_ceiling(tree: Path, workers: int, limit: int = 2000):
    from ffcv.libffcv import imdecode
    from numba import njit, prange, set_num_threads
    from PIL import Image

    files = sorted(tree.rglob("*.JPEG"))[:limit]
    blobs = [np.fromfile(f, dtype=np.uint8) for f in files]
    dims = np.array([Image.open(f).size[::-1] for f in files], dtype=np.uint32)  # (h, w)
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    data = np.concatenate(blobs)
    out = np.zeros((workers, int(dims[:, 0].max()) * int(dims[:, 1].max()) * 3), np.uint8)
    dec = njit(nogil=True)(imdecode)

    @njit(parallel=True, nogil=True)
    def run(data, offsets, dims, out, nthreads):
        n = len(dims)
        per = (n + nthreads - 1) // nthreads
        for t in prange(nthreads):
            for k in range(t * per, min(n, (t + 1) * per)):
                h, w = dims[k, 0], dims[k, 1]
                dec(data[offsets[k]:offsets[k + 1]], out[t], h, w, h, w, 0, 0, 1, 1, False, False)
        return n

    set_num_threads(workers)
    run(data[: offsets[8]], offsets[:9], dims[:8], out, workers)  # compile

    class Ceiling:
        pos = 0

        def measure(self, images: int, drain: int = 0) -> float:
            set_num_threads(workers)
            n, t0 = 0, time.perf_counter()
            while n < images:
                k = min(images - n, len(dims) - self.pos)
                run(data, offsets[self.pos:], dims[self.pos:self.pos + k], out, workers)
                n += k
                self.pos = (self.pos + k) % len(dims)
            return n / (time.perf_counter() - t0)
    return Ceiling()


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and its children (DataLoader workers)."""
    import psutil

    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system
    for child in me.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


def child(name: str, args) -> dict:
    """One loader alone in this process: warm up, then wall and CPU time over --images-measured."""
    from bench_paths import prepare

    tree, beton = prepare(args.dir, args.images, args.workers)
    makers = {
        "ceiling": lambda: bench_decode_ceiling(tree, args.workers),
        "ours": lambda: bench_ours(beton, args.workers, args.batch_size),
        "ours_nodct": lambda: bench_ours(beton, args.workers, args.batch_size, dct=False),
        "ours_fulldecode": lambda: bench_ours(beton, args.workers, args.batch_size, crop=False),
        "stock_ffcv": lambda: bench_stock_ffcv(beton, args.workers, args.batch_size),
        "torchvision": lambda: bench_torchvision(tree, args.workers, args.batch_size),
    }
    stream = makers[name]()
    stream.measure(args.drain)  # compilation, worker start-up, page cache
    c0, t0 = _cpu_seconds(), time.perf_counter()
    wall_rate = stream.measure(args.measure_images)
    cpu = _cpu_seconds() - c0
    return {"name": name, "img_s": wall_rate, "img_per_cpu_s": args.measure_images / cpu,
            "wall_s": time.perf_counter() - t0}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=default_dir())
    p.add_argument("--images", type=int, default=5000, help="size of the generated JPEG tree")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--measure-images", type=int, default=3840, help="images timed per loader")
    p.add_argument("--drain", type=int, default=1024, help="warm-up images (untimed)")
    p.add_argument("--only", default="ceiling,ours,ours_fulldecode,ours_nodct,stock_ffcv,torchvision")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return {}
    import subprocess

    from bench_paths import prepare

    prepare(args.dir, args.images, args.workers)
    res = {}
    for name in args.only.split(","):
        cmd = [sys.executable, __file__, "--child", name] + [a for a in (argv or sys.argv[1:]) if a]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        res[name] = json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT ")))
        r = res[name]
        print(f"{name:12s} {r['img_s']:7.0f} img/s wall   {r['img_per_cpu_s']:7.1f} img per CPU-second", flush=True)
    for ref in ("ceiling", "torchvision"):
        if ref in res:
            print(f"relative to {ref}: " + ", ".join(
                f"{k} {v['img_per_cpu_s'] / res[ref]['img_per_cpu_s']:.2f}x (wall {v['img_s'] / res[ref]['img_s']:.2f}x)"
                for k, v in res.items()))
    import os

    ratios = {f"{k}_over_{ref}_{m}": v[key] / res[ref][key] for ref in ("ceiling", "torchvision") if ref in res
              for k, v in res.items() if k != ref for m, key in (("cpu", "img_per_cpu_s"), ("wall", "img_s"))}
    print(json.dumps({"images": args.images, "workers": args.workers, "batch_size": args.batch_size,
                      "load_avg_1min": os.getloadavg()[0], "ratios": ratios, "results": res}))
    return res


if __name__ == "__main__":
    main()
