"""Bad input and faults, at the command line: every failure is one line on stderr that names the file
and says what to do, with the documented exit code (exporter/errors.py), no traceback, nothing
half-written left behind and nothing the user had changed."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter import data
from exporter import manifest as mf
from exporter.cli import app
from exporter.errors import MissingRuntimeError
from exporter.fsutil import sha256_path
from tests.conftest import block_imports_code, write_idx, write_idx_dataset

BLOCK_ORT = block_imports_code("onnxruntime")


# ------------------------------------------------------------------------------ helpers

def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_fails(result, code: int, *needles: str, todo: str) -> str:
    """Exit `code`; exactly one non-empty line on stderr, containing every needle and the advice `todo`."""
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}:\n{result.output[-3000:]}"
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    line = lines[0]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert todo in line, f"no advice {todo!r} in {line!r}"
    return line


def temp_files(folder: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".partial")) or ".old-" in p.name)


@pytest.fixture
def run_copy(converted_run, tmp_path):
    """A private copy of the converted run, with no cached reference outputs or validation report."""
    run = tmp_path / "run"
    shutil.copytree(converted_run, run)
    for name in ("reference_outputs.npz", "validation.json"):
        (run / name).unlink(missing_ok=True)
    return run


@pytest.fixture
def keras_file(resmini_keras, tmp_path):
    """A copy of the trained model as a user's .keras file."""
    path = tmp_path / "user.keras"
    shutil.copy2(resmini_keras, path)
    return path


# ------------------------------------------------------------------------------ 1. corrupt artifacts

def _garbage(raw: bytes, run) -> bytes:
    return np.random.default_rng(0).integers(0, 256, len(raw), dtype=np.uint8).tobytes()


MUTATIONS = {
    "empty": lambda raw, run: b"",
    "truncated": lambda raw, run: raw[: len(raw) // 2],
    "garbage": _garbage,
    "onnx_named_tflite": lambda raw, run: (run / "model.onnx").read_bytes(),
    "zip_named_tflite": lambda raw, run: (run / "model.keras").read_bytes(),
    "tflite_named_onnx": lambda raw, run: (run / "model_fp32.tflite").read_bytes(),
}

ARTIFACT_CASES = [  # file, kind, mutation, what the message says, the advice
    ("model_fp32.tflite", "tflite-fp32", "empty", "is empty", "re-create it with `resexport convert --force`"),
    ("model_fp32.tflite", "tflite-fp32", "truncated", "cannot load", "re-create it"),
    ("model_fp32.tflite", "tflite-fp32", "garbage", "not a valid tflite file", "re-create it"),
    ("model_fp32.tflite", "tflite-fp32", "onnx_named_tflite", "content is an ONNX model", "rename the file"),
    ("model_fp32.tflite", "tflite-fp32", "zip_named_tflite", "content is a Keras archive", "rename the file"),
    ("model.onnx", "onnx-fp32", "empty", "is empty", "re-create it with `resexport convert --force`"),
    ("model.onnx", "onnx-fp32", "truncated", "cannot load", "re-create it"),
    ("model.onnx", "onnx-fp32", "garbage", "not a valid onnx file", "re-create it"),
    ("model.onnx", "onnx-fp32", "tflite_named_onnx", "content is a TFLite flatbuffer", "rename the file"),
    ("model_int8.tflite", "tflite-int8", "truncated", "cannot load", "re-create it"),
    # the reference model itself (no cached reference outputs in the copy)
    ("model.keras", "tflite-fp32", "empty", "is empty", "restore the model file"),
    ("model.keras", "tflite-fp32", "truncated", "truncated or corrupt", "re-create it"),
    ("model.keras", "tflite-fp32", "garbage", "not a valid keras file", "re-create it"),
]


@pytest.mark.parametrize("fname, kind, mutation, says, todo", ARTIFACT_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in ARTIFACT_CASES])
def test_validate_corrupt_file_is_bad_input(run_copy, fname, kind, mutation, says, todo):
    path = run_copy / fname
    path.write_bytes(MUTATIONS[mutation](path.read_bytes(), run_copy))
    manifest_before = (run_copy / mf.MANIFEST).read_bytes()
    result = cli("validate", "--run", run_copy, "--artifacts", kind, "--test-limit", "200")
    assert_fails(result, 3, str(path), says, todo=todo)
    assert (run_copy / mf.MANIFEST).read_bytes() == manifest_before
    assert not (run_copy / "validation.json").exists() and temp_files(run_copy) == []


