"""python -m analysis report STUDY_DIR --out OUT_DIR | python -m analysis status STUDY_DIR [--watch S]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.folders import find_run_dirs
from analysis.status import format_status, status_rows, watch
from rundir import print_error, read_index


def _report(args: argparse.Namespace) -> int:
    if not find_run_dirs(args.study_dir) and not read_index(args.study_dir)[0]:
        print_error(f"no run folders in {args.study_dir} (expected {args.study_dir}/<run>/metrics.parquet); "
                    "is this the study directory?")
        return 1
    # The report's stack (pandas, scipy, matplotlib) is imported only for it: `status` must start fast.
    from analysis.report import build_report

    out = args.out or args.study_dir / "report"
    rep = build_report(args.study_dir, out, include_incomplete=args.include_incomplete)
    excluded = [p for p in rep.study.problems if p.excluded]
    print(f"{len(rep.summary)} conditions from {int(rep.runs['usable'].sum())} runs"
          + (f"; {len(excluded)} run(s) not usable, listed in the report" if excluded else ""))
    for p in excluded:
        print(f"  {p.run}: {p.reason}", file=sys.stderr)
    print(rep.report_md)
    return 0


def _status(args: argparse.Namespace) -> int:
    if args.watch:
        watch(args.study_dir, args.watch)
    else:
        print(format_status(status_rows(args.study_dir), args.study_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="tables, statistics, figures and report.md for a study directory")
    rep.add_argument("study_dir", type=Path, help="runs/<study>: one folder per run")
    rep.add_argument("--out", type=Path, default=None, help="output folder (default: STUDY_DIR/report)")
    rep.add_argument("--include-incomplete", action="store_true",
                     help="use runs that have not reached epochs_total in the statistics too")
    rep.set_defaults(func=_report)
    st = sub.add_parser("status", help="each run's state, epochs done/total and last top-1")
    st.add_argument("study_dir", type=Path)
    st.add_argument("--watch", type=float, default=0, metavar="SECONDS", help="refresh every SECONDS")
    st.set_defaults(func=_status)
    args = parser.parse_args(argv)
    if not args.study_dir.is_dir():
        parser.error(f"{args.study_dir}: no such study directory (expected runs/<study> with one folder per run)")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
