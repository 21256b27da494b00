"""Where the data benchmarks keep their generated tree and .beton (git-ignored build/)."""
from __future__ import annotations

import time
from pathlib import Path

from data_synth import make_tree


def default_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "build" / "bench_data"


def prepare(root: Path, n: int, workers: int) -> tuple[Path, Path]:
    """The JPEG tree and its .beton (max side 500, all JPEG q90, like the tree); reused when present."""
    from data.convert import ConvertOptions, convert

    tree = make_tree(Path(root) / f"tree_{n}", n, workers)
    beton = Path(root) / f"tree_{n}.beton"
    t0 = time.time()
    res = convert(tree, beton, ConvertOptions(max_res=500, write_mode="jpg", jpeg_quality=90, workers=workers))
    if not res.up_to_date:
        print(res.summary())
    elif time.time() - t0 > 60:
        print(f"checked {beton} in {time.time() - t0:.0f}s")
    return tree, beton
