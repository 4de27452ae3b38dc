"""Issue 30: OpenVINO as a third runtime, one module and one row of the formats table. It runs the run's
.onnx and .tflite files beside ONNX Runtime and LiteRT; validate, bench and the report show its rows."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter import data, formats
from exporter.cli import app
from exporter.errors import MissingRuntimeError, UsageError
from exporter.runtimes import load_runner

pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install 'resexport[openvino]'")

ROOT = pathlib.Path(__file__).resolve().parents[1]
OV = "openvino"


@pytest.fixture
def run_copy(converted_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(converted_run, run)
    (run / "validation.json").unlink(missing_ok=True)
    return run


def test_the_table_names_openvino_beside_each_familys_own_runtime():
    # OpenVINO runs only when named (its int8 and dynamic-range kernels on an AVX2-only CPU: README, Runtimes)
    assert formats.targets(["onnx-fp32", "tflite-int8"]) == [("onnx-fp32", "onnxruntime"), ("tflite-int8", "litert")]
    assert formats.targets(["onnx-fp32", "tflite-int8"], ["onnxruntime", "litert", OV]) == [
        ("onnx-fp32", "onnxruntime"), ("onnx-fp32", OV), ("tflite-int8", "litert"), ("tflite-int8", OV)]
    assert formats.targets(["onnx-fp32", "tflite-int8"], [OV]) == [("onnx-fp32", OV), ("tflite-int8", OV)]
    assert formats.target_label("onnx-fp32", OV) == "onnx-fp32 · openvino"
    assert formats.target_label("onnx-fp32", "onnxruntime") == "onnx-fp32"
    with pytest.raises(UsageError, match="unknown runtime"):
        formats.targets(["onnx-fp32"], ["tensorrt"])
    with pytest.raises(UsageError, match="no runtime among litert reads onnx-fp32"):
        formats.targets(["onnx-fp32"], ["litert"], explicit_kinds=True)


def test_openvino_runs_onnx_fp32_like_onnx_runtime(converted_run, fmnist):
    x = fmnist.x_test[:500]
    ort = load_runner(converted_run / "model.onnx", kind="onnx-fp32", threads=2)
    ov = load_runner(converted_run / "model.onnx", kind="onnx-fp32", runtime=OV, threads=2)
    a, b = ort.predict(x), ov.predict(x)
    assert np.abs(a - b).max() < 1e-4 and (a.argmax(1) == b.argmax(1)).all()
    assert np.abs(ov.predict(x[:1]) - b[:1]).max() < 1e-5  # dynamic batch: 1 and 500 from one compiled model
    assert ov.info["engine"] == OV and ov.info["runtime"] == OV and ov.info["precision"] == "float32"
    assert ov.info["precision_hint"] == "f32" and ov.info["openvino"].startswith("2026.") and ov.info["threads"] == 2
    assert ov.input_shape == (28, 28, 1) and ov.num_outputs == 10


@pytest.mark.kernels
@pytest.mark.parametrize("kind", ["tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8"])
def test_openvino_reads_every_tflite_kind_like_litert(converted_run, fmnist, kind):
    """The int8 file takes and gives uint8: quantised with the parameters OpenVINO reads from the file,
    which are LiteRT's. Its int8 and dynamic-range kernels are checked only on their VNNI path: on oneDNN's
    AVX2 path (ONEDNN_MAX_CPU_ISA=AVX2, the lower-kernel pass) OpenVINO 2026.4 could not build the
    dynamic-range file's FullyConnected and its int8 agreed 94.6% (README, Runtimes): why it runs only when named."""
    from exporter.cpuinfo import has_vnni

    if formats.get(kind).quantize in ("dynamic", "int8") and (os.environ.get("ONEDNN_MAX_CPU_ISA") or not has_vnni()):
        pytest.skip("OpenVINO's int8/dynamic-range kernels without VNNI: a known gap, README Runtimes")
    path, x = converted_run / formats.get(kind).filename, fmnist.x_test[:300]
    lite, ov = load_runner(path, kind=kind), load_runner(path, kind=kind, runtime=OV)
    a, b = lite.predict(x), ov.predict(x)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.98 and np.abs(a - b).max() < 0.1
    assert ov.info["precision"] == lite.info["precision"]
    if kind == "tflite-int8":
        assert ov.info["input_quantization"]["zero_point"] == lite.info["input_quantization"]["zero_point"]
        assert ov.info["input_quantization"]["scale"] == pytest.approx(lite.info["input_quantization"]["scale"])
        assert ov.info["output_quantization"]["scale"] == pytest.approx(lite.info["output_quantization"]["scale"])


