"""Issue 17: promises of the README that had no test. Each test goes through the CLI (in process, or
a real process where the promise is about one), and asserts what holds on any CPU."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter import manifest as mf
from exporter.cli import app
from tests.conftest import block_imports_code, edge_child_code, edge_results
from tests.test_errors import assert_fails, temp_files

ROOT = pathlib.Path(__file__).resolve().parents[1]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def run_copy(converted_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(converted_run, run)
    return run


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# ------------------------------------------------------------------ --target-cpu auto|vnni|avx2

FLAGS_AVX2 = "fpu sse2 avx avx2 fma"
FLAGS_VNNI = FLAGS_AVX2 + " avx512f avx512bw avx512vl avx512_vnni"


@pytest.mark.parametrize("flags, expect", [(FLAGS_VNNI, "vnni"), (FLAGS_AVX2, "avx2")])
def test_target_cpu_auto_follows_the_converting_cpu(resmini_keras, tmp_path, monkeypatch, flags, expect):
    """auto reads the converting machine's /proc/cpuinfo (faked here, so both branches run on any CPU);
    the explicit choices ignore it. Recorded in the entry; another target is another artifact."""
    from exporter import cpuinfo

    monkeypatch.setattr(cpuinfo, "_read_cpuinfo", lambda: f"processor\t: 0\nflags\t\t: {flags}\n")
    run = tmp_path / "run"
    r = cli("convert", "--model", resmini_keras, "--run", run, "--format", "onnx", "--quantize", "int8",
            "--calib-samples", 50)
    assert r.exit_code == 0, r.output
    target = mf.read_manifest(run)["artifacts"]["onnx-int8"]["target_cpu"]
    assert target["target_cpu"] == expect and target["requested"] == "auto"
    assert target["reduce_range"] is (expect == "avx2") and target["activation_type"] == "QUInt8"
    auto_bytes = (run / "model_int8.onnx").read_bytes()

    same = cli("convert", "--run", run, "--format", "onnx", "--quantize", "int8", "--calib-samples", 50,
               "--target-cpu", expect, "--json")  # the same settings, asked for by name: kept
    assert same.exit_code == 0 and json.loads(same.stdout)["artifacts"][0]["status"] == "up to date"
    other = "avx2" if expect == "vnni" else "vnni"
    refused = cli("convert", "--run", run, "--format", "onnx", "--quantize", "int8", "--calib-samples", 50,
                  "--target-cpu", other)
    assert refused.exit_code == 2 and "--force" in refused.output
    r = cli("convert", "--run", run, "--format", "onnx", "--quantize", "int8", "--calib-samples", 50,
            "--target-cpu", other, "--force")
    assert r.exit_code == 0, r.output
    target = mf.read_manifest(run)["artifacts"]["onnx-int8"]["target_cpu"]
    assert target["target_cpu"] == other and target["requested"] == other
    assert target["reduce_range"] is (other == "avx2")
    assert (run / "model_int8.onnx").read_bytes() != auto_bytes  # 7-bit weights or not


def test_unknown_target_cpu_is_a_usage_error(run_copy):
    r = cli("convert", "--run", run_copy, "--format", "onnx", "--quantize", "int8", "--target-cpu", "avx512")
    assert_fails(r, 2, "--target-cpu", "avx512", todo="choose one of")


# ------------------------------------------------------------------ exit codes 70, 5, 130, 3

def test_a_bug_is_exit_70_in_one_line_and_debug_shows_the_traceback(run_copy, monkeypatch):
    import exporter.report

    def broken(*_a, **_k):
        raise ZeroDivisionError("a bug in the report")

    monkeypatch.setattr(exporter.report, "write_report", broken)
    r = cli("report", "--run", run_copy)
    assert_fails(r, 70, "internal error", "ZeroDivisionError", "a bug in the report", todo="rerun with --debug")
    debug = cli("--debug", "report", "--run", run_copy)
    assert isinstance(debug.exception, ZeroDivisionError)  # raised as it is: the traceback is shown


@pytest.mark.slow
def test_convert_under_a_non_tensorflow_backend_is_exit_5(resmini_keras, tmp_path):
    """A real process with KERAS_BACKEND=jax: conversion needs TensorFlow's Keras, so it says how."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "exporter", "convert", "--model", str(resmini_keras), "--run",
                           str(tmp_path / "r"), "--format", "tflite", "--quantize", "none"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 5, proc.stderr[-3000:]
    # TensorFlow's native start-up lines still appear under another backend (the quiet import is
    # skipped there; reported in issue 17), so this checks the error line among them.
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert "KERAS_BACKEND" in line and "tensorflow" in line and "Traceback" not in proc.stderr
    # the model is imported into the run before the backend is checked (reported in issue 17): at
    # least no artifact may have been written
    assert not (tmp_path / "r").exists() or mf.read_manifest(tmp_path / "r")["artifacts"] == {}
    assert not list((tmp_path / "r").glob("*.tflite")) and temp_files(tmp_path) == []


