"""From run directories to the paper's tables, statistics, figures and report (reads files only).

    python -m analysis report runs/<study> --out runs/<study>/report [--include-incomplete]
    python -m analysis status runs/<study> [--watch 30]

Python: `analysis.report.build_report(study_dir, out_dir) -> Report` (paths in Report.files);
`analysis.load.read_study`, `analysis.stats.summarize` for the frames alone. Never imports torch or ray.

The run-directory contract (file names, metrics schema, run state) is the `rundir` package, the
only package of ours this one imports.

Modules: load (files -> rows + problems), stats (per run, per condition,
paired tests), tables (md/tex), figures (png), paper (seed numbers, side-by-side), report, status.
"""
