"""`python -m jobs {inspect,bench,train,export,config-keys}`: model accounting, inference benchmark,
one training run, a run's model in timm's layout, every config key.

    python -m jobs inspect --model vit_base_patch16_224 --strategy grouped
    python -m jobs inspect configs/minivit/mini_deit_base.yaml       # the model a run spec builds
    python -m jobs bench   --model vit_base_patch16_224 --strategies baseline,grouped,shallow
    python -m jobs train   configs/demo.yaml train.epochs=3 [--print-config]
    python -m jobs export  runs/demo/grouped-s0 exported/grouped-s0 [--weights best|ema|last]
    python -m jobs config-keys [--format text|markdown|json]
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "inspect": "jobs.inspect",
    "bench": "jobs.bench",
    "train": "jobs.train_cli",
    "export": "jobs.export",
    "config-keys": "jobs.configdoc",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m jobs {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
