"""A finished run is known from status.json and the metrics file's footer (no rows read), and only then:
a torn metrics file, raised epochs or a status that is not `finished` still take the full read."""
from __future__ import annotations

import pyarrow.parquet as pq

from rundir import METRICS_COLUMNS, METRICS_FILE, State, append_row, run_state, write_status
from rundir.metrics import footer_rows


def make_run(run_dir, epochs: int, state: str = "finished"):
    run_dir.mkdir(parents=True)
    for epoch in range(1, epochs + 1):
        row = {c: None for c in METRICS_COLUMNS}
        row.update(study="s", run_id=run_dir.name, model="vit_tiny_patch16_224", seed=0, epoch=epoch,
                   epochs_total=epochs, top1=10.0 * epoch)
        append_row(run_dir, row)
    write_status(run_dir, state, epochs, epochs)
    return run_dir


def test_finished_run_is_classified_from_the_footer(tmp_path, monkeypatch):
    run = make_run(tmp_path / "r", 3)
    assert footer_rows(run) == 3
    read = []
    import rundir.state

    monkeypatch.setattr(rundir.state, "check_metrics", lambda d: read.append(d) or (_ for _ in ()).throw(AssertionError))
    st = run_state(run, 3)
    assert st.state is State.FINISHED and st.epochs_done == 3 and read == []


def test_raised_epochs_and_torn_files_take_the_full_read(tmp_path):
    run = make_run(tmp_path / "r", 3)
    assert run_state(run, 5).state is State.UNFINISHED            # more epochs asked for now
    data = (run / METRICS_FILE).read_bytes()
    (run / METRICS_FILE).write_bytes(data[: len(data) // 2])       # a torn write: no footer
    assert footer_rows(run) is None
    st = run_state(run, 3)
    assert st.state is State.BLOCKED and METRICS_FILE in st.reason


def test_a_status_ahead_of_the_rows_is_not_trusted(tmp_path, monkeypatch):
    import rundir.state

    run = make_run(tmp_path / "r", 2)
    write_status(run, "finished", 3, 3)                             # status claims 3 epochs, the file holds 2 rows
    assert pq.read_metadata(run / METRICS_FILE).num_rows == 2
    read = []
    real = rundir.state.check_metrics
    monkeypatch.setattr(rundir.state, "check_metrics", lambda d: read.append(d) or real(d))
    assert run_state(run, 3).state is State.FINISHED                # the full read decides (max of status and rows)
    assert read == [run]
