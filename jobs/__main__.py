"""`python -m jobs {inspect,bench,train}`: model accounting, inference benchmark, one training run.

    python -m jobs inspect --model vit_base_patch16_224 --strategy grouped
    python -m jobs bench   --model vit_base_patch16_224 --strategies baseline,grouped,shallow
    python -m jobs train   configs/demo.yaml train.epochs=3
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {"inspect": "jobs.inspect", "bench": "jobs.bench", "train": "jobs.train"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m jobs {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
