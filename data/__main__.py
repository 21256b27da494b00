"""`python -m data convert SRC OUT.beton [options]` and `python -m data prepare-demo OUT_DIR`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rundir import print_error

from .convert import ConvertError, ConvertOptions, convert_any

_D = ConvertOptions()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser(
        "convert", help="ImageNet-layout folder -> .beton",
        description="Convert SRC (SRC/<class>/*.JPEG, or SRC/{train,val}/<class>/... into OUT/{train,val}.beton). "
                    "Defaults reproduce ffcv-imagenet's files; for 224 px training "
                    "'--max-res 256 --write-mode jpg' is ~4x smaller and enough.")
    c.add_argument("src", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("--max-res", type=int, default=_D.max_res, help="longest side after resizing (default 500)")
    c.add_argument("--write-mode", default=_D.write_mode, choices=["raw", "jpg", "smart", "proportion"],
                   help="raw pixels, JPEG, smart (JPEG only above --smart-threshold bytes) or a random proportion")
    c.add_argument("--jpeg-quality", type=int, default=_D.jpeg_quality)
    c.add_argument("--compress-probability", type=float, default=_D.compress_probability,
                   help="share of JPEG-encoded images with --write-mode proportion")
    c.add_argument("--smart-threshold", type=int, default=_D.smart_threshold)
    c.add_argument("--workers", type=int, default=_D.workers, help="processes (default: all cores)")
    c.add_argument("--chunk-size", type=int, default=_D.chunk_size, help="images per work item of a writer process")
    c.add_argument("--force", action="store_true", help="convert even when OUT is up to date")
    d = sub.add_parser("prepare-demo", help="build the shipped digits dataset (JPEG trees + .beton files)")
    d.add_argument("out_dir", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "prepare-demo":
        from .demo import prepare_demo

        paths = prepare_demo(args.out_dir)
        print(f"demo dataset ready: train={paths.train_beton} val={paths.val_beton} "
              f"(trees: {paths.train_dir}, {paths.val_dir}; {paths.num_classes} classes)")
        return 0
    opts = ConvertOptions(max_res=args.max_res, write_mode=args.write_mode, jpeg_quality=args.jpeg_quality,
                          compress_probability=args.compress_probability, smart_threshold=args.smart_threshold,
                          workers=args.workers, chunk_size=args.chunk_size)
    try:
        for r in convert_any(args.src, args.out, opts, force=args.force):
            print(r.summary())
    except ConvertError as e:
        print_error(str(e))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
