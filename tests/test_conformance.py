"""Issue 18: every file we write is valid for every consumer, not only for the runtime we test with.

- the write-time gate (exporter.export.conformance): a file that fails the ONNX checker, strict
  shape inference, LiteRT loading or the one-image-in / batch-x-classes-out signature is never
  written, and the error names the check;
- the two exports that broke at their source: ONNX float16 (input Casts after their readers) and
  models whose traced function captures tensors (Keras `Normalization`: EfficientNet, ConvNeXt)
  or calls XLA-compiled functions (grouped convolutions) or uses exact GELU (TF's Erfc);
- one kind that cannot be made or run is that kind's failure, the others still get verdicts;
- a second, independent reader of every kind the suite produces (ONNX reference evaluator against
  ONNX Runtime; the TFLite flatbuffer read back by TensorFlow's Analyzer);
- bench tables without Keras rows show "–", never `nan`, and reasons in full.
"""

from __future__ import annotations

import io
import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter import formats
from exporter import manifest as mf
from exporter.cli import app
from exporter.run import Run

# its module fixture is built once: every test of this file runs in one xdist worker (Makefile: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("conformance")

SHAPE = (8, 8, 3)
CLASSES = 4


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def tricky_model():
    """A tiny classifier with each feature that broke an export: Rescaling + Normalization (its mean
    and variance are tensors the traced function captures), a grouped convolution (Keras runs it in
    an XLA-compiled call), exact GELU (TF's Erfc). Weights fixed by seed, outputs far from ties."""
    import keras

    keras.utils.set_random_seed(3)
    L = keras.layers
    inputs = keras.Input(SHAPE, name="image")
    x = L.Rescaling(1 / 255)(inputs)
    x = L.Normalization(mean=[0.4, 0.5, 0.6], variance=[0.04, 0.09, 0.16])(x)
    x = L.Conv2D(8, 3, padding="same")(x)
    x = L.Conv2D(8, 3, padding="same", groups=4)(x)
    x = L.Activation("gelu")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(CLASSES, kernel_initializer=keras.initializers.RandomNormal(stddev=2.0, seed=1))(x)
    outputs = L.Softmax()(x)
    return keras.Model(inputs, outputs)


def images(n=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def tricky(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tricky")
    model = tricky_model()
    path = folder / "tricky.keras"
    model.save(path)
    return model, path


@pytest.fixture
def source(tricky):
    from exporter.export.source import ExportSource

    src = ExportSource(tricky[1], "keras", SHAPE, num_classes=CLASSES)
    yield src
    src.cleanup()


def ort_run(path_or_bytes, x):
    import onnxruntime as ort

    data = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def reference_run(path, x):
    """The second ONNX consumer: onnx's own reference evaluator (strict about order and types).
    It implements (De)QuantizeLinear only from opset 19, so a QDQ graph (opset 17) is read after
    onnx's version converter lifts it to 19 (a third consumer: it must parse the graph too)."""
    import onnx
    from onnx import version_converter
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 19 and any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        model = version_converter.convert_version(model, 19)
        onnx.checker.check_model(model, full_check=True)
    return ReferenceEvaluator(model).run(None, {"image": x})[0]


# ------------------------------------------------------------------ the sources of the two bugs

def test_captured_tensors_become_initializers_not_inputs(tricky, source, tmp_path):
    import onnx

    from exporter.export import onnx as eo

    model, _ = tricky
    out = tmp_path / "model.onnx"
    details = eo.export_fp32(source, out)
    proto = onnx.load(str(out))
    inits = {t.name for t in proto.graph.initializer}
    assert [v.name for v in proto.graph.input if v.name not in inits] == ["image"]
    assert not [v.name for v in proto.graph.input if v.name in inits]
    ops = {n.op_type for n in proto.graph.node}
    assert "StatefulPartitionedCall" not in ops and "Erfc" not in ops
    conf = details["conformance"]
    assert conf["opset"] == eo.OPSET and conf["ir_version"] == proto.ir_version
    assert conf["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", *SHAPE]}]
    assert conf["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": ["batch", CLASSES]}]
    x = images()
    keras_out = np.asarray(model(x, training=False))
    assert np.abs(ort_run(out, x) - keras_out).max() < 1e-5
    assert np.abs(reference_run(out, x) - keras_out).max() < 1e-5


