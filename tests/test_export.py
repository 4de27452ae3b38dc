"""Issue 3: every kind converts, runs in its own runtime, and passes validation against Keras."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter import formats
from exporter import manifest as mf
from exporter.cli import app
from exporter.runtimes import load_runner
from exporter.runtimes.tflite import TFLiteRunner
from exporter.validate import validate
from tests.conftest import BLOCK_TF, edge_child_code, edge_results

KINDS = [k.name for k in formats.EXPORTABLE]


@pytest.mark.kernels
def test_every_kind_passes_validation_on_the_full_test_set(converted_copy, fmnist):
    result = CliRunner().invoke(app, ["validate", "--run", str(converted_copy), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"]["samples"] == 10000 and report["passed"]
    assert list(dict.fromkeys(r["kind"] for r in report["artifacts"])) == KINDS  # (other runtimes' rows beside)
    by = {r["target"]: r for r in report["artifacts"]}
    assert by["tflite-fp32"]["agreement"] >= 99.9 and by["onnx-fp32"]["max_abs_diff"] < 1e-3
    assert by["tflite-int8"]["runner"]["input_quantization"]["scale"] > 0
    assert by["onnx-fp32"]["runner"]["provider"] == "CPUExecutionProvider"
    assert json.loads((converted_copy / "validation.json").read_text())["passed"]


def test_manifest_records_each_artifact(converted_run):
    man = mf.read_manifest(converted_run)
    for name in KINDS:
        e = man["artifacts"][name]
        assert (converted_run / e["file"]).stat().st_size == e["bytes"]
        assert e["source_sha256"] == man["model"]["sha256"] and len(e["sha256"]) == 64
        # the TFLite files take RGB (the app-ready adapter), the ONNX files the model's own gray input
        assert e["inputs"][0]["shape"][1:] == ([28, 28, 3] if e["family"] == "tflite" else [28, 28, 1])
    precision = {"none": "float32", "float16": "float16", "dynamic": "dynamic-int8", "int8": "int8"}
    for kind in formats.EXPORTABLE:  # read from the file itself, not assumed from the kind
        assert man["artifacts"][kind.name]["precision"] == precision[kind.quantize], kind.name
    int8 = man["artifacts"]["tflite-int8"]
    # what an app SDK takes: raw uint8 pixels in (1/255 and 0 for this run's `unit` scale), uint8 scores out
    assert int8["inputs"][0]["dtype"] == "uint8" and int8["outputs"][0]["dtype"] == "uint8"
    assert int8["inputs"][0]["quantization"] == {"scale": pytest.approx(1 / 255), "zero_point": 0}
    assert int8["outputs"][0]["quantization"]["scale"] > 0
    assert int8["calibration"] == man["artifacts"]["onnx-int8"]["calibration"]
    assert int8["calibration"]["count"] == 500 and int8["calibration"]["split"] == "train"
    assert man["artifacts"]["onnx-fp32"]["opset"] == 17
    assert man["artifacts"]["onnx-fp32"]["inputs"][0]["shape"][0] == "batch"


@pytest.mark.kernels
@pytest.mark.parametrize("kind", KINDS)
def test_batch_1_and_batch_n_agree(converted_run, fmnist_small, kind):
    runner = load_runner(converted_run / formats.get(kind).filename, kind=kind)
    x = fmnist_small.x_test[:8]
    batched = runner.predict(x)
    singles = np.concatenate([runner.predict(x[i: i + 1]) for i in range(len(x))])
    assert batched.shape == (8, 10)
    np.testing.assert_allclose(batched, singles, atol=1e-5)


class RawTFLiteRunner(TFLiteRunner):  # a test double
    """Feeds the input tensor as given, without quantising it: what a careless integration does
    with an int8 model. Used by tests to prove validation catches it."""

    def _predict(self, x):
        x = np.repeat(x, 3, axis=-1) if self.rgb_adapter and x.shape[-1] == 1 else x
        self._resize(len(x))
        self.interp.set_tensor(self._in["index"], x.astype(self._in["dtype"]))
        self.interp.invoke()
        y = self.interp.get_tensor(self._out["index"])
        return (y.astype(np.float32) - self._out_q["zero_point"]) * self._out_q["scale"] if self._out_q else y


@pytest.mark.kernels
def test_int8_fed_without_input_quantisation_is_caught(converted_copy, fmnist):
    raw = RawTFLiteRunner.load(converted_copy / "model_int8.tflite")
    report = validate(run=converted_copy, dataset=fmnist, kinds=["tflite-int8"], runners={"tflite-int8": raw})
    assert not report["passed"]
    assert any("agreement" in f for f in report["artifacts"][0]["failures"])


@pytest.mark.kernels
def test_perturbed_weights_fail_with_exit_4(converted_run, tmp_path):
    import onnx

    run = tmp_path / "perturbed"
    shutil.copytree(converted_run, run)
    model = onnx.load(run / "model.onnx")
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        arr = onnx.numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.ndim == 4:  # conv kernels
            init.CopyFrom(onnx.numpy_helper.from_array(arr + rng.normal(0, arr.std() * 0.8, arr.shape).astype(np.float32), init.name))
    onnx.save(model, run / "model.onnx")
    result = CliRunner().invoke(app, ["validate", "--run", str(run), "--artifacts", "onnx-fp32,tflite-fp32"])
    assert result.exit_code == 4
    assert "onnx-fp32" in result.output and "agreement" in result.output and "tflite-fp32:" not in result.output


def test_int8_is_at_most_0_3x_fp32_on_a_seed_model(tmp_path):
    """Size depends on the architecture, not training: residual12 (seed 003) imported from .keras."""
    from exporter.models import build_model

    path = tmp_path / "residual12.keras"
    build_model("residual12", (28, 28, 1), 10).save(path)
    result = CliRunner().invoke(app, ["convert", "--model", str(path), "--run", str(tmp_path / "r"),
                                      "--quantize", "none", "--json"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["convert", "--run", str(tmp_path / "r"), "--quantize", "int8", "--json",
                                      "--calib-samples", "50"])
    assert result.exit_code == 0, result.output
    man = mf.read_manifest(tmp_path / "r")
    a = man["artifacts"]
    assert a["tflite-int8"]["bytes"] <= 0.3 * a["tflite-fp32"]["bytes"]
    assert a["onnx-int8"]["bytes"] <= 0.3 * a["onnx-fp32"]["bytes"]


@pytest.mark.parametrize("form", ["h5", "savedmodel"])
def test_legacy_h5_and_savedmodel_inputs_convert_and_validate(resmini_keras, tmp_path, form):
    import keras

    model = keras.saving.load_model(resmini_keras)
    src = tmp_path / ("m.h5" if form == "h5" else "sm")
    model.save(src) if form == "h5" else model.export(str(src), verbose=False)
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["convert", "--model", str(src), "--run", str(run), "--format", "all",
                                 "--quantize", "none"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["validate", "--run", str(run), "--test-limit", "2000", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert {a["kind"] for a in report["artifacts"]} == {"tflite-fp32", "onnx-fp32"}
    assert report["reference"]["kind"] == ("keras" if form == "h5" else "savedmodel")


def test_converting_again_keeps_up_to_date_artifacts(converted_copy):
    before = mf.read_manifest(converted_copy)["artifacts"]["tflite-fp32"]["sha256"]
    r = CliRunner().invoke(app, ["convert", "--run", str(converted_copy), "--format", "tflite", "--quantize", "none", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["artifacts"][0]["status"] == "up to date"
    assert mf.read_manifest(converted_copy)["artifacts"]["tflite-fp32"]["sha256"] == before


def test_validate_and_bench_run_on_an_edge_box_without_tensorflow(converted_copy):
    """Only the runtimes: with TensorFlow's import blocked, in ONE child process (one start-up for the
    three commands): validate against the cached reference outputs an earlier validation wrote; bench
    with --json (the Keras targets skipped); bench's table as printed (dashes for the speed-ups, the
    skip reason whole, no NaN)."""
    run = str(converted_copy)
    commands = [
        ["validate", "--run", run, "--artifacts", "tflite-int8,onnx-fp32,onnx-int8", "--json"],
        ["bench", "--run", run, "--artifacts", "tflite-fp32,onnx-int8", "--batch", "1", "--min-runs", "2",
         "--min-time", "0", "--warmup", "1", "--json"],
        ["bench", "--run", run, "--artifacts", "tflite-fp32,onnx-fp32", "--batch", "1", "--min-runs", "2",
         "--min-time", "0", "--warmup", "1"],
    ]
    code = edge_child_code(BLOCK_TF + f"COMMANDS = {commands!r}\n") + "assert 'tensorflow' not in sys.modules\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": "tensorflow", "COLUMNS": "400"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (v_code, v_out, v_err), (b_code, b_out, b_err), (t_code, table, t_err) = edge_results(proc)
    assert v_code == 0, v_err[-2000:]
    report = json.loads(v_out)
    assert report["passed"] and report["reference"]["source"] == "cache"
    own = [a for a in report["artifacts"] if a["target"] == a["kind"]]  # each kind on its family's own runtime
    assert {a["runner"]["engine"] for a in own} == {"litert", "onnxruntime"}

    assert b_code == 0, b_err[-2000:]
    rep = json.loads(b_out)
    assert {r["kind"] for r in rep["results"]} == {"tflite-fp32", "onnx-int8"}
    assert {s["target"] for s in rep["skipped"]} == {"keras (predict)", "keras (compiled)"}

    assert t_code == 0, t_err[-2000:]
    assert "nan" not in table.lower(), table
    text = " ".join(table.replace("│", " ").split())  # the reason wraps inside its cell: read it whole
    # Keras is there but its backend is not: the line names the backend (exporter.errors.missing_backend)
    assert "Keras runs on the 'tensorflow' backend here (KERAS_BACKEND), which is not installed" in text, table
    assert "install it with: pip install 'resexport[full]'" in text, table
    assert "…" not in table and "–" in table


@pytest.mark.slow
def test_onnx_and_tflite_exports_are_byte_identical_across_processes(resmini_keras, tmp_path):
    """README (Determinism): converting the same model twice gives the same bytes for every kind, also
    from two separate processes (one here, one a fresh `python -m exporter`)."""
    args = ["convert", "--model", str(resmini_keras), "--format", "all", "--quantize", "all",
            "--calib-samples", "100"]
    r = CliRunner().invoke(app, [*args, "--run", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    proc = subprocess.run([sys.executable, "-m", "exporter", *args, "--run", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for kind in formats.EXPORTABLE:
        a, b = (tmp_path / "a" / kind.filename).read_bytes(), (tmp_path / "b" / kind.filename).read_bytes()
        assert len(a) > 1000 and a == b, kind.name


def test_near_ties_are_reported_beside_agreement():
    from exporter.validate import check_gates, compare

    ref = np.array([[0.9, 0.1, 0.0], [0.51, 0.49, 0.0], [0.2, 0.7, 0.1], [0.34, 0.33, 0.33]], np.float32)
    out = ref.copy()
    out[1] = [0.49, 0.51, 0.0]  # flips a near-tie
    labels = np.array([0, 0, 1, 0])
    m = compare(ref, out, labels, ["a", "b", "c"])
    assert m["agreement"] == 75.0 and m["near_ties_percent"] == 50.0 and m["agreement_without_near_ties"] == 100.0
    [failure] = check_gates({**m, "change_points": 0.0}, formats.Gates(min_agreement=99.0))
    assert "agreement 75.00% < 99.0% (100.00% without the 50.0% near-ties" in failure
    out[0] = [0.1, 0.9, 0.0]  # a confident flip counts against both
    m = compare(ref, out, labels, ["a", "b", "c"])
    assert m["agreement"] == 50.0 and m["agreement_without_near_ties"] == 50.0
