"""resexport profile (issue 33): time per op behind Runner.profile, offline and without TensorFlow for the
ONNX kinds; and onnx-int8's folding of a post-ReLU BatchNorm scale into the convolution before it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import BLOCK_TF

ONNX_KINDS = ("onnx-fp32", "onnx-fp16", "onnx-int8")


@pytest.fixture
def prof_run(converted_run, tmp_path):
    """A private copy (profile writes profile.json into the run)."""
    run = tmp_path / "run"
    shutil.copytree(converted_run, run)
    return run


def _cli(*args, block_tf=True):
    code = (BLOCK_TF if block_tf else "") + "import sys\nfrom exporter.cli import main\nsys.argv = ['resexport', *sys.argv[1:]]\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})


def test_profile_onnx_kinds_without_tensorflow(prof_run):
    onnx = pytest.importorskip("onnx")
    res = _cli("profile", "--run", str(prof_run), "--artifact", ",".join(ONNX_KINDS), "--runtimes", "onnxruntime",
               "--runs", "3", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout)  # machine-readable: nothing else on stdout
    assert [t["target"] for t in doc["targets"]] == list(ONNX_KINDS)
    assert (prof_run / "profile.json").is_file()
    for t in doc["targets"]:
        assert t["available"] and t["timed"], t
        nodes = {n.name for n in onnx.load(str(prof_run / _file(prof_run, t["kind"]))).graph.node}
        assert t["ops"][0]["node"] in nodes, (t["kind"], t["ops"][0])
        assert sum(o["share"] for o in t["ops"]) == pytest.approx(1.0, abs=1e-6)
        assert all(o["calls"] >= 3 for o in t["ops"])
        assert 0.0 <= t["qdq_share"] <= 1.0
    int8 = doc["targets"][-1]
    assert int8["precision"] == "int8" and any(o["op_type"].startswith("QLinear") for o in int8["ops"])


def _file(run, kind):
    return json.loads((run / "manifest.json").read_text())["artifacts"][kind]["file"]


def test_profile_unknown_kind_is_one_line_exit_2(prof_run):
    res = _cli("profile", "--run", str(prof_run), "--artifact", "onnx-int4")
    assert res.returncode == 2, res.stderr
    assert "onnx-int4" in res.stderr and "Traceback" not in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.strip().startswith(("error", "Error"))]) <= 1


def test_profile_tflite_says_what_it_can_show(prof_run):
    pytest.importorskip("ai_edge_litert")
    from exporter import api

    doc = api.profile(prof_run, artifacts=["tflite-int8"], runtimes=["litert"], runs=2, write=False)
    (t,) = doc["targets"]
    assert t["available"] and t["timed"] is False
    assert "per op" in t["cannot_show"] and "XNNPACK" in t["shows"]
    assert sum(t["runs_in"].values()) == len(t["ops"]) and set(t["runs_in"]) <= {"XNNPACK", "built-in"}
    assert all("share" not in o for o in t["ops"])  # no made-up time per op


def test_report_has_where_the_time_goes(prof_run):
    from exporter import api

    api.profile(prof_run, artifacts=["onnx-int8", "tflite-int8"], runtimes=["onnxruntime", "litert"], runs=2)
    text = (prof_run / "report.md").read_text() if api.report(prof_run) else ""
    assert "## Where the time goes" in text and "Q/DQ share" in text and "tflite-int8" in text


def _conv_relu_bn(tf_keras_seed=0):
    """Conv -> ReLU -> BatchNorm -> Conv -> ReLU -> BN -> pool -> Dense, every BN with set statistics:
    positive, unequal scales and non-zero shifts (a trained net's BN, not an identity)."""
    import keras

    keras.utils.set_random_seed(tf_keras_seed)
    inp = keras.Input((12, 12, 1))
    x = inp
    for i, ch in enumerate((4, 6)):
        x = keras.layers.Conv2D(ch, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(1)
    for i, ch in enumerate((4, 6)):
        model.get_layer(f"bn{i}").set_weights([rng.uniform(0.5, 2.0, ch), rng.uniform(-0.5, 0.5, ch),
                                               rng.uniform(0.0, 0.5, ch), rng.uniform(0.5, 2.0, ch)])
    return model


def test_int8_folds_post_relu_batchnorm_scale(tmp_path):
    pytest.importorskip("tensorflow")
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from exporter import formats
    from exporter.export import onnx as eo
    from exporter.export.source import ExportSource

    model = _conv_relu_bn()
    path = tmp_path / "crb.keras"
    model.save(path)
    x = np.random.default_rng(2).uniform(0, 1, (64, 12, 12, 1)).astype(np.float32)
    expected = np.asarray(model(x, training=False))

    class Calib:
        pass

    calib = Calib()
    calib.x = x
    source = ExportSource(path, "keras", (12, 12, 1), num_classes=3)
    try:
        out = tmp_path / "int8.onnx"
        details = eo.export_int8(source, out, calib)
        fp32 = eo.onnx_fp32_proto(source)
    finally:
        source.cleanup()
    assert details["bn_scales_folded"] == 2 and details["bn_fold_skipped"] == []
    assert sum(n.op_type == "Mul" for n in fp32.graph.node) == 2  # what tf2onnx makes of the two BN scales
    # the graph ORT runs: no float BatchNormalization/Mul (nor a Mul of any kind: the scale is in the conv)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "ran.onnx")
    session = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    ran = [n.op_type for n in onnx.load(str(tmp_path / "ran.onnx")).graph.node]
    assert not {"BatchNormalization", "Mul", "QLinearMul"} & set(ran), ran
    assert "Add" not in ran, ran  # the shift runs as QLinearAdd, in the integer domain
    assert ran.count("QLinearConv") == 2
    got = session.run(None, {"image": x})[0]
    agreement = 100 * float((got.argmax(1) == expected.argmax(1)).mean())
    assert agreement >= formats.get("onnx-int8").gates.min_agreement, agreement


def test_fold_is_exact_in_float_and_skips_negative_scales():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from exporter.export.onnx import fold_post_relu_scales

    rng = np.random.default_rng(0)

    def graph(scale):
        w = numpy_helper.from_array(rng.normal(size=(3, 2, 3, 3)).astype(np.float32), "w")
        b = numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "b")
        s = numpy_helper.from_array(np.asarray(scale, np.float32).reshape(1, 3, 1, 1), "s")
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c"], ["r"], name="relu"),
                 helper.make_node("Mul", ["r", "s"], ["y"], name="mul")]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5, 5])], [w, b, s])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    x = rng.normal(size=(1, 2, 5, 5)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    m = graph([0.5, 1.5, 2.0])
    before = run(m)
    # the Mul writes the graph's output: nothing to rewire to, so it is kept
    assert fold_post_relu_scales(m)["folded"] == []
    m.graph.node.append(helper.make_node("Identity", ["y"], ["z"], name="id"))
    m.graph.output[0].name = "z"
    assert fold_post_relu_scales(m)["folded"] == ["mul"]
    assert [n.op_type for n in m.graph.node] == ["Conv", "Relu", "Identity"]
    np.testing.assert_allclose(run(m), before, rtol=1e-5, atol=1e-5)
    neg = graph([0.5, -1.5, 2.0])
    neg.graph.node.append(helper.make_node("Identity", ["y"], ["z"], name="id"))
    neg.graph.output[0].name = "z"
    result = fold_post_relu_scales(neg)
    assert result["folded"] == [] and "not positive" in result["skipped"][0]["why"]
