# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first, with
# torch pinned by constraints.txt (the package itself asks for torch>=2.5). The demo needs the
# package alone (its checkpoints ship inside it); `make test` adds the [test] extras
# (TensorBoard, diffusers, Triton, ...) to the same environment, on its first run.
PYTHON ?= python3
VENV ?= .venv
# Extra pip options, e.g. the CPU-only torch on Linux:
#   make demo PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_ARGS ?=
PY := $(VENV)/bin/python
BASE := $(VENV)/.installed-base
TEST := $(VENV)/.installed-test

.PHONY: test demo bench venv clean

venv: $(BASE)

$(BASE): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_ARGS) -c constraints.txt -e .
	touch $(BASE)

$(TEST): $(BASE)
	$(PY) -m pip install --quiet $(PIP_ARGS) -c constraints.txt -e '.[test]'
	touch $(TEST)

test: $(TEST)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

demo: $(BASE)
	HF_HUB_OFFLINE=1 $(PY) -m polymixer.cli demo

bench: $(BASE)
	$(PY) -m pip install --quiet $(PIP_ARGS) -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/bench_mixer.py

clean:
	rm -rf $(VENV) build *.egg-info
