"""Config discoverability: `config-keys` lists every field of the pydantic models with its type, default
and description; `--print-config` prints the resolved config (every default) as YAML and exits 0
without starting anything, on every command that takes a run spec or a study."""
from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from jobs.configdoc import main as jobs_keys_main
from jobs.configdoc import resolved
from jobs.spec import RunSpec, load_spec, validate_spec
from jobs.strategies import STRATEGIES
from jobs.study import StudyAxes
from jobs.train_cli import main as train_main
from orchestrator.__main__ import main as orchestrator_main

ROOT = Path(__file__).resolve().parents[1]
DEMO, STUDY = ROOT / "configs" / "demo.yaml", ROOT / "configs" / "demo_study.yaml"


def models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def every_field(model: type[BaseModel], seen=None) -> list[tuple[str, str | None]]:
    """(field name, description) of the model and of every model nested in it, found independently of
    the code under test (names only: the listing's key paths are its own business)."""
    out = []
    for name, field in model.model_fields.items():
        out.append((name, field.description))
        for sub in models_in(field.annotation):
            out.extend(every_field(sub))
    return out


def listed(capsys, main, argv) -> list[dict]:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_jobs_config_keys_lists_every_run_spec_and_strategy_field_with_its_doc(capsys):
    rows = listed(capsys, jobs_keys_main, ["--format", "json"])
    by_leaf = {(r["key"].rsplit(".", 1)[-1], r["doc"]) for r in rows}
    expected = every_field(RunSpec) + [f for s in STRATEGIES.values() for f in every_field(s.params)]
    missing = [name for name, doc in expected if (name, doc) not in by_leaf]
    assert missing == []
    assert all(doc for _, doc in expected), [n for n, d in expected if not d]  # every field is documented
    assert len(rows) == len(expected)
    row = {r["key"]: r for r in rows}
    assert row["train.lr"] == {"key": "train.lr", "type": "float", "default": "0.001",
                               "doc": RunSpec.model_fields["train"].annotation.model_fields["lr"].description}
    assert row["train.lr_scale"]["type"] == '"linear" | "sqrt" | "none"'
    assert row["data.train_path"]["default"] == "(required)"
    assert row["model"]["default"] == "(section)"
    assert row["strategies[grouped].params.group_size"]["default"] == "2"
    assert row["strategies[shallow].params.select"]["type"] == '"first" | "magnitude" | "diversity"'


def test_text_and_markdown_listings_have_one_line_per_key(capsys):
    rows = listed(capsys, jobs_keys_main, ["--format", "json"])
    assert jobs_keys_main([]) == 0
    text = capsys.readouterr().out.splitlines()
    assert len(text) == len(rows) and text[0].split()[0] == rows[0]["key"]
    assert jobs_keys_main(["--format", "markdown"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0] == "| key | type | default | description |" and len(md) == len(rows) + 2


def test_orchestrator_config_keys_adds_the_study_keys(capsys):
    rows = listed(capsys, orchestrator_main, ["config-keys", "--format", "json"])
    by_leaf = {(r["key"].rsplit(".", 1)[-1], r["doc"]) for r in rows}
    assert [n for n, d in every_field(StudyAxes) + every_field(RunSpec) if (n, d) not in by_leaf] == []
    keys = {r["key"] for r in rows}
    assert {"seeds", "conditions.<name>.strategies", "sweep.max_failures", "train.epochs"} <= keys


def resolved_yaml(capsys, code: int) -> dict:
    out = capsys.readouterr().out
    assert code == 0
    return yaml.safe_load(out)


def test_jobs_train_print_config_is_the_full_resolved_spec_and_starts_nothing(demo_data, tmp_path, capsys):
    args = [f"data_root={demo_data.root}", f"output_root={tmp_path / 'runs'}", "train.epochs=2",
            "strategies=[{name: shallow, params: {keep_ratio: 0.25}}]"]
    printed = resolved_yaml(capsys, train_main([str(DEMO), "--print-config", *args]))
    assert not (tmp_path / "runs").exists()
    spec = load_spec(DEMO, args)
    assert resolved(validate_spec(printed)) == resolved(spec) == printed  # a config meaning the same run
    assert set(printed) == set(RunSpec.model_fields)
    assert set(printed["train"]) == set(type(spec.train).model_fields)  # every default, not just what was set
    assert printed["train"]["epochs"] == 2 and printed["train"]["ema_decay"] == 0.99
    assert printed["strategies"] == [{"name": "shallow", "params": {"keep_ratio": 0.25, "select": "first"}}]


def test_print_config_bad_config_is_an_error_not_yaml(demo_data, capsys):
    code = train_main([str(DEMO), "--print-config", f"data_root={demo_data.root}", "train.epoch=2"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "train.epoch: unknown key; did you mean 'train.epochs'?" in captured.err


@pytest.mark.parametrize("argv", [
    ["run", str(DEMO)],
    ["slurm", str(DEMO)],
])
def test_orchestrator_run_and_slurm_print_a_run_spec(argv, demo_data, tmp_path, capsys):
    extra = [f"data_root={demo_data.root}", f"output_root={tmp_path / 'runs'}"]
    printed = resolved_yaml(capsys, orchestrator_main([*argv, *extra, "--print-config"]))
    assert set(printed) == set(RunSpec.model_fields)
    assert printed["train"]["epochs"] == load_spec(DEMO, extra).train.epochs
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [
    ["sweep", str(STUDY)],
    ["slurm", str(STUDY)],
    ["demo", str(STUDY)],
])
def test_orchestrator_study_commands_print_the_study_and_its_runs(argv, demo_data, tmp_path, capsys):
    extra = [f"data_root={demo_data.root}", f"output_root={tmp_path / 'runs'}", "seeds=[0,1,2]"]
    if argv[0] == "demo":
        extra = [*extra, "--data-dir", str(demo_data.root)]
    printed = resolved_yaml(capsys, orchestrator_main([*argv, *extra, "--print-config"]))
    assert not (tmp_path / "runs").exists()
    assert printed["axes"]["seeds"] == [0, 1, 2]
    assert printed["axes"]["sweep"]["max_concurrent_trials"] is None  # defaults of the study keys too
    runs = printed["runs"]
    first_stage = {"baseline", "grouped", "shallow", "multiplexed"}
    assert len(runs) == 21 and all(set(r) == set(RunSpec.model_fields) for r in runs)
    assert {r["condition"] for r in runs} == first_stage | {"pruned", "recovered", "finetuned"}
    grouped = next(r for r in runs if r["condition"] == "grouped")
    assert grouped["strategies"] == [{"name": "grouped", "params": {"group_size": 2, "scale": None, "init": "first"}}]
    assert all(r["train"]["epochs"] == 12 for r in runs if r["condition"] in first_stage)