def test_float16_graph_is_sorted_at_its_source(source, tmp_path):
    """ORT's float16 converter appends the input Cast after the nodes that read it: the checker
    refuses that graph. export_fp16 sorts it; the result passes the full checker and the reference
    evaluator agrees with ONNX Runtime to the fp16 gate."""
    import onnx
    from onnxruntime.transformers import float16

    from exporter.export import onnx as eo

    raw = float16.convert_float_to_float16(eo.onnx_fp32_proto(source), keep_io_types=True)
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(raw, full_check=True)
    out = tmp_path / "model_fp16.onnx"
    eo.export_fp16(source, out)
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    x = images()
    gate = formats.get("onnx-fp16").gates.max_abs_diff
    assert np.abs(reference_run(out, x) - ort_run(out, x)).max() <= gate


def test_topological_sort_keeps_a_sorted_graph_and_orders_an_unsorted_one():
    from onnx import helper, TensorProto

    from exporter.export.onnx import topological_sort

    def graph(order):
        nodes = {"a": helper.make_node("Relu", ["x"], ["a"], name="a"),
                 "b": helper.make_node("Neg", ["a"], ["b"], name="b"),
                 "c": helper.make_node("Add", ["a", "b"], ["y"], name="c")}
        return helper.make_graph([nodes[k] for k in order], "g",
                                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])

    for order in (["a", "b", "c"], ["c", "b", "a"], ["b", "a", "c"]):
        g = graph(order)
        topological_sort(g)
        assert [n.name for n in g.node] == ["a", "b", "c"]


# ------------------------------------------------------------------ the gate refuses, and names the check

def test_gate_refuses_an_onnx_file_with_a_second_input_and_writes_nothing(source, tmp_path):
    import onnx

    from exporter.export import onnx as eo
    from exporter.export.conformance import ConformanceError

    proto = eo.onnx_fp32_proto(source)
    proto.graph.input.append(onnx.helper.make_tensor_value_info("12345:0", onnx.TensorProto.FLOAT, [1, 1, 1, 3]))
    out = tmp_path / "model.onnx"
    with pytest.raises(ConformanceError, match=r"signature check.*2 graph inputs") as exc:
        eo._write(proto, out, "onnx-fp32", source)
    assert exc.value.exit_code == 70  # ours, never the user's bad input (3)
    assert not out.exists() and temp_files(tmp_path) == []


