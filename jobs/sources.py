"""Weights-source strings (`model.init`, `distill.teacher.init`) parsed without touching a file or
importing timm, so the run-spec schema can check their syntax cheaply."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from rundir import RUN_PREFIX, run_condition, run_source

SourceKind = Literal["random", "pretrained", "file", "local-dir", "run"]
FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class WeightsError(ValueError):
    """Starting weights that cannot be used; the message is one line naming the field and the fix."""


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    value: str = ""  # file or folder path, or the condition name of `run:`

    def __str__(self) -> str:
        return {"random": "random", "pretrained": "pretrained", "local-dir": f"local-dir:{self.value}",
                "run": run_source(self.value)}.get(self.kind, self.value)


def parse_source(text: str, field: str = "model.init") -> Source:
    """The source a `model.init` / `distill.teacher.init` string names (syntax only, no file access)."""
    text = str(text).strip()
    if text in ("random", "pretrained"):
        return Source(text)  # type: ignore[arg-type]
    cond = run_condition(text)
    if cond is not None:
        if not cond:
            raise WeightsError(f"{field}: '{RUN_PREFIX}' needs a condition name, e.g. {run_source('baseline')}")
        return Source("run", cond)
    if text.startswith("local-dir:"):
        return Source("local-dir", text[len("local-dir:"):].strip())
    if text.endswith(FILE_SUFFIXES):
        return Source("file", text)
    raise WeightsError(
        f"{field}: {text!r} is not a weights source; use random, pretrained, run:<condition>, "
        f"local-dir:<folder> or a file ending in {', '.join(FILE_SUFFIXES)}"
    )


def absolute(text: str) -> str:
    """The source with a file or folder made absolute against this process's cwd, so workers whose cwd
    the engine chooses read the same file."""
    source = parse_source(text)
    if source.kind == "file":
        return os.path.abspath(os.path.expanduser(source.value))
    if source.kind == "local-dir":
        return f"local-dir:{os.path.abspath(os.path.expanduser(source.value))}"
    return str(text).strip()
