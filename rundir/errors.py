"""One-line error texts and the one error printer of every command line (`jobs`, `orchestrator`, `analysis`).

Bad input is reported as `error: <what>:` followed by one indented line per problem, on stderr.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TextIO

EXIT_BAD_INPUT = 2   # the input is wrong: nothing was started
EXIT_LOCKED = 3      # another driver holds the study directory
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request with checkpoints; the same command (`--resume` for a driver) continues

_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b")


def print_errors(what: str, errors: list[str], *, file: TextIO | None = None) -> int:
    """`error: what:` and one line per problem; returns EXIT_BAD_INPUT for `return print_errors(...)`."""
    out = file or sys.stderr
    if len(errors) == 1 and not what:
        print(f"error: {errors[0]}", file=out)
        return EXIT_BAD_INPUT
    print(f"error: {what}:", file=out)
    for line in errors:
        print(f"  {line}", file=out)
    return EXIT_BAD_INPUT


def print_error(message: str, *, file: TextIO | None = None) -> None:
    """One problem on one line (`error: message`)."""
    print(f"error: {' '.join(str(message).split())}", file=file or sys.stderr)


def error_line(text: str, limit: int = 400) -> str:
    """The line that says what went wrong in a tool's or a traceback's multi-line output: the last exception
    line (`ValueError: ...`), else the last line mentioning an error, else the last line."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    if not lines:
        return "no message"
    found = [ln for ln in lines if _EXCEPTION_LINE.match(ln)] or [ln for ln in lines if "error" in ln.lower()]
    line = (found or lines)[-1]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def exception_line(exc: BaseException, path: Path | None = None, limit: int = 160) -> str:
    """`Type: message` of one exception on one bounded line; the (already named) file's full path dropped."""
    text = " ".join(str(exc).split())
    if path is not None:
        text = text.replace(f"'{path}'", path.name).replace(str(path), path.name)
    text = f"{type(exc).__name__}: {text}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