def test_gate_refuses_a_wrong_class_count_and_an_unsorted_graph(source, tmp_path):
    from onnxruntime.transformers import float16

    from exporter.export import onnx as eo
    from exporter.export.conformance import ConformanceError, write_checked

    data = eo.onnx_fp32_proto(source).SerializeToString()
    with pytest.raises(ConformanceError, match=f"has {CLASSES} classes, expected 7"):
        write_checked(tmp_path / "a.onnx", data, "onnx-fp32", input_shape=SHAPE, num_classes=7)
    with pytest.raises(ConformanceError, match=r"has shape \[8, 8, 3\], expected \[9, 9, 3\]"):
        write_checked(tmp_path / "a.onnx", data, "onnx-fp32", input_shape=(9, 9, 3))
    raw = float16.convert_float_to_float16(eo.onnx_fp32_proto(source), keep_io_types=True)
    with pytest.raises(ConformanceError, match=r"onnx.checker \(full_check\) check.*topologically sorted"):
        write_checked(tmp_path / "b.onnx", raw.SerializeToString(), "onnx-fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_gate_refuses_a_tflite_file_litert_cannot_load(tmp_path):
    from exporter.export.conformance import ConformanceError, write_checked

    out = tmp_path / "model_fp32.tflite"
    with pytest.raises(ConformanceError, match="LiteRT load"):
        write_checked(out, b"TFL3" + b"\0" * 64, "tflite-fp32")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_tflite_signature_is_recorded(tricky, source, tmp_path):
    from exporter.export import tflite as et

    model, _ = tricky
    out = tmp_path / "model_fp32.tflite"
    conf = et.export_fp32(source, out)["conformance"]
    assert conf["interpreter"] == "ai_edge_litert"
    assert [i["shape"] for i in conf["inputs"]] == [[-1, *SHAPE]] and conf["inputs"][0]["dtype"] == "float32"
    assert [o["shape"] for o in conf["outputs"]] == [[-1, CLASSES]]
    assert list(conf["signatures"]) == ["serving_default"]
    from exporter.runtimes import load_runner

    x = images()
    runner = load_runner(out, kind="tflite-fp32")
    assert np.abs(runner.predict(x) - np.asarray(model(x, training=False))).max() < 1e-5
    runner.close()


# ------------------------------------------------------------------ one kind's failure is that kind's

@pytest.fixture
def tricky_run(tricky, tmp_path):
    """A run around the tricky model with a tiny own-data .npz (8x8 RGB, raw pixels)."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "data.npz"
    np.savez(npz, x_train=rng.integers(0, 256, (64, *SHAPE), dtype=np.uint8), y_train=np.arange(64) % CLASSES,
             x_test=rng.integers(0, 256, (64, *SHAPE), dtype=np.uint8), y_test=np.arange(64) % CLASSES)
    return tricky[1], npz, tmp_path / "run"


def test_an_export_failure_is_that_kinds_failure_and_never_bad_input(tricky_run, monkeypatch):
    from exporter.errors import ResexportError
    from exporter.export import onnx as eo

    model, npz, run = tricky_run

    def broken(source, out, calibration=None):
        raise ResexportError("ONNX conversion failed: a deliberate failure")

    monkeypatch.setattr(eo, "export_fp32", broken)
    result = cli("convert", "--model", model, "--data", npz, "--scale", "raw", "--run", run,
                 "--format", "all", "--quantize", "none")
    assert result.exit_code == 70, result.output  # a named export error, not 3 "bad input"
    assert "onnx-fp32 could not be made: ONNX conversion failed: a deliberate failure" in " ".join(result.output.split())
    man = mf.read_manifest(run)
    assert set(man["artifacts"]) == {"tflite-fp32"}
    assert "deliberate failure" in man["export_failures"]["onnx-fp32"]["reason"]
    assert man["artifacts"]["tflite-fp32"]["conformance"]["inputs"][0]["shape"][1:] == list(SHAPE)
    assert not (run / "model.onnx").exists() and temp_files(run) == []

    result = cli("validate", "--run", run, "--json")
    assert result.exit_code == 4, result.output
    report = json.loads((run / "validation.json").read_text())
    verdicts = {r["kind"]: r for r in report["artifacts"]}
    assert set(verdicts) == {"tflite-fp32", "onnx-fp32"}
    assert verdicts["tflite-fp32"]["passed"]
    assert not verdicts["onnx-fp32"]["passed"]
    assert "could not be made" in verdicts["onnx-fp32"]["failures"][0]
    assert cli("report", "--run", run).exit_code == 0

    monkeypatch.undo()  # the kind made once it can be: its failure record goes
    result = cli("convert", "--run", run, "--format", "onnx", "--quantize", "none")
    assert result.exit_code == 0, result.output
    assert "export_failures" not in mf.read_manifest(run)


def test_a_kind_that_cannot_run_gets_a_failed_verdict_and_the_others_still_get_theirs(tricky_run):
    from exporter import data as data_mod
    from exporter.data import choose
    from exporter.errors import ModelFileError
    from exporter.validate import validate

    model, npz, run = tricky_run
    assert cli("convert", "--model", model, "--data", npz, "--scale", "raw", "--run", run,
               "--format", "all", "--quantize", "none").exit_code == 0

    class Broken:
        info = {"engine": "broken"}

        def check_fits(self, *a):
            pass

        def predict_batched(self, *a, **k):
            raise ModelFileError("model.onnx: INVALID_GRAPH (deliberate)")

        def close(self):
            pass

    ds = choose.open_data(str(npz), pp=Run(run).recorded_preprocessing)
    assert isinstance(ds, data_mod.Dataset)
    report = validate(run=run, dataset=ds, runners={"onnx-fp32": Broken()})
    verdicts = {r["target"]: r for r in report["artifacts"]}  # a kind on its own runtime: target == kind
    assert verdicts["tflite-fp32"]["passed"]
    assert not verdicts["onnx-fp32"]["passed"]
    assert verdicts["onnx-fp32"]["failures"] == ["could not run: model.onnx: INVALID_GRAPH (deliberate)"]


# ------------------------------------------------------------------ a second consumer for every kind of the suite

@pytest.mark.parametrize("kind", [k.name for k in formats.EXPORTABLE])
def test_every_kind_of_the_suite_opens_in_a_second_consumer(converted_run, fmnist, kind):
    """ONNX: the reference evaluator agrees with ONNX Runtime to the kind's gate (max |diff|, else its
    batch-invariance tolerance for int8, whose ORT kernels round differently from the reference's
    float arithmetic). TFLite: TensorFlow's Analyzer reads the flatbuffer back with the manifest's
    signature. Every manifest entry has its conformance record."""
    entry = mf.read_manifest(converted_run)["artifacts"][kind]
    path = converted_run / entry["file"]
    conf = entry["conformance"]
    channels = 3 if kind.startswith("tflite") else 1  # the TFLite files take RGB (README, Use the files in an app)
    assert conf["inputs"][0]["shape"][1:] == [28, 28, channels] and conf["outputs"][0]["shape"][1] == 10
    if kind.startswith("onnx"):
        assert conf["opset"] and conf["ir_version"]
        x = fmnist.x_test[:8].astype(np.float32)
        gates = formats.get(kind).gates
        tolerance = gates.max_abs_diff if gates.max_abs_diff is not None else gates.max_batch_diff
        assert np.abs(reference_run(path, x) - ort_run(path, x)).max() <= tolerance
    else:
        import tensorflow as tf

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            tf.lite.experimental.Analyzer.analyze(model_path=str(path))
        text = buf.getvalue()
        assert "Subgraph#0" in text
        assert conf["inputs"][0]["name"] in text and conf["outputs"][0]["name"] in text


# ------------------------------------------------------------------ tables without Keras

def test_bench_table_without_keras_has_no_nan_and_full_reasons():
    from exporter.report import bench_rows

    reason = ("Keras runs need the Python package 'tensorflow', which is not importable (No module named "
              "'tensorflow'). install it with: pip install 'resexport[full]'")
    row = {"target": "tflite-fp32", "kind": "tflite-fp32", "mode": None, "batch": 1, "p50_ms": 1.0, "p90_ms": 1.1,
           "p99_ms": 1.2, "mean_ms": 1.0, "std_ms": 0.1, "throughput_ips": 1000.0, "cold_start_ms": 5.0,
           "provider": "xnnpack", "threads": 2}
    rows = bench_rows({"results": [row], "skipped": [{"target": "keras (predict)", "kind": "keras", "mode": "predict",
                                                      "reason": reason}]})
    cells = [c for r in rows for c in r]
    assert not any("nan" in c.lower() for c in cells)
    assert rows[0][8:10] == ["–", "–"]
    assert reason in cells


# The real bench table a run without Keras prints (dashes for the speed-ups, the skip reason whole, no NaN):
# tests/test_export.py::test_validate_and_bench_run_on_an_edge_box_without_tensorflow, one child process
# for validate and bench on an edge box.