def test_validate_missing_artifact_file(run_copy):
    (run_copy / "model.onnx").unlink()
    result = cli("validate", "--run", run_copy, "--artifacts", "onnx-fp32", "--test-limit", "200")
    assert_fails(result, 3, str(run_copy / "model.onnx"), "does not exist", todo="resexport convert")


# ------------------------------------------------------------------------------ 2-5. bad model files

def _savedmodel_without_variables(tmp_path, model_path):
    import keras

    folder = tmp_path / "sm"
    keras.saving.load_model(model_path).export(str(folder), verbose=False)
    shutil.rmtree(folder / "variables")
    return folder


MODEL_CASES = {  # name -> (make(tmp_path, good_bytes, model_path) -> path, what it says, advice)
    "empty.keras": (lambda t, good, tr: _write(t / "empty.keras", b""), "is empty", "restore the model file"),
    "truncated.keras": (lambda t, good, tr: _write(t / "truncated.keras", good[: len(good) // 2]),
                        "truncated or corrupt", "re-create it"),
    "garbage.h5": (lambda t, good, tr: _write(t / "garbage.h5", _garbage(good, None)[:5000]),
                   "not a valid keras file", "re-create it"),
    "hdf5-truncated.h5": (lambda t, good, tr: _truncated_h5(t, tr), "cannot load", "re-create it"),
    "savedmodel-no-variables": (lambda t, good, tr: _savedmodel_without_variables(t, tr),
                                "missing its variables/ folder", "copy the whole SavedModel folder"),
}


def _write(path, raw: bytes):
    path.write_bytes(raw)
    return path


def _truncated_h5(tmp_path, model_path):
    import keras

    full = tmp_path / "full.h5"
    keras.saving.load_model(model_path).save(full)
    raw = full.read_bytes()
    return _write(tmp_path / "truncated.h5", raw[: len(raw) // 2])


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_convert_bad_model_file_is_bad_input(tmp_path, resmini_keras, case):
    make, says, todo = MODEL_CASES[case]
    model = make(tmp_path, resmini_keras.read_bytes(), resmini_keras)
    run = tmp_path / "new-run"
    result = cli("convert", "--model", model, "--run", run, "--format", "tflite", "--quantize", "none")
    assert_fails(result, 3, str(model), says, todo=todo)
    assert not run.exists() and temp_files(tmp_path) == []


def test_convert_model_with_wrong_input_shape(tmp_path):
    from exporter.models import build_model

    model = tmp_path / "cifar-shaped.keras"
    build_model("resmini", (32, 32, 3), 10).save(model)
    result = cli("convert", "--model", model, "--dataset", "fashion_mnist", "--run", tmp_path / "r")
    assert_fails(result, 3, str(model), "shape (32, 32, 3)", "(28, 28, 1)", todo="pass the matching --dataset")
    assert not (tmp_path / "r").exists()


def test_convert_model_with_wrong_number_of_outputs(tmp_path):
    from exporter.models import build_model

    model = tmp_path / "seven.keras"
    build_model("resmini", (28, 28, 1), 7).save(model)
    result = cli("convert", "--model", model, "--run", tmp_path / "r")
    assert_fails(result, 3, str(model), "outputs 7 values", "not a classifier over",
                 todo="pass the matching --dataset")
    assert not (tmp_path / "r").exists()


def test_lambda_layer_is_refused_unless_unsafe(tmp_path):
    import keras

    inp = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(x))
    model = tmp_path / "lambda.keras"
    keras.Model(inp, out).save(model)

    result = cli("convert", "--model", model, "--run", tmp_path / "r", "--format", "tflite", "--quantize", "none")
    assert_fails(result, 3, str(model), "Lambda", todo="pass --unsafe")
    assert not (tmp_path / "r").exists()

    result = cli("convert", "--model", model, "--run", tmp_path / "r", "--format", "tflite", "--quantize", "none",
                 "--unsafe", "--json")
    assert result.exit_code == 0, result.output
    assert [a["kind"] for a in json.loads(result.stdout)["artifacts"]] == ["tflite-fp32"]
    assert (tmp_path / "r" / "model_fp32.tflite").stat().st_size > 0


def test_unregistered_custom_layer_is_bad_input(tmp_path):
    import keras

    class Doubler(keras.layers.Layer):  # local, never registered: Keras cannot find it when loading
        def call(self, x):
            return x * 2.0

    inp = keras.Input((28, 28, 1), name="image")
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(Doubler()(inp)))
    model = tmp_path / "custom.keras"
    keras.Model(inp, out).save(model)
    result = cli("convert", "--model", model, "--run", tmp_path / "r")
    assert_fails(result, 3, str(model), "custom class 'Doubler'", todo="--custom-objects")
    assert not (tmp_path / "r").exists()


def test_nan_weights_are_bad_input(tmp_path, resmini_keras):
    import keras

    model = keras.saving.load_model(resmini_keras)
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    kernel = np.array(conv.kernel)
    kernel[0, 0, 0, 0] = np.nan
    conv.kernel.assign(kernel)
    path = tmp_path / "nan.keras"
    model.save(path)
    result = cli("convert", "--model", path, "--run", tmp_path / "r", "--format", "tflite", "--quantize", "none")
    assert_fails(result, 3, str(path), "NaN", conv.kernel.path, todo="retrain it")
    assert not (tmp_path / "r").exists()


def test_nan_outputs_fail_validation(run_copy, fmnist):
    from exporter.runtimes import Runner, load_runner
    from exporter.validate import validate

    real = load_runner(run_copy / "model_fp32.tflite", kind="tflite-fp32")

    class NaNRunner(Runner):
        engine = "nan"

        @classmethod
        def load(cls, path, **_):
            return cls(path, device="cpu", info={})

        input_shape = property(lambda self: real.input_shape)
        num_outputs = property(lambda self: real.num_outputs)
        rgb_adapter = property(lambda self: real.rgb_adapter)  # the app-ready file takes RGB

        def _predict(self, x):
            y = real.predict(x)
            y[::7, 3] = np.nan
            return y

    ds = data.subset(fmnist, test_limit=500)
    report = validate(run=run_copy, dataset=ds, kinds=["tflite-fp32", "onnx-fp32"],
                      runners={"tflite-fp32": NaNRunner.load(run_copy / "model_fp32.tflite")})
    by = {r["target"]: r for r in report["artifacts"]}  # a kind on its own runtime: target == kind
    assert report["passed"] is False
    assert by["tflite-fp32"]["passed"] is False and by["tflite-fp32"]["finite"] is False
    assert any("NaN" in f for f in by["tflite-fp32"]["failures"])
    assert by["onnx-fp32"]["passed"] is True
    json.loads((run_copy / "validation.json").read_text())  # the report was written and is valid JSON


# ------------------------------------------------------------------------------ 6. bad data

def _corrupt_gz(folder):
    path = folder / data.IDX_FILES["x_train"]
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path, "corrupt gzip", "fetch it again"


def _wrong_magic(folder):
    path = folder / data.IDX_FILES["y_test"]
    write_idx(path, np.arange(20) % 10, magic=b"\x00\x00\x08\x02")
    return path, "bad IDX magic", "fetch it again"


def _labels_out_of_range(folder):
    write_idx(folder / data.IDX_FILES["y_train"], np.full(60, 12))
    return folder, "labels out of range 0..9", "pass the matching --dataset"


def _shape_mismatch(folder):
    write_idx(folder / data.IDX_FILES["x_test"], np.zeros((20, 27, 28)))
    return folder, "shape (27, 28, 1), expected (28, 28, 1)", "pass the matching --dataset"


def _truncated_payload(folder):
    path = folder / data.IDX_FILES["x_test"]
    import gzip

    payload = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(payload[:-100]))
    return path, "truncated or corrupt", "fetch it again"


DATA_CASES = {"corrupt-gz": _corrupt_gz, "wrong-magic": _wrong_magic, "labels-out-of-range": _labels_out_of_range,
              "train-test-shape-mismatch": _shape_mismatch, "truncated-payload": _truncated_payload}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_train_on_bad_data_is_bad_input(tmp_path, case):
    folder = write_idx_dataset(tmp_path / "fm")
    path, says, todo = DATA_CASES[case](folder)
    result = cli("train", "--data-dir", folder, "--run", tmp_path / "run", "--epochs", "1")
    line = assert_fails(result, 3, says, todo=todo)
    assert str(path) in line  # the file, or the folder for a mismatch between files
    assert not (tmp_path / "run").exists()


def test_missing_dataset_lists_every_place_looked(tmp_path, monkeypatch):
    import keras

    def offline():
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.delenv("RESEXPORT_DATA", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("train", "--dataset", "cifar10", "--data-dir", empty, "--run", tmp_path / "run")
    line = assert_fails(result, 3, "cifar10 not found", str(empty), str(empty / "cifar-10-python.tar.gz"),
                        str(tmp_path / "keras-home" / "datasets"), "network is unreachable",
                        todo="pass --data-dir")
    assert "download" in line
    assert not (tmp_path / "run").exists()


def test_missing_data_dir(tmp_path):
    result = cli("train", "--data-dir", tmp_path / "nope", "--run", tmp_path / "run")
    assert_fails(result, 3, str(tmp_path / "nope"), "does not exist", todo="pass the folder")


# ------------------------------------------------------------------------------ 7. calibration

def test_too_few_calibration_samples_is_usage(run_copy):
    before = {p.name: p.read_bytes() for p in run_copy.iterdir()}
    result = cli("convert", "--run", run_copy, "--format", "tflite", "--quantize", "int8", "--calib-samples", "3",
                 "--force")
    assert_fails(result, 2, "--calib-samples 3", "too few", todo="use at least 10")
    assert {p.name: p.read_bytes() for p in run_copy.iterdir()} == before


# ------------------------------------------------------------------------------ 8. output faults

def test_train_into_a_path_under_a_file_is_output_error_before_training(tmp_path, monkeypatch):
    import keras

    def no_fit(*a, **k):
        raise AssertionError("trained before checking that the run folder can be written")

    monkeypatch.setattr(keras.Model, "fit", no_fit)
    (tmp_path / "afile").write_text("not a folder")
    run = tmp_path / "afile" / "run"
    result = cli("train", "--run", run, "--train-limit", "100", "--test-limit", "100", "--epochs", "1")
    assert_fails(result, 6, f"{tmp_path / 'afile'} is a file", todo="choose a writable location with --run")
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_import_into_a_path_under_a_file_is_output_error(tmp_path, keras_file):
    (tmp_path / "afile").write_text("not a folder")
    result = cli("convert", "--model", keras_file, "--run", tmp_path / "afile" / "run")
    assert_fails(result, 6, str(tmp_path / "afile"), todo="choose a writable location with --run")
    assert (tmp_path / "afile").read_text() == "not a folder"


def _fail_while_writing(monkeypatch, target: str, exc: BaseException):
    """Path.write_bytes (what the exporters write with) writes half of `target`'s temp file, then raises."""
    real = pathlib.Path.write_bytes
    hits = []

    def write_bytes(self, blob):
        if self.name.startswith(f".{target}.") and self.name.endswith(".tmp"):
            hits.append(self)
            real(self, bytes(blob)[: len(blob) // 2])
            raise exc
        return real(self, blob)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
    return hits


@pytest.fixture
def private_tempdir(tmp_path, monkeypatch):
    """Route tempfile's folder (exporters' SavedModel scratch) to a folder the test can inspect."""
    folder = tmp_path / "systmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.parametrize("old", ["absent", "present"])
@pytest.mark.parametrize("fault", ["ENOSPC", "Ctrl-C"])
def test_fault_while_writing_an_artifact_leaves_nothing_behind(run_copy, monkeypatch, private_tempdir, fault, old):
    """absent: the artifact is exported anew; present: it is replaced (--force), and the old file must
    survive the failed write byte for byte (README: the old file is untouched)."""
    if old == "absent":
        (run_copy / "model_fp32.tflite").unlink()  # make convert export it again
    manifest_before = (run_copy / mf.MANIFEST).read_bytes()
    others_before = {p.name: p.read_bytes() for p in run_copy.iterdir()}
    exc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if fault == "ENOSPC" else KeyboardInterrupt()
    hits = _fail_while_writing(monkeypatch, "model_fp32.tflite", exc)

    result = cli("convert", "--run", run_copy, "--format", "tflite", "--quantize", "none",
                 *(["--force"] if old == "present" else []))
    assert hits, "the fault was never injected"
    if fault == "ENOSPC":
        assert_fails(result, 6, str(run_copy / "model_fp32.tflite"), "No space left on device",
                     todo="check the free space")
    else:
        assert_fails(result, 130, "interrupted", todo="nothing half-written was left behind")
    assert (run_copy / "model_fp32.tflite").exists() == (old == "present")  # others_before compares its bytes
    assert temp_files(run_copy) == [] and not any(p.exists() for p in hits)
    assert (run_copy / mf.MANIFEST).read_bytes() == manifest_before
    mf.read_manifest(run_copy)  # still valid
    assert {p.name: p.read_bytes() for p in run_copy.iterdir()} == others_before
    assert list(private_tempdir.iterdir()) == []  # the exporter's SavedModel scratch was cleaned up


def test_ctrl_c_in_a_multi_kind_convert_keeps_the_finished_kinds_recorded(resmini_keras, tmp_path, monkeypatch):
    """README (exit 130): Ctrl-C while the second of several kinds is written: the kind already finished
    stays recorded (file and manifest entry, sha256 matching), the one in progress leaves nothing, the
    later ones were never started; converting again finds the finished kind up to date."""
    run = tmp_path / "run"
    hits = _fail_while_writing(monkeypatch, "model_fp16.tflite", KeyboardInterrupt())
    result = cli("convert", "--model", resmini_keras, "--run", run, "--format", "tflite", "--quantize", "all")
    assert hits, "the fault was never injected"
    assert_fails(result, 130, "interrupted", todo="nothing half-written was left behind")
    monkeypatch.undo()
    man = mf.read_manifest(run)
    assert list(man["artifacts"]) == ["tflite-fp32"]
    assert man["artifacts"]["tflite-fp32"]["sha256"] == sha256_path(run / "model_fp32.tflite")
    assert not any((run / name).exists() for name in ("model_fp16.tflite", "model_dynamic.tflite", "model_int8.tflite"))
    assert temp_files(run) == []
    again = cli("convert", "--run", run, "--format", "tflite", "--quantize", "none", "--json")
    assert again.exit_code == 0, again.output
    assert [a["status"] for a in json.loads(again.stdout)["artifacts"]] == ["up to date"]


def test_atomic_writes_get_the_permissions_a_plain_write_would(tmp_path):
    from exporter.fsutil import write_bytes_atomic

    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "new.json", b"{}")
        (tmp_path / "plain").write_bytes(b"x")
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o644
        (tmp_path / "new.json").chmod(0o640)  # a user's choice survives a replace
        write_bytes_atomic(tmp_path / "new.json", b"{ }")
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640
        from exporter.train import staged_run

        with staged_run(tmp_path / "run", force=False) as tmp:
            (tmp / "x").write_text("x")
        assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755  # as mkdir, not mkdtemp's 0700
    finally:
        os.umask(old)


def test_changed_artifact_is_not_overwritten_without_force(run_copy):
    man = mf.read_manifest(run_copy)
    man["artifacts"]["tflite-fp32"]["source_sha256"] = "0" * 64  # made from some other model
    mf.write_manifest(run_copy, man)
    artifact = run_copy / "model_fp32.tflite"
    artifact.write_bytes(artifact.read_bytes() + b"user's edit")
    before, manifest_before = artifact.read_bytes(), (run_copy / mf.MANIFEST).read_bytes()

    result = cli("convert", "--run", run_copy, "--format", "tflite", "--quantize", "none")
    assert_fails(result, 2, str(run_copy), "model_fp32.tflite", "already exist", todo="pass --force")
    assert artifact.read_bytes() == before and (run_copy / mf.MANIFEST).read_bytes() == manifest_before

    result = cli("convert", "--run", run_copy, "--format", "tflite", "--quantize", "none", "--force", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["artifacts"][0]["status"] == "written"
    assert artifact.read_bytes() != before
    entry = mf.read_manifest(run_copy)["artifacts"]["tflite-fp32"]
    assert entry["source_sha256"] == sha256_path(run_copy / "model.keras")
    assert temp_files(run_copy) == []


# ------------------------------------------------------------------------------ 9. missing runtime/device

@pytest.mark.parametrize("fname, says", [("model_fp32.tflite", "GPU delegate is for Android/iOS"),
                                         ("model.onnx", "pip install onnxruntime-gpu")])
def test_gpu_without_a_gpu_runtime_is_missing_runtime(converted_run, fname, says):
    import onnxruntime

    from exporter.runtimes import load_runner

    if fname.endswith(".onnx") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(MissingRuntimeError) as info:
        load_runner(converted_run / fname, device="gpu")
    assert info.value.exit_code == 5 and says in info.value.one_line()


def test_missing_onnxruntime_is_exit_5_with_the_pip_line(run_copy):
    code = BLOCK_ORT + (
        "from exporter.cli import main\n"
        "sys.argv = ['resexport', 'validate', '--run', sys.argv[1], '--artifacts', 'onnx-fp32', '--test-limit', '200']\n"
        "main()\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.run([sys.executable, "-c", code, str(run_copy)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=pathlib.Path(__file__).resolve().parents[1])
    assert proc.returncode == 5, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "onnxruntime" in lines[0] and "pip install" in lines[0]


@pytest.mark.parametrize("backend, args, says", [
    ("jax", [], "Keras runs on the 'jax' backend here (KERAS_BACKEND), which is not installed"),
    ("tensorflow", ["--devices", "2"], "--devices 2 needs Keras on JAX (this is tensorflow), and jax is not installed"),
])
def test_a_missing_keras_backend_is_exit_5_with_the_pip_line(tmp_path, backend, args, says):
    """Issue 30: `KERAS_BACKEND=jax resexport train` without jax (and `--devices 2`, which needs JAX) is a
    one-line refusal naming `pip install jax`, never an internal error. jax is installed here: a real
    process blocks its import."""
    code = block_imports_code("jax") + (
        "from exporter.cli import main\n"
        "sys.argv = ['resexport', 'train', *sys.argv[1:]]\n"
        "main()\n")
    run = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-c", code, *args, "--epochs", "1", "--train-limit", "64",
                           "--test-limit", "32", "--run", str(run)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"},
                          cwd=pathlib.Path(__file__).resolve().parents[1])
    assert proc.returncode == 5, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "internal error" not in proc.stderr, proc.stderr[-3000:]
    assert says in lines[0] and "pip install jax" in lines[0], lines[0]
    assert not run.exists()


@pytest.mark.parametrize("case", ["pip-line", "bracket-path"])
def test_messages_are_printed_verbatim(run_copy, tmp_path, monkeypatch, case):
    if case == "pip-line":
        monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails: the optional runtime is missing
        result = cli("validate", "--run", run_copy, "--artifacts", "onnx-fp32", "--test-limit", "200")
        assert_fails(result, 5, "pip install 'resexport[onnx]'", todo="pip install")
    else:
        missing = tmp_path / "exp[/old]"
        assert_fails(cli("validate", "--run", missing), 2, str(missing), todo="resexport train --run")


def test_a_real_process_prints_exactly_one_line(tmp_path):
    """In-process CliRunner cannot see file descriptor 2, where TensorFlow's C++ start-up lines go;
    a real `resexport` process must show the user only the one error line."""
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"not a model at all")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["KERAS_BACKEND"] = "tensorflow"
    proc = subprocess.run([sys.executable, "-m", "exporter", "convert", "--model", str(bad), "--run",
                           str(tmp_path / "r")], capture_output=True, text=True, timeout=300, env=env,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
    assert proc.returncode == 3, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error (bad input): " + str(bad)) and "re-create it" in lines[0]
    assert proc.stdout == "" and not (tmp_path / "r").exists()
