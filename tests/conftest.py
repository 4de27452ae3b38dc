"""Shared fixtures. The expensive ones (a model trained on real Fashion-MNIST, its converted
artifacts) are session-scoped so the whole suite trains and converts once."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from exporter import data

# Lower kernel paths (.ci/run's second pass over the tests marked `kernels`): TensorFlow's oneDNN
# honours ONEDNN_MAX_CPU_ISA=AVX2 by itself; LiteRT has no such switch, so RESEXPORT_TEST_TFLITE_RESOLVER
# (an ai_edge_litert OpResolverType name, e.g. BUILTIN_WITHOUT_DEFAULT_DELEGATES: the built-in
# kernels, no XNNPACK; BUILTIN_REF: the reference kernels) makes every Interpreter this process
# creates use it. A test that holds only on one kernel path shows up on any machine.
TFLITE_RESOLVER_ENV = "RESEXPORT_TEST_TFLITE_RESOLVER"


def _force_tflite_resolver(name: str) -> None:
    import ai_edge_litert.interpreter as litert

    resolver = getattr(litert.OpResolverType, name)
    base = litert.Interpreter

    class Interpreter(base):  # what exporter/runtimes and exporter/quantize/diagnose create
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("experimental_op_resolver_type", resolver)
            super().__init__(*args, **kwargs)

    litert.Interpreter = Interpreter


if os.environ.get(TFLITE_RESOLVER_ENV):
    _force_tflite_resolver(os.environ[TFLITE_RESOLVER_ENV])


def pytest_report_header(config):
    return [f"kernel paths: ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(default)')}, "
            f"LiteRT resolver={os.environ.get(TFLITE_RESOLVER_ENV, '(default: XNNPACK)')}"]


# keras.applications models end to end (tests/test_applications.py) are opt-in: minutes each on 2 cores,
# and what they found is covered by tests/test_conformance.py's tiny model.
APPLICATIONS_ENV = "RESEXPORT_TEST_APPLICATIONS"


def pytest_collection_modifyitems(config, items):
    if os.environ.get(APPLICATIONS_ENV):
        return
    skip = pytest.mark.skip(reason=f"keras.applications end to end: opt-in, set {APPLICATIONS_ENV}=1")
    for item in items:
        if "applications" in item.keywords:
            item.add_marker(skip)


# The fuzzers explore new random inputs on every local run; under CI (CI=true, set by .ci/run) they
# replay a fixed derandomized sequence, so a red CI always means a change, never a lucky draw.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def fmnist() -> data.Dataset:
    """The real Fashion-MNIST (Debian package or keras.datasets download)."""
    return data.load_dataset("fashion_mnist")


@pytest.fixture(scope="session")
def fmnist_small(fmnist) -> data.Dataset:
    """A stratified real slice: 10000 train, 1000 test images."""
    return data.subset(fmnist, train_limit=10000, test_limit=1000)


FIXTURES = Path(__file__).resolve().parent / "fixtures"
RESMINI_KERAS = FIXTURES / "resmini_fmnist.keras"
"""resmini trained 3 epochs on the real 10000-image slice (tests/fixtures/make_fixtures.py), ~85%
test accuracy: confident enough that int8 agreement is a meaningful check. Committed, so the numbers
tests assert about it are the same on every CPU (training is not bit-identical across instruction sets)."""


@pytest.fixture(scope="session")
def resmini_keras() -> Path:
    """The committed trained model file (read-only: copy it before changing it)."""
    return RESMINI_KERAS


@pytest.fixture(scope="session")
def resmini_run(tmp_path_factory, fmnist) -> Path:
    """A run folder made around the committed trained model (`convert --model`), no artifacts yet."""
    from exporter.convert import import_model

    return import_model(RESMINI_KERAS, run=tmp_path_factory.mktemp("runs") / "resmini-fixture", dataset=fmnist)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, fmnist_small):
    """resmini trained 3 epochs on the real slice, in this session: for the tests of training itself.
    Tests that assert numbers of a trained model use the committed fixture (resmini_run) instead."""
    from exporter.train import RECIPES, train
    from dataclasses import replace

    run = tmp_path_factory.mktemp("runs") / "resmini-small"
    result = train(model_name="resmini", dataset=fmnist_small, run=run,
                   recipe=replace(RECIPES["fast"], epochs=3), seed=0)
    return result


# ------------------------------------------------------------------ writers of the real formats

def write_idx(path: Path, array: np.ndarray, *, magic: bytes | None = None, gz: bool = True) -> Path:
    array = np.asarray(array, dtype=np.uint8)
    header = magic or bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_idx_dataset(folder: Path, n_train=60, n_test=20, classes=10, shape=(28, 28), seed=0,
                      labels_train=None) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / data.IDX_FILES["x_train"], rng.integers(0, 256, (n_train, *shape)))
    y_train = labels_train if labels_train is not None else np.arange(n_train) % classes
    write_idx(folder / data.IDX_FILES["y_train"], y_train)
    write_idx(folder / data.IDX_FILES["x_test"], rng.integers(0, 256, (n_test, *shape)))
    write_idx(folder / data.IDX_FILES["y_test"], np.arange(n_test) % classes)
    return folder


def cifar_batch_bytes(images_nhwc: np.ndarray, labels, name=b"batch") -> bytes:
    """Exactly the CIFAR-10 python format: a protocol-2 pickle of a dict with bytes keys, 'data' as
    (N, 3072) uint8 in channel-major order (1024 R, 1024 G, 1024 B)."""
    flat = np.asarray(images_nhwc, np.uint8).transpose(0, 3, 1, 2).reshape(len(images_nhwc), 3072)
    obj = {b"batch_label": name, b"labels": [int(v) for v in labels], b"data": flat,
           b"filenames": [b"img_%d.png" % i for i in range(len(labels))]}
    return pickle.dumps(obj, protocol=2)


def write_cifar_folder(folder: Path, per_batch=20, seed=0) -> tuple[Path, dict]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for name in (*data.CIFAR_TRAIN_BATCHES, data.CIFAR_TEST_BATCH):
        imgs = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch)
        (folder / name).write_bytes(cifar_batch_bytes(imgs, labels, name.encode()))
        truth[name] = (imgs, labels)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in data.CIFAR10_CLASSES]}, protocol=2))
    return folder, truth


@pytest.fixture(scope="session")
def converted_run(resmini_run, fmnist):
    """The committed trained model's run with every artifact kind exported and validated once per
    test session. Validating here writes the cached reference outputs (reference_outputs.npz) that an
    edge box without TensorFlow needs, so no test depends on another having validated first.
    Tests that change the run copy it first (run_copy)."""
    from exporter import formats
    from exporter.api import ConvertOptions
    from exporter.convert import convert
    from exporter.validate import validate

    status = convert(run=resmini_run, kinds=formats.select("all", "all"), dataset=fmnist,
                     calib_samples=ConvertOptions.calib_samples)
    assert set(status) == {k.name for k in formats.EXPORTABLE}
    validate(run=resmini_run, dataset=fmnist, kinds=["tflite-fp32"])  # computes and caches the reference
    before = folder_digest(resmini_run)
    yield resmini_run
    # README: no test relies on another's leftovers, so none may leave any here (a validation.json
    # that fails, a bench.json): a test that writes into the run works on a copy (run_copy)
    changed = sorted(set(before.items()) ^ set(folder_digest(resmini_run).items()))
    assert not changed, f"tests wrote into the shared converted_run (copy it first): {sorted({n for n, _ in changed})}"


@pytest.fixture
def converted_copy(converted_run, tmp_path) -> Path:
    """A private copy of converted_run, for a test that writes into the run (validation.json,
    bench.json, a re-converted artifact)."""
    import shutil

    run = tmp_path / "converted"
    shutil.copytree(converted_run, run)
    return run


EDGE_SPLIT = "=====8<====="


def edge_child_code(prelude: str) -> str:
    """Python source for ONE child process that runs several CLI commands in turn (`COMMANDS`: a list
    of argv lists that `prelude` defines after its import blocker), each followed by a separator line
    with its exit code on stdout and on stderr: an edge-box test starts one process, not one a command."""
    return prelude + (
        "import sys\n"
        "from exporter.cli import main\n"
        "for argv in COMMANDS:\n"
        "    sys.argv = ['resexport', *argv]\n"
        "    try:\n"
        "        main()\n"
        "        code = 0\n"
        "    except SystemExit as e:\n"
        "        code = e.code or 0\n"
        f"    print('{EDGE_SPLIT}', code, flush=True)\n"
        f"    sys.stderr.write('{EDGE_SPLIT} %s\\n' % code)\n"
        "    sys.stderr.flush()\n")


def edge_results(proc) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each command an edge_child_code process ran, in order."""
    def parts(text):
        chunks = text.split(EDGE_SPLIT)
        return [c.split("\n", 1)[1] if i else c for i, c in enumerate(chunks[:-1])], chunks[1:]

    stdout, tails = parts(proc.stdout)
    stderr, _ = parts(proc.stderr)
    codes = [int(t.split("\n", 1)[0]) for t in tails]
    return list(zip(codes, stdout, stderr))


def folder_digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `folder`."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def block_imports_code(*modules: str) -> str:
    """Python source that makes importing `modules` (and their submodules) fail, as on a machine
    without them; prepend it to code run in a subprocess."""
    return ("import importlib.abc, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {modules!r}:\n"
            "            raise ImportError(f'{name} is blocked in this test')\n"
            "sys.meta_path.insert(0, Block())\n")


BLOCK_TF = block_imports_code("tensorflow")
