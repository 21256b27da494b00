"""Reliability: malformed configs through the real entry points.

One table of broken run specs and studies (types, ranges, unknown keys, impossible strategy/model
combinations, missing or wrong files, resource requests larger than the cluster), each with the one
problem it has. Through `jobs.spec.load_spec`, `jobs.study.load_study` and, for a few, the CLIs
(`python -m jobs train`, `python -m orchestrator run|sweep`): each must give exactly one one-line error
naming the field or file, exit status 2 from a CLI, and start nothing (no run directory, no Ray).
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from jobs.spec import SpecError, load_spec
from jobs.study import load_study
from orchestrator.resources import ClusterShape, fits_on

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
# The cluster the study cases are judged against: this 2-core, GPU-less machine, whatever runs the test.
CLUSTER = ClusterShape(cpus=2, gpus=0, node_cpus=2, node_gpus=0)
# The model every case starts from, pinned so the cases stay broken whatever demo.yaml's model becomes.
MODEL = {"name": "vit_tiny_patch16_224", "num_classes": 10, "patch_size": 8, "depth": 6, "embed_dim": 64,
         "num_heads": 4, "kwargs": {}}


@dataclass(frozen=True)
class Case:
    name: str
    entry: str                      # spec | study | train (CLI) | run (CLI) | sweep (CLI)
    overrides: tuple[str, ...] = ()
    expect: tuple[str, ...] = ()    # substrings of the (first) error line
    config: str | None = None       # replace the config file's text (missing/invalid file cases)
    count: int = 1                  # lines: 2 where train and val both have it, or a node and the cluster total


CASES = [
    # types
    Case("int as word", "spec", ("train.epochs=three",), ("train.epochs:", "'three'")),
    Case("list for int", "spec", ("model.depth=[1, 2]",), ("model.depth:",)),
    Case("literal", "spec", ("train.amp_dtype=fp8",), ("train.amp_dtype:", "'bfloat16' or 'float16'")),
    Case("section as value", "spec", ("train=5",), ("train:", "valid dictionary")),
    # ranges
    Case("negative lr", "spec", ("train.lr=-1",), ("train.lr:", "greater than 0")),
    Case("smoothing >= 1", "spec", ("train.smoothing=1.5",), ("train.smoothing:",)),
    Case("probability > 1", "spec", ("data.hflip=2",), ("data.hflip:",)),
    Case("reversed crop range", "spec", ("data.rrc_scale=[0.9, 0.1]",), ("data.rrc_scale:", "low <= high")),
    Case("keep_last 1", "spec", ("checkpoint.keep_last=1",), ("checkpoint.keep_last:",)),
    Case("odd batch with mixup", "spec", ("train.batch_size=63", "train.mixup=0.8"), ("batch_size 63 must be even",)),
    Case("run_id with a slash", "spec", ("run_id=a/b",), ("run_id:", "one folder name")),
    Case("bad RandAugment string", "spec", ("data.auto_augment=rand-q9",), ("data.auto_augment:",)),
    # unknown keys
    Case("misspelt key", "spec", ("train.epoch=3",), ("train.epoch: unknown key; did you mean 'train.epochs'?",)),
    Case("unknown section", "spec", ("optimizer.lr=1",), ("optimizer: unknown key",)),
    Case("unknown data key", "spec", ("data.img_sz=32",), ("data.img_sz: unknown key", "data.img_size")),
    Case("not key=value", "spec", ("train.epochs",), ("'train.epochs'", "key=value")),
    # impossible strategy / model combinations
    Case("unknown strategy", "spec", ("strategies=[{name: groupd}]",), ("groupd", "grouped")),
    Case("depth not divisible", "spec", ("strategies=[{name: grouped, params: {group_size: 4}}]",),
         ("not divisible by group_size 4",)),
    Case("keep_ratio > 1", "spec", ("strategies=[{name: shallow, params: {keep_ratio: 1.5}}]",),
         ("strategy shallow: keep_ratio", "less than or equal to 1")),
    Case("unknown strategy param", "spec", ("strategies=[{name: shallow, params: {ratio: 0.5}}]",),
         ("unknown parameter 'ratio'", "keep_ratio")),
    Case("not a timm model", "spec", ("model.name=vit_tinyy_patch16_224",),
         ("'vit_tinyy_patch16_224' is not a timm model name", "vit_tiny_patch16_224")),
    Case("strategy on a CNN", "spec", ("model.name=resnet18", "model.patch_size=null", "model.depth=null",
                                       "model.embed_dim=null", "model.num_heads=null",
                                       "strategies=[{name: grouped}]"), ("model resnet18 cannot be created",)),
    Case("heads do not divide width", "spec", ("model.num_heads=5",), ("cannot be created", "divisible by num_heads")),
    # missing or wrong files
    Case("missing dataset", "spec", ("data.train_path=missing.beton",), ("data.train_path:", "missing.beton does not exist")),
    Case("folder for ffcv", "spec", ("data.val_path=val",), ("data.val_path:", "needs a .beton file")),
    Case("beton for torch", "spec", ("data.backend=torch",), ("data.train_path:", "ImageNet-layout folder"), count=2),
    Case("label map vs num_classes", "spec", ("model.num_classes=7",), ("has 10 classes", "num_classes=7"), count=2),
    Case("no such config", "spec", config="<missing>", expect=("no such config file",)),
    Case("invalid YAML", "spec", config="model: [unclosed\n", expect=("invalid YAML",)),
    Case("YAML list", "spec", config="- a\n- b\n", expect=("top level must be a mapping",)),
    # studies, and requests larger than the cluster
    Case("cpus per worker > node", "study", ("resources.cpus_per_worker=64",),
         ("resources.cpus_per_worker=64 but the largest node has 2 CPUs",), count=2),  # + the cluster total
    Case("workers x cpus > cluster", "study", ("resources.num_workers=8", "resources.cpus_per_worker=1"),
         ("8 workers x 1 CPUs = 8 > 2 CPUs in the cluster",)),
    Case("GPUs on a CPU cluster", "study", ("resources.use_gpu=true", "resources.gpus_per_worker=1"),
         ("gpus_per_worker=1 but the largest node has 0 GPUs", "use_gpu=false"), count=2),  # + the total
    Case("unknown grid axis", "study", ("grid.train.lrr=[0.1, 0.2]",), ("unknown axis 'train.lrr'", "train.lr")),
    Case("duplicate seeds", "study", ("seeds=[0, 0]",), ("seeds:", "duplicates")),
    Case("axis of an unused strategy", "study", ("grid.strategy.shallow.keep_ratio=[0.5]",),
         ("no condition uses strategy 'shallow'",)),
    Case("empty grid axis", "study", ("grid.train.lr=[]",), ("train.lr", "no values")),
    Case("bad sweep option", "study", ("sweep.max_failures=-5",), ("sweep.max_failures:",)),
    # the command lines: exit 2, nothing started
    Case("jobs train: bad type", "train", ("train.lr=fast",), ("train.lr:", "'fast'")),
    Case("orchestrator run: too many CPUs", "run", ("resources.cpus_per_worker=999",), ("cpus_per_worker=999",), count=2),
    Case("orchestrator sweep: unknown key", "sweep", ("train.epoch=3",), ("train.epoch: unknown key",)),
]


def _study_text(demo_data) -> str:
    return yaml.safe_dump({"base": str(DEMO), "data_root": str(demo_data.root), "seeds": [0], "model": MODEL,
                           "conditions": {"baseline": {}, "grouped": {"strategies": [{"name": "grouped"}]}},
                           "resources": {"num_workers": 1, "cpus_per_worker": 1, "use_gpu": False}})


def _config(case: Case, demo_data, folder: Path) -> Path:
    path = folder / "config.yaml"
    if case.config == "<missing>":
        return path
    if case.config is not None:
        path.write_text(case.config)
    elif case.entry in ("study", "sweep"):
        path.write_text(_study_text(demo_data))
    else:
        raw = yaml.safe_load(DEMO.read_text())
        raw["data_root"] = str(demo_data.root)
        raw["model"] = dict(MODEL)
        raw["resources"]["cpus_per_worker"] = 1
        path.write_text(yaml.safe_dump(raw))
    return path


def _cli(case: Case, config: Path, out: Path, ray_tmp: Path) -> subprocess.Popen:
    module = "jobs" if case.entry == "train" else "orchestrator"
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}  # a Ray that starts would create its session here
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", module, case.entry, str(config), f"output_root={out}", *case.overrides],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _errors_in_process(case: Case, config: Path, out: Path) -> list[str]:
    overrides = [f"output_root={out}", *case.overrides]
    try:
        if case.entry == "spec":
            load_spec(config, overrides)
        else:
            load_study(config, overrides, judge=fits_on(CLUSTER))
    except SpecError as exc:
        return exc.errors
    return []


def _cli_errors(stderr: str) -> list[str]:
    # `error: <what>:` then one indented line per problem
    lines = stderr.strip().splitlines()
    return [line.strip() for line in lines[1:]] if lines and lines[0].startswith("error:") else lines


def test_malformed_configs_give_one_line_errors_and_start_nothing(demo_data, tmp_path):
    assert len(CASES) >= 20
    folders = {}
    for i, case in enumerate(CASES):
        folder = tmp_path / f"case{i:02d}"
        folder.mkdir()
        folders[case.name] = (folder, _config(case, demo_data, folder))
    # the command lines are slow to import: start them all first, check the in-process cases meanwhile
    procs = {c.name: _cli(c, folders[c.name][1], folders[c.name][0] / "out", folders[c.name][0] / "ray")
             for c in CASES if c.entry in ("train", "run", "sweep")}
    problems = []
    try:
        results = {}
        for case in CASES:
            if case.name not in procs:
                folder, config = folders[case.name]
                results[case.name] = (None, _errors_in_process(case, config, folder / "out"))
        for name, proc in procs.items():
            _, stderr = proc.communicate(timeout=240)
            results[name] = (proc.returncode, _cli_errors(stderr))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for case in CASES:
        folder, _ = folders[case.name]
        code, errors = results[case.name]
        why = []
        if code is not None and code != 2:
            why.append(f"exit status {code}, expected 2")
        if len(errors) != case.count:
            why.append(f"{len(errors)} errors, expected exactly {case.count}")
        if any("\n" in e or not e.strip() for e in errors):
            why.append("an error is not one non-empty line")
        if errors and not all(s in errors[0] for s in case.expect):
            why.append(f"expected {case.expect} in the error")
        if (folder / "out").exists():
            why.append("an output directory was written")
        if (folder / "ray").exists():
            why.append("Ray was started")
        if why:
            problems.append(f"{case.name} ({case.entry} {' '.join(case.overrides)}): {'; '.join(why)}: {errors}")
    assert not problems, "\n" + "\n".join(problems)
