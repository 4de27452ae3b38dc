"""Issue 13: per-layer int8 error (`inspect`) and `convert --fallback auto`."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter import formats
from exporter import manifest as mf
from exporter.cli import app
from exporter.convert import convert
from exporter.inspect import channel_noise_to_signal, inspect
from exporter.validate import validate


def _tflite_tensor_names(path):
    from ai_edge_litert.interpreter import Interpreter

    return {t["name"] for t in Interpreter(model_path=str(path)).get_tensor_details()}


def _onnx_node_names(path):
    import onnx

    return {n.name for n in onnx.load(str(path)).graph.node}


def test_channel_metric_sees_a_narrow_channel_a_tensor_ratio_hides():
    rng = np.random.default_rng(0)
    ref = np.stack([rng.normal(0, 10, 1000), rng.normal(0, 0.01, 1000)], axis=-1)  # wide and narrow channel
    noisy = ref + rng.normal(0, 0.02, ref.shape)  # one int8 step of noise everywhere
    whole = np.linalg.norm(noisy - ref) / np.linalg.norm(ref)
    assert whole < 0.01
    assert channel_noise_to_signal(ref, noisy) == pytest.approx(2.0, rel=0.1)  # noise 0.02 over std 0.01
    assert channel_noise_to_signal(ref, ref) == 0.0
    assert channel_noise_to_signal(np.ones((5, 3)), np.ones((5, 3)) + 1) == 0.0  # constant channels are skipped


def test_inspect_tflite_int8_names_real_ops_with_finite_errors(converted_run, fmnist):
    rep = inspect(run=converted_run, kind="tflite-int8", dataset=fmnist, samples=30)
    layers = rep["layers"]
    names = _tflite_tensor_names(converted_run / "model_int8.tflite")
    assert len(layers) >= 8  # resmini: convs, BN, adds, dense, softmax
    assert {r["op"] for r in layers} >= {"CONV_2D", "FULLY_CONNECTED"}
    for r in layers:
        assert r["name"] in names, r["name"]
        assert np.isfinite(r["channel_noise_to_signal"]) and r["channel_noise_to_signal"] >= 0
        assert np.isfinite(r["noise_to_signal"]) and np.isfinite(r["rmse_over_scale"])
    ranked = [r["channel_noise_to_signal"] for r in layers]
    assert ranked == sorted(ranked, reverse=True) and ranked[0] > 0
    assert rep["images"]["count"] == 30 and rep["images"]["split"].startswith("train")


def test_inspect_onnx_int8_names_real_nodes(converted_run, fmnist):
    rep = inspect(run=converted_run, kind="onnx-int8", dataset=fmnist, samples=30)
    nodes = _onnx_node_names(converted_run / "model_int8.onnx")  # the QDQ graph keeps the quantised nodes names
    relus = {r["node"] for r in rep["layers"] if r["op"] == "Relu"}  # ORT folds these into their QDQ pairs
    assert len(rep["layers"]) >= 8
    for r in rep["layers"]:
        assert r["float_layers"] and set(r["float_layers"]) <= nodes | relus, r
        assert np.isfinite(r["channel_noise_to_signal"]) and np.isfinite(r["noise_to_signal"])
    assert {r["op"] for r in rep["layers"]} >= {"Conv", "Gemm"}


def test_inspect_cli_json_and_bad_artifact(converted_run):
    r = CliRunner().invoke(app, ["inspect", "--run", str(converted_run), "--artifact", "tflite-int8",
                                 "--samples", "20", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["kind"] == "tflite-int8" and doc["count"] == len(doc["layers"]) > 0
    bad = CliRunner().invoke(app, ["inspect", "--run", str(converted_run), "--artifact", "tflite-fp32"])
    assert bad.exit_code == 2
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "not a calibrated int8 kind" in lines[0] and "tflite-int8" in lines[0]


@pytest.mark.slow
def test_fallback_auto_makes_a_failing_int8_model_pass(converted_run, fmnist, tmp_path, monkeypatch):
    """resmini passes the real int8 gate, so the test tightens it until plain int8 fails: what
    --fallback sees for plain12 (benchmarks/results/int8_fallback.md), on a model that converts in seconds."""
    run = tmp_path / "run"
    shutil.copytree(converted_run, run)
    measured = validate(run=run, dataset=fmnist, kinds=["tflite-int8"])["artifacts"][0]["agreement"]
    assert measured <= 99.2, f"plain int8 agrees {measured}%: too close to 100% to tighten the gate below it"
    strict = formats.Gates(min_agreement=round(measured + 0.15, 2), max_drop=1.0)  # just above what plain int8 gets
    kind = replace(formats.get("tflite-int8"), gates=strict)
    monkeypatch.setitem(formats.KINDS, "tflite-int8", kind)  # validate reads the same table
    plain = validate(run=run, dataset=fmnist, kinds=["tflite-int8"])
    assert not plain["passed"], "the tightened gate must fail plain int8 for this test to mean anything"
    assert "inspect --artifact tflite-int8" in plain["artifacts"][0]["hint"]

    status = convert(run=run, kinds=[kind], dataset=fmnist, calib_samples=100, force=True, fallback="auto")
    assert status == {"tflite-int8": "written"}
    entry = mf.read_manifest(run)["artifacts"]["tflite-int8"]
    assert entry["fallback"] == "auto" and entry["float_layers"]
    names = _tflite_tensor_names(run / "model_int8.tflite")
    assert set(entry["float_layers"]) <= names
    assert entry["inputs"][0]["dtype"] == "int8" and entry["outputs"][0]["dtype"] == "int8"
    search = entry["fallback_search"]
    assert search["chosen"]["passed"] and search["trials"][0]["float_set"] == 0 and not search["trials"][0]["passed"]
    assert len(search["trials"]) < search["ranked_layers"]  # guided, not one trial per layer

    after = validate(run=run, dataset=fmnist, kinds=["tflite-int8"])  # same kind name, same file
    assert after["passed"], after["artifacts"][0]["failures"]
    # asking again with the same settings keeps it; without --fallback it is a different artifact
    assert convert(run=run, kinds=[kind], dataset=fmnist, calib_samples=100, fallback="auto") == \
        {"tflite-int8": "up to date"}
