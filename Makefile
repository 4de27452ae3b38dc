# The two README commands: `make demo` (the main job on its defaults) and `make test`.
# Both install everything first: the package with its dependencies, and the real Fashion-MNIST.
PYTHON ?= python3
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: setup setup-dev data demo test bench

data:
	@bash scripts/get-data.sh

setup: data
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[full]'

setup-dev: data
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[dev]'

demo: setup
	$(PYTHON) -m exporter pipeline

test: setup-dev
	$(PYTHON) -m pytest -q

bench: setup
	$(PYTHON) benchmarks/run_all.py
