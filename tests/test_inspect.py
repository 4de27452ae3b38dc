"""Issue 13: per-layer int8 error (`inspect`) and `convert --fallback auto`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter import formats
from exporter import manifest as mf
from exporter.cli import app
from exporter.quantize.diagnose import channel_noise_to_signal, inspect

# its module fixture is built once: every test of this file runs in one xdist worker (Makefile: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("inspect")


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


def test_inspect_exit_codes_without_the_artifact_or_the_run(converted_copy, tmp_path):
    """README's exit codes for inspect: a run without the int8 artifact asked for, and a run folder that
    does not exist, are usage errors (2) in one line; a manifest that is not one is bad input (3)."""
    man = mf.read_manifest(converted_copy)
    del man["artifacts"]["onnx-int8"]
    mf.write_manifest(converted_copy, man)
    r = CliRunner().invoke(app, ["inspect", "--run", str(converted_copy), "--artifact", "onnx-int8"])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "has no onnx-int8 artifact" in lines[0], r.output
    assert "resexport convert --quantize int8" in lines[0]
    r = CliRunner().invoke(app, ["inspect", "--run", str(tmp_path / "nowhere"), "--artifact", "onnx-int8"])
    assert r.exit_code == 2 and "does not exist" in r.stderr, r.output
    (converted_copy / mf.MANIFEST).write_text("{not json")
    r = CliRunner().invoke(app, ["inspect", "--run", str(converted_copy), "--artifact", "onnx-int8"])
    assert r.exit_code == 3 and "corrupt" in r.stderr, r.output


SWAMPED_LAYER = "stage2_block1_relu1"  # read only by stage2_block1_conv2: its range swamps nothing downstream


def swamped_model(source: Path, out: Path, offset: float = 2000.0) -> Path:
    """The committed trained model with one channel of one activation set to swamp the rest: bn1's
    beta for that channel is `offset`, so the ReLU output's range is ~[0, offset] while every other
    channel stays within a few units; conv2 no longer reads the channel (its weights are zeroed), so
    the float model barely changes. A per-tensor int8 activation scale then rounds the other channels
    to one or two steps: plain int8 fails the real agreement gate on any CPU, by tens of points, and
    keeping that one layer in float fixes it. Deterministic: weights set, nothing trained."""
    import keras

    model = keras.saving.load_model(source)
    bn = model.get_layer("stage2_block1_bn1")
    conv2 = model.get_layer("stage2_block1_conv2")
    kernel = np.array(conv2.kernel)
    c = int(np.argmin(np.abs(kernel).sum(axis=(0, 1, 3))))  # the input channel conv2 needs least
    beta = np.array(bn.beta)
    beta[c] = offset
    bn.beta.assign(beta)
    kernel[:, :, c, :] = 0.0
    conv2.kernel.assign(kernel)
    model.save(out)
    return out


@pytest.fixture(scope="module")
def swamped_run(resmini_keras, tmp_path_factory):
    """A run around the swamped model with plain int8 TFLite and ONNX, converted through the CLI."""
    folder = tmp_path_factory.mktemp("swamped")
    model = swamped_model(resmini_keras, folder / "swamped.keras")
    run = folder / "run"
    r = CliRunner().invoke(app, ["convert", "--model", str(model), "--run", str(run), "--format", "all",
                                 "--quantize", "int8", "--json"])
    assert r.exit_code == 0, r.output
    return run


@pytest.mark.slow
@pytest.mark.kernels
@pytest.mark.parametrize("kind", ["tflite-int8", "onnx-int8"])
def test_fallback_auto_makes_a_failing_int8_model_pass(swamped_run, tmp_path, kind):
    """Plain int8 of the swamped model fails the real gate by a wide margin; `convert --fallback auto`
    keeps the swamped layer in float and the same kind then passes the same gate."""
    run = tmp_path / "run"
    shutil.copytree(swamped_run, run)
    validate_args = ["validate", "--run", str(run), "--artifacts", kind, "--test-limit", "2000", "--json"]
    plain = CliRunner().invoke(app, validate_args)
    assert plain.exit_code == 4, plain.output
    [row] = [r for r in json.loads(plain.stdout)["artifacts"] if r["target"] == kind]  # its own runtime's row
    gate = formats.get(kind).gates.min_agreement
    assert row["agreement_ci95"][1] < gate - 20, row["agreement"]  # fails by tens of points, on any CPU
    assert f"inspect --artifact {kind}" in row["hint"]

    family = kind.split("-")[0]
    convert_args = ["convert", "--run", str(run), "--format", family, "--quantize", "int8", "--fallback", "auto"]
    refused = CliRunner().invoke(app, convert_args)  # a different artifact: replaced only with --force
    assert refused.exit_code == 2 and "--force" in refused.output  # README: exit 2, "would overwrite something"
    r = CliRunner().invoke(app, [*convert_args, "--force", "--json"])
    assert r.exit_code == 0, r.output
    entry = mf.read_manifest(run)["artifacts"][kind]
    assert entry["fallback"] == "auto" and entry["float_layers"]
    names = _tflite_tensor_names(run / entry["file"]) if family == "tflite" else _onnx_node_names(run / entry["file"])
    assert set(entry["float_layers"]) <= names
    if family == "tflite":
        assert entry["inputs"][0]["dtype"] == "uint8" and entry["outputs"][0]["dtype"] == "uint8"  # app-ready
    search = entry["fallback_search"]
    assert search["chosen"]["passed"] and search["trials"][0]["float_set"] == 0 and not search["trials"][0]["passed"]
    # an imported model's training images are unknown: the hold-out is matched to the test inputs' difficulty
    assert search["seen_in_training"] is None and search["chosen"]["difficulty_matched"]["bins"] == 10
    assert search["trials"][0]["agreement"] < gate - 20
    assert len(search["trials"]) < search["ranked_layers"]  # guided, not one trial per layer
    assert len(entry["float_layers"]) <= 4, entry["float_layers"]  # one layer: its op and the ops reading it
    if family == "tflite":  # TFLite keeps Keras' names; tf2onnx's are counters
        assert any("stage2_block1" in name for name in entry["float_layers"]), entry["float_layers"]

    after = CliRunner().invoke(app, validate_args)  # same kind name, same file, the real gate
    assert after.exit_code == 0, after.output
    assert json.loads(after.stdout)["artifacts"][0]["agreement"] >= gate
    # asking again with the same settings keeps it
    again = CliRunner().invoke(app, [*convert_args, "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["artifacts"][0]["status"] == "up to date"


@pytest.mark.slow
@pytest.mark.kernels
def test_fallback_auto_says_when_even_all_float_fails(resmini_keras, tmp_path):
    """A model whose probabilities all sit within 1e-3 of 0.1 (the last Dense scaled by 1e-3): TFLite's
    int8 softmax output has a fixed 1/256 step, so the output quantisation alone flattens every image
    and no set of float layers can pass. The search must say so in one line and write nothing."""
    import keras

    model = keras.saving.load_model(resmini_keras)
    dense = model.get_layer("probabilities")
    dense.kernel.assign(np.array(dense.kernel) * 1e-3)
    dense.bias.assign(np.array(dense.bias) * 1e-3)
    model.save(tmp_path / "flat.keras")
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["convert", "--model", str(tmp_path / "flat.keras"), "--run", str(run),
                                 "--format", "tflite", "--quantize", "int8", "--fallback", "auto"])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    # a kind convert cannot make is that kind's failure (README: exit 70, "export failed", the others written)
    assert r.exit_code == 70 and len(lines) == 1, r.output
    assert "even with all" in lines[0] and "input/output quantisation" in lines[0]
    assert not (run / "model_int8.tflite").exists()
    assert "tflite-int8" not in mf.read_manifest(run)["artifacts"]
