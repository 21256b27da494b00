# Two entry points for a fresh Debian machine: `make demo` and `make test`.
# Both are idempotent: system packages only when missing, the venv only when pyproject.toml changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYS_PKGS := pkg-config libopencv-dev libturbojpeg0-dev libjpeg62-turbo-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench sysdeps install lint clean

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
	$(PY) -m pytest -q tests

# Every benchmark of BENCHMARKS.md, side by side figures printed as ratios (CPU by default; GPU when visible).
bench: install
	$(PY) -m jobs bench --model vit_base_patch16_224 --strategies baseline,grouped,shallow --json build/bench/inference.json
	$(PY) bench/loader_bench.py
	$(PY) bench/convert_bench.py
	$(PY) bench/ray_bench.py

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) *.egg-info
