# The two README commands: `make demo` (the main job on its defaults) and `make test`.
# Both install everything first: the package with its dependencies, and the real Fashion-MNIST.
PYTHON ?= python3
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: setup setup-dev data demo test test-lower-kernels bench

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

# The tests marked `kernels` again, on lower kernel paths: oneDNN at most AVX2, LiteRT without XNNPACK.
test-lower-kernels: setup-dev
	ONEDNN_MAX_CPU_ISA=AVX2 RESEXPORT_TEST_TFLITE_RESOLVER=BUILTIN_WITHOUT_DEFAULT_DELEGATES $(PYTHON) -m pytest -q -m kernels

bench: setup
	$(PYTHON) benchmarks/run_all.py
