# Two entry points for a fresh Debian machine: `make demo` and `make test`.
# Both are idempotent: system packages only when missing, the venv only when pyproject.toml changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYS_PKGS := pkg-config libopencv-dev libturbojpeg0-dev libjpeg62-turbo-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test gpu-check bench bench-p1 bench-p2 bench-p3p4 bench-p5 bench-p7 bench-p7b bench-p9 bench-p11 bench-stages bench-scale sysdeps install lint clean

sysdeps:
	@missing=$$(for p in $(SYS_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages: $$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml | sysdeps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -c 'from data.jpegcrop import build; print("region JPEG decoder:", build())'
	@touch $(STAMP)

install: sysdeps $(STAMP)

demo: install
	$(PY) -m orchestrator demo

test: install
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=25 tests

# Every benchmark of BENCHMARKS.md, side by side figures printed as ratios (CPU by default; GPU when visible).
# Each command runs through bench/record.py, which appends date, machine, command and figures to
# BENCHMARKS.md's log. One at a time: `make bench-p5`. ~20-25 min + P7 + P11 (~6 min) on a 2-core machine (BENCHMARKS.md, Log);
# `make -k bench` goes on past a failing one.
RECORD := $(PY) bench/record.py
bench: bench-p1 bench-p2 bench-p3p4 bench-p5 bench-p7 bench-p7b bench-p9 bench-p11 bench-stages bench-scale

bench-p1: install
	$(RECORD) -- $(PY) bench/loader_bench.py

bench-p2: install
	$(RECORD) --figures-file build/bench/inference.json -- $(PY) -m jobs bench --model vit_base_patch16_224 --strategies baseline,grouped,shallow --json build/bench/inference.json

# P4 needs runs of minutes: with seconds-long runs the fixed start-up of each trial dominates the ratio.
bench-p3p4: install
	$(RECORD) -- $(PY) bench/ray_bench.py p3 --epochs 20 --threads 1 --rounds 2
	$(RECORD) -- $(PY) bench/ray_bench.py p4 --epochs 100 --threads 1

bench-p5: install
	$(RECORD) -- $(PY) bench/convert_bench.py --write-mode proportion
	$(RECORD) -- $(PY) bench/convert_bench.py --write-mode jpg

bench-p7: install
	$(RECORD) -- $(PY) bench/worker_kill.py

bench-p7b: install
	$(RECORD) -- $(PY) bench/stop_signal.py

bench-p9: install
	$(RECORD) -- $(PY) bench/distill_step.py

# ASHA with random search against the exhaustive grid, side by side (two tuned studies, ~10 min on 2 cores).
bench-p11: install
	$(RECORD) -- $(PY) bench/tune_vs_grid.py

bench-stages: install
	rm -rf build/bench/stage-latency
	$(RECORD) -- $(PY) bench/stage_latency.py --out build/bench/stage-latency

# On a GPU machine, < 8 min on one H200: NCCL init, a killed and resumed demo run, P2 (eager and compiled) and P6
# with its MFU, recorded in BENCHMARKS.md with the GPU's name. `make gpu-check GPU_CHECK_ARGS="--device cpu --quick"`
# is the CPU smoke test of the same script (tests/test_gpu_check.py runs it in `make test`).
GPU_CHECK_ARGS ?=
gpu-check: install
	$(RECORD) --figures-file build/bench/gpu_check.json -- $(PY) bench/gpu_check.py --json build/bench/gpu_check.json $(GPU_CHECK_ARGS)

# Control plane per concurrent run (1, 2, 4, 8 runs, engine stand-in) and study size; Tune's experiment state and
# scheduling latency as the study grows (stand-in trials); a 500-run study's status.
bench-scale: install
	$(RECORD) -- $(PY) bench/control_plane.py
	$(RECORD) -- $(PY) bench/tune_scale.py
	$(RECORD) -- $(PY) bench/study_status.py

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) *.egg-info
