# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first,
# with the CPU torch pinned by constraints.txt (the package itself asks for torch>=2.5).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,bench]'
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m polymixer.cli demo

bench: $(STAMP)
	$(PY) benchmarks/bench_mixer.py

clean:
	rm -rf $(VENV) build *.egg-info