def test_validate_and_report_include_openvino_rows(run_copy, fmnist):
    from exporter.report import write_report
    from exporter.validate import validate

    report = validate(run=run_copy, dataset=data.subset(fmnist, test_limit=1000), kinds=["onnx-fp32", "onnx-int8"],
                      runtimes=["onnxruntime", OV])
    rows = {r["target"]: r for r in report["artifacts"]}
    assert list(rows) == ["onnx-fp32", "onnx-fp32 · openvino", "onnx-int8", "onnx-int8 · openvino"]
    assert report["passed"], [r["failures"] for r in rows.values()]
    ov = rows["onnx-fp32 · openvino"]
    assert ov["kind"] == "onnx-fp32" and ov["runtime"] == OV and rows["onnx-fp32"]["runtime"] == "onnxruntime"
    assert ov["runner"]["precision_hint"] == "f32" and ov["runner"]["precision"] == "float32"
    assert ov["agreement"] == 100.0 and ov["max_abs_diff"] < 1e-4
    assert rows["onnx-int8 · openvino"]["runner"]["precision"] == "int8"
    md = (write_report(run_copy) and (run_copy / "report.md").read_text())
    assert "| onnx-fp32 · openvino |" in md and "| onnx-fp32 |" in md


def test_a_broken_file_on_openvino_fails_like_any_other_kind(run_copy):
    """Conv kernels perturbed in the ONNX file: OpenVINO's row misses its gate, exit 4, the target named."""
    import onnx

    model = onnx.load(run_copy / "model.onnx")
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        arr = onnx.numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.ndim == 4:  # conv kernels
            noisy = arr + rng.normal(0, arr.std() * 0.8, arr.shape).astype(np.float32)
            init.CopyFrom(onnx.numpy_helper.from_array(noisy, init.name))
    onnx.save(model, run_copy / "model.onnx")
    result = CliRunner().invoke(app, ["validate", "--run", str(run_copy), "--artifacts", "onnx-fp32,tflite-fp32",
                                      "--runtimes", OV, "--limit", "500"])
    assert result.exit_code == 4, result.output
    report = json.loads((run_copy / "validation.json").read_text())
    rows = {r["target"]: r for r in report["artifacts"]}
    assert set(rows) == {"onnx-fp32 · openvino", "tflite-fp32 · openvino"}
    assert not rows["onnx-fp32 · openvino"]["passed"] and rows["tflite-fp32 · openvino"]["passed"]
    assert "onnx-fp32 · openvino: agreement" in " ".join(result.output.split())


def test_bench_times_openvino_with_its_precision(converted_run, fmnist_small):
    from exporter.bench import BenchConfig, bench

    cfg = BenchConfig(batches=(1, 4), warmup=1, min_runs=3, min_time=0.0, threads=2)
    rep = bench(run=converted_run, dataset=fmnist_small, cfg=cfg, kinds=["onnx-fp32"], include_reference=False,
                write=False, runtimes=["onnxruntime", OV])
    assert [(r["target"], r["runtime"], r["batch"]) for r in rep["results"]] == [
        ("onnx-fp32", "onnxruntime", 1), ("onnx-fp32", "onnxruntime", 4),
        ("onnx-fp32 · openvino", OV, 1), ("onnx-fp32 · openvino", OV, 4)]
    ov = [r for r in rep["results"] if r["runtime"] == OV]
    assert all(r["precision_hint"] == "f32" and r["threads"] == 2 and r["p50_ms"] > 0 for r in ov)


def test_gpu_on_openvino_without_a_gpu_is_missing_runtime(converted_run):
    import openvino

    if any(d.startswith("GPU") for d in openvino.Core().available_devices):
        pytest.skip("OpenVINO sees a GPU here")
    with pytest.raises(MissingRuntimeError) as info:
        load_runner(converted_run / "model.onnx", runtime=OV, device="gpu")
    assert info.value.exit_code == 5 and "OpenVINO sees no GPU" in info.value.one_line()


def test_without_openvino_its_rows_are_left_out_unless_asked_for(run_copy):
    code = ("import sys\nsys.modules['openvino'] = None\n"
            "from exporter.cli import main\n"
            "sys.argv = ['resexport', 'validate', '--run', *sys.argv[1:], '--artifacts', 'onnx-fp32', "
            "'--limit', '200', '--json']\n"
            "main()\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}

    def run(*args):
        return subprocess.run([sys.executable, "-c", code, str(run_copy), *args], capture_output=True, text=True,
                              timeout=300, env=env, cwd=ROOT)

    plain = run()
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert [r["target"] for r in json.loads(plain.stdout)["artifacts"]] == ["onnx-fp32"]
    asked = run("--runtimes", OV)
    assert asked.returncode == 5, asked.stderr[-3000:]
    lines = [line for line in asked.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "pip install 'resexport[openvino]'" in lines[0], asked.stderr[-3000:]
