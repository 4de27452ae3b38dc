# The two README commands: `make demo` (the main job on its defaults) and `make test`.
# Both install everything first: the package with its dependencies, the real Fashion-MNIST, and the
# browser runtime (Chromium, the JS packages of exporter/web).
PYTHON ?= python3
PIP_FLAGS ?= -q --disable-pip-version-check
# Test processes (pytest-xdist): the suite runs in two, one a core of the 2-core machines it is sized for.
TEST_WORKERS ?= 2

.PHONY: setup setup-dev data web demo test test-lower-kernels bench

data:
	@bash scripts/get-data.sh

# The browser runtime: Debian's Chromium and the pinned JS packages (npm ci); never fails the set-up.
web:
	@bash scripts/get-web.sh

setup: data web
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[full]'

setup-dev: data web
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[dev]'

demo: setup
	$(PYTHON) -m exporter pipeline

test: setup-dev
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The tests marked `kernels` again, on lower kernel paths: oneDNN at most AVX2, LiteRT without XNNPACK.
test-lower-kernels: setup-dev
	ONEDNN_MAX_CPU_ISA=AVX2 RESEXPORT_TEST_TFLITE_RESOLVER=BUILTIN_WITHOUT_DEFAULT_DELEGATES $(PYTHON) -m pytest -q -m kernels

bench: setup
	$(PYTHON) benchmarks/run_all.py