def test_ctrl_c_in_train_is_exit_130_and_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C while the model trains (KeyboardInterrupt raised from inside model.fit): exit 130, one
    line, no run folder and no staging folder left behind."""
    import keras

    calls = []

    def interrupted_fit(self, *args, **kwargs):
        calls.append(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "fit", interrupted_fit)
    run = tmp_path / "runs" / "interrupted"
    r = cli("train", "--model", "resmini", "--epochs", 1, "--train-limit", 500, "--test-limit", 100, "--run", run)
    assert calls, "training never started"
    assert_fails(r, 130, "interrupted", todo="nothing half-written was left behind")
    assert not run.exists() and temp_files(tmp_path) == []


def test_nan_in_the_reference_outputs_is_exit_3(run_copy):
    """Finite weights whose outputs are not (the last Dense's weights at +-1e38: the logits overflow
    to +-inf and the softmax gives NaN): validate refuses the reference itself, in one line, and
    writes no report."""
    import keras

    model = keras.saving.load_model(run_copy / "model.keras")
    dense = model.get_layer("probabilities")
    dense.kernel.assign(np.where(np.asarray(dense.kernel) >= 0, 1e38, -1e38).astype(np.float32))
    assert all(np.isfinite(np.asarray(w)).all() for w in model.weights)
    model.save(run_copy / "model.keras")
    (run_copy / "validation.json").unlink(missing_ok=True)
    r = cli("validate", "--run", run_copy, "--artifacts", "tflite-fp32", "--test-limit", 200)
    assert_fails(r, 3, "model.keras", "outputs NaN or Inf", todo="retrain it")
    assert not (run_copy / "validation.json").exists()


# ------------------------------------------------------------------ predict

@pytest.fixture
def images(fmnist, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray((fmnist.x_test[i, ..., 0] * 255).round().astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def _validation(run, passed: dict) -> None:
    rows = [{"kind": k, "passed": ok} for k, ok in passed.items()]
    (run / "validation.json").write_text(json.dumps({"artifacts": rows, "passed": all(passed.values())}))


def test_predict_refuses_when_nothing_passed(run_copy, images):
    _validation(run_copy, {k: False for k in mf.read_manifest(run_copy)["artifacts"]})
    r = cli("predict", "--run", run_copy, images)
    assert_fails(r, 2, "no artifact", "passed validation", todo="--artifact")
    named = cli("predict", "--run", run_copy, "--artifact", "tflite-fp32", "--json", images)  # used anyway
    assert named.exit_code == 0 and json.loads(named.stdout)["artifact"]["kind"] == "tflite-fp32"


def test_predict_takes_the_smallest_passing_artifact_unchanged_since(run_copy, images):
    man = mf.read_manifest(run_copy)
    by_size = sorted(man["artifacts"], key=lambda k: man["artifacts"][k]["bytes"])
    _validation(run_copy, {k: True for k in man["artifacts"]})
    first = json.loads(cli("predict", "--run", run_copy, "--json", images).stdout)
    assert first["artifact"]["kind"] == by_size[0] and len(first["predictions"]) == 4
    smallest = run_copy / man["artifacts"][by_size[0]]["file"]
    smallest.write_bytes(smallest.read_bytes() + b"\0")  # changed since it was validated
    second = json.loads(cli("predict", "--run", run_copy, "--json", images).stdout)
    assert second["artifact"]["kind"] == by_size[1]


def test_predict_with_the_keras_reference(run_copy, images, fmnist):
    r = cli("predict", "--run", run_copy, "--artifact", "keras", "--json", "--top-k", "10", images)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["artifact"]["kind"] == "keras" and out["artifact"]["file"] == "model.keras"
    import keras

    model = keras.saving.load_model(run_copy / "model.keras")
    want = keras.ops.convert_to_numpy(model(fmnist.x_test[:4], training=False))
    for row, p in zip(sorted(out["predictions"], key=lambda r: r["file"]), want):
        got = {t["index"]: t["probability"] for t in row["top"]}
        np.testing.assert_allclose([got[j] for j in range(10)], p, atol=1e-5)


# ------------------------------------------------------------------ edge boxes: [litert] only, [onnx] only

EDGE = {  # extra -> (modules missing there, kinds it can validate, a kind it cannot, the pip line)
    "litert": (("tensorflow", "keras", "tf2onnx", "jax", "onnxruntime", "onnx"),
               "tflite-fp32,tflite-int8", "onnx-fp32", "resexport[onnx]"),
    "onnx": (("tensorflow", "keras", "tf2onnx", "jax", "ai_edge_litert"),
             "onnx-fp32,onnx-int8", "tflite-fp32", "resexport[litert]"),
}


@pytest.mark.slow
@pytest.mark.parametrize("extra", list(EDGE))
def test_an_edge_box_with_one_runtime(run_copy, extra):
    """Only the core and one extra installed (the others' imports blocked in a real process):
    validate and bench work on that runtime's kinds from the cached reference; the other runtime's
    kinds are exit 5 naming the extra to install."""
    blocked, kinds, other, pip = EDGE[extra]
    run = str(run_copy)
    commands = [["validate", "--run", run, "--artifacts", kinds, "--json"],
                ["bench", "--run", run, "--artifacts", kinds, "--batch", "1", "--min-runs", "2", "--min-time", "0",
                 "--warmup", "1", "--json"],
                ["validate", "--run", run, "--artifacts", other]]
    code = edge_child_code(block_imports_code(*blocked) + f"COMMANDS = {commands!r}\n") + (
        f"assert not {{m.split('.')[0] for m in sys.modules}} & {set(blocked)!r}\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "KERAS_BACKEND": "tensorflow"})  # one process, 3 commands
    assert proc.returncode == 0, proc.stderr[-3000:]
    (v_code, v_out, v_err), (b_code, b_out, b_err), (o_code, _, o_err) = edge_results(proc)
    assert v_code == 0, v_err[-3000:]
    report = json.loads(v_out)
    assert report["passed"] and report["reference"]["source"] == "cache"
    assert list(dict.fromkeys(a["kind"] for a in report["artifacts"])) == kinds.split(",")
    assert b_code == 0, b_err[-3000:]
    assert {r["kind"] for r in json.loads(b_out)["results"]} == set(kinds.split(","))
    assert o_code == 5, o_err[-3000:]
    assert pip in one_line(o_err)


# ------------------------------------------------------------------ a sample's interval

def test_a_sample_that_misses_by_its_point_estimate_but_not_its_interval_passes(run_copy):
    """An ONNX artifact whose classes 0 and 1 are swapped disagrees with the reference exactly where the
    reference says T-shirt or Trouser: on a stratified 30-image sample, 5 to 8 images (the reference
    is right on most of those 6). With --min-agreement 85, 73-83% misses as a point estimate, but
    the 95% interval reaches 85%: a sample cannot prove the miss, so the gate passes. (The drop and
    |diff| gates are opened: only the agreement gate is under test.)"""
    import onnx
    from onnx import helper, numpy_helper

    path = run_copy / "model.onnx"
    model = onnx.load(path)
    out = model.graph.output[0]
    inner = out.name + "_unswapped"
    for node in model.graph.node:
        node.output[:] = [inner if o == out.name else o for o in node.output]
    perm = np.array([1, 0, *range(2, 10)], np.int64)
    model.graph.initializer.append(numpy_helper.from_array(perm, "swap_0_1"))
    model.graph.node.append(helper.make_node("Gather", [inner, "swap_0_1"], [out.name], axis=1))
    onnx.save(model, path)

    gates = ("--min-agreement", 85, "--max-drop", 100, "--max-abs-diff", 1)
    full = cli("validate", "--run", run_copy, "--artifacts", "onnx-fp32", *gates, "--json")
    assert full.exit_code == 4  # on all 10,000 images the miss is proven
    r = cli("validate", "--run", run_copy, "--artifacts", "onnx-fp32", *gates, "--limit", 30, "--json",
            "--runtimes", "onnxruntime")
    [row] = json.loads(r.stdout)["artifacts"]
    assert 73 <= row["agreement"] < 85 and row["agreement_ci95"][1] >= 85, row["agreement_ci95"]
    assert r.exit_code == 0 and row["passed"], row["failures"]


# ------------------------------------------------------------------ identity by content

def test_changing_the_images_makes_convert_and_validate_redo_their_work(tmp_path):
    """README, identity by content: the data's content hash keys the reference outputs and the int8
    calibration. After a changed test image validate computes the reference again; after a changed
    test or training image the int8 artifact no longer counts as made from this data (replaced only
    with --force), the float ones stay up to date."""
    from PIL import Image

    from tests.owndata_helpers import shape_image, write_folder
    from tests.test_own_data import OWN_MODELS

    folder = write_folder(tmp_path / "shapes")
    run = tmp_path / "run"
    r = cli("convert", "--model", OWN_MODELS / "softmax_unit.keras", "--data", folder, "--run", run,
            "--format", "tflite", "--quantize", "all", "--json")
    assert r.exit_code == 0, r.output

    def validated():
        r = cli("validate", "--run", run, "--json")
        assert r.exit_code == 0, r.output
        with np.load(run / "reference_outputs.npz") as npz:
            cached = str(npz["test_hash"])
        return json.loads(r.stdout)["dataset"]["content_hash"], cached

    def replace_one(split):
        victim = sorted((folder / split / "red_bar").glob("*.png"))[0]
        Image.fromarray(shape_image("red_bar", np.random.default_rng(len(split)))).save(victim)  # unlike any other

    first, cached = validated()
    assert cached == first == mf.read_manifest(run)["dataset"]["content_hash"]
    replace_one("test")
    second, cached = validated()
    assert second != first and cached == second  # the reference was computed again for the new images

    def convert_refuses_int8_only():
        refused = cli("convert", "--run", run, "--format", "tflite", "--quantize", "all")
        assert refused.exit_code == 2 and "model_int8.tflite" in refused.output, refused.output
        assert "model_fp32" not in refused.output and "model_fp16" not in refused.output
        redo = cli("convert", "--run", run, "--format", "tflite", "--quantize", "int8", "--force", "--json")
        assert redo.exit_code == 0 and json.loads(redo.stdout)["artifacts"][0]["status"] == "written"
        again = cli("convert", "--run", run, "--format", "tflite", "--quantize", "all", "--json")
        assert {a["status"] for a in json.loads(again.stdout)["artifacts"]} == {"up to date"}

    convert_refuses_int8_only()  # the test image: the data's hash is part of the calibration's
    replace_one("train")  # a calibration image
    convert_refuses_int8_only()
