"""Issue 12: your own model on your own data. A small CNN of our own (64x64 RGB, not from the
registry) trained for a moment on coloured shapes, then convert -> validate -> bench -> report ->
predict with no other flags, from an image folder and from an .npz; and each kind of bad input as
one line with its exit code."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter import data as data_mod
from exporter import manifest as mf
from exporter.data import own as owndata
from exporter.cli import app
from exporter.errors import DataError
from tests.owndata_helpers import CLASSES, train_tiny_model, write_folder, write_npz
from tests.owndata_helpers import arrays as owndata_arrays
from tests.test_errors import assert_fails, temp_files


OWN_MODELS = Path(__file__).resolve().parent / "fixtures" / "own"  # tests/fixtures/make_fixtures.py


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """The shapes data, and the tiny CNN trained on it, committed: the tests below assert that int8
    agrees on all 30 test images and that predict gets every one right, which holds on any CPU only
    for fixed weights (test_the_committed_models_are_sure_of_every_test_image says by how much)."""
    root = tmp_path_factory.mktemp("own")
    return {"root": root, "folder": write_folder(root / "shapes"), "npz": write_npz(root / "shapes.npz"),
            "model": OWN_MODELS / "softmax_unit.keras", "logits_model": OWN_MODELS / "logits_symmetric.keras"}


@pytest.mark.parametrize("name, scale", [("model", 1.0), ("logits_model", 2.0)])
def test_the_committed_models_are_sure_of_every_test_image(own, name, scale):
    """Why 30/30 is not luck: on every test image the right class leads the runner-up by a wide margin
    of probability, far beyond what int8 rounding (a few hundredths) can move."""
    import keras

    from exporter import outputs

    from PIL import Image

    files = sorted((own["folder"] / "test").glob("*/*"))  # the folder's test images, JPEGs included
    x = np.concatenate([np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]), owndata_arrays()[0]])
    y = np.concatenate([[CLASSES.index(f.parent.name) for f in files], owndata_arrays()[1]])  # + every npz image
    model = keras.saving.load_model(own[name])
    raw = keras.ops.convert_to_numpy(model(x.astype(np.float32) / 255.0 * scale - (scale - 1.0), training=False))
    p = outputs.to_probabilities(raw, "logits" if name == "logits_model" else "probabilities")
    top2 = np.sort(p, axis=1)[:, -2:]
    assert (p.argmax(1) == y).all() and (top2[:, 1] - top2[:, 0]).min() > 0.3, (top2[:, 1] - top2[:, 0]).min()


def cli(root, *args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"RESEXPORT_ARTIFACTS": str(root)})


def ok(result):
    assert result.exit_code == 0, result.output[-3000:]
    assert "Traceback" not in result.output
    return result


def _chain(art, model, data, *convert_flags):
    ok(cli(art, "convert", "--model", model, "--data", data, *convert_flags))
    [run] = mf.find_runs(art)
    val = json.loads(ok(cli(art, "validate", "--json")).stdout)
    # no flags about the model or data; the timing settings only shortened (14 targets x 3 batches x 1 s otherwise)
    bench = json.loads(ok(cli(art, "bench", "--json", "--min-time", "0", "--min-runs", "3", "--warmup", "1")).stdout)
    ok(cli(art, "report"))
    return run, val, bench


# ------------------------------------------------------------------------------ the "done when" path

def test_own_model_on_an_image_folder_no_flags(own, tmp_path):
    art = tmp_path / "artifacts"
    run, val, bench = _chain(art, own["model"], own["folder"])
    man = mf.read_manifest(run)
    assert man["preprocessing"]["size"] == [64, 64] and man["preprocessing"]["scale"] == "unit"
    assert man["dataset"]["class_names"] == list(CLASSES) and len(man["dataset"]["content_hash"]) == 16
    assert man["dataset"]["origin"]["layout"] == "train/ + test/"
    assert man["artifacts"]["tflite-int8"]["calibration"]["count"] == 60  # all training images (< 500)
    assert val["passed"] and val["dataset"]["samples"] == 30
    assert val["dataset"]["content_hash"] == man["dataset"]["content_hash"]
    assert {r["target"] for r in bench["results"]} >= {"tflite-int8", "onnx-fp32", "keras (compiled)"}
    assert (run / "report.md").is_file()
    # what a deployer needs travels with every artifact
    assert (run / "labels.txt").read_text().splitlines() == list(CLASSES)
    assert json.loads((run / "preprocessing.json").read_text())["input_size"] == [64, 64]
    import onnx

    for f in ("model.onnx", "model_fp16.onnx", "model_int8.onnx"):
        props = {p.key: p.value for p in onnx.load(run / f).metadata_props}
        assert json.loads(props["class_names"]) == list(CLASSES) and props["scale"] == "unit"
        assert json.loads(props["input_size"]) == [64, 64]
    # predict: every test image's top class right, probabilities, the smallest passing artifact
    pred = json.loads(ok(cli(art, "predict", "--json", own["folder"] / "test")).stdout)
    assert len(pred["predictions"]) == 30
    sizes = {r["kind"]: r["bytes"] for r in val["artifacts"]}
    assert pred["artifact"]["kind"] == min(sizes, key=sizes.get)
    for row in pred["predictions"]:
        assert row["top"][0]["class"] in row["file"]
        assert 0.99 < sum(t["probability"] for t in row["top"]) < 1.01
    # convert again: everything up to date (same model, same data by content hash)
    again = json.loads(ok(cli(art, "convert", "--json")).stdout)
    assert {a["status"] for a in again["artifacts"]} == {"up to date"}


def test_own_model_on_an_npz_no_flags(own, tmp_path):
    art = tmp_path / "artifacts"
    run, val, _ = _chain(art, own["model"], own["npz"], "--quantize", "int8")
    man = mf.read_manifest(run)
    assert man["dataset"]["origin"]["read_lazily"] == {"x_test": True, "x_train": True}
    assert val["passed"] and val["dataset"]["samples"] == 30
    pred = json.loads(ok(cli(art, "predict", "--json", "--top-k", "2", own["folder"] / "test" / "red_bar")).stdout)
    assert all(r["top"][0]["class"] == "red_bar" and len(r["top"]) == 2 for r in pred["predictions"])
    # predict on an edge box: TensorFlow's import blocked, the int8 TFLite file through ai-edge-litert
    import os
    import pathlib
    import subprocess
    import sys

    from tests.conftest import BLOCK_TF

    code = BLOCK_TF + ("from exporter.cli import main\n"
                       "sys.argv = ['resexport', 'predict', '--json', '--artifact', 'tflite-int8', '--run', sys.argv[1], sys.argv[2]]\n"
                       "main()\n")
    proc = subprocess.run([sys.executable, "-c", code, str(run), str(own["folder"] / "test" / "blue_square")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                          cwd=pathlib.Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    edge = json.loads(proc.stdout)
    assert edge["artifact"]["kind"] == "tflite-int8"
    assert all(r["top"][0]["class"] == "blue_square" for r in edge["predictions"])
    limited = json.loads(ok(cli(art, "validate", "--limit", "12", "--json")).stdout)
    row = limited["artifacts"][0]
    assert limited["dataset"]["samples"] == 12 and row["agreement_ci95"][1] == 100.0
    assert 0 < row["accuracy_ci95"][0] < row["accuracy"] <= row["accuracy_ci95"][1]


def test_logits_model_predicts_probabilities_and_symmetric_scale(own, tmp_path):
    model = own["logits_model"]
    art = tmp_path / "artifacts"
    ok(cli(art, "convert", "--model", model, "--data", own["folder"], "--scale", "symmetric",
           "--format", "onnx", "--quantize", "none"))
    [run] = mf.find_runs(art)
    man = mf.read_manifest(run)
    assert man["model"]["output"] == "logits" and man["preprocessing"]["input_range"] == [-1.0, 1.0]
    pred = json.loads(ok(cli(art, "predict", "--json", own["folder"] / "test" / "green_disc")).stdout)
    assert pred["output"] == "softmax of logits" and pred["artifact"]["kind"] == "onnx-fp32"
    for r in pred["predictions"]:
        assert r["top"][0]["class"] == "green_disc" and abs(sum(t["probability"] for t in r["top"]) - 1) < 1e-3


# ------------------------------------------------------------------------------ the lazy array-like

def test_lazy_images_decode_only_what_is_asked(own):
    pp = owndata.Preprocessing(48, 40, 3, "symmetric")
    ds = data_mod.open_own(own["folder"], pp)
    x = ds.x_test
    assert len(x) == 30 and x.shape == (30, 48, 40, 3)
    batch = x[4:9]
    assert batch.shape == (5, 48, 40, 3) and batch.dtype == np.float32 and -1 <= batch.min() and batch.max() <= 1
    np.testing.assert_array_equal(x[np.array([5, 6])], batch[1:3])
    sub = data_mod.subset(ds, test_limit=9)
    assert len(sub.x_test) == 9 and isinstance(sub.x_test, owndata.LazyImages)
    assert sub.content_hash != ds.content_hash
    npz = data_mod.open_own(own["npz"], owndata.Preprocessing(64, 64, 3))
    assert npz.x_test[:2].shape == (2, 64, 64, 3) and npz.class_names == CLASSES


def test_folder_with_test_split_is_stratified_and_recorded(own, tmp_path):
    flat = write_folder(tmp_path / "flat", per_class=10, split=None)
    pp = owndata.Preprocessing(64, 64, 3)
    ds = data_mod.open_own(flat, pp, test_split=0.3)
    assert len(ds.y_test) == 9 and len(ds.y_train) == 21 and np.bincount(ds.y_test).tolist() == [3, 3, 3]
    assert ds.origin["test_split"] == 0.3 and ds.origin["seed"] == 0
    assert data_mod.open_own(flat, pp, test_split=0.3).content_hash == ds.content_hash


# ------------------------------------------------------------------------------ bad input

@pytest.fixture
def shapes(own, tmp_path):
    folder = tmp_path / "shapes"
    shutil.copytree(own["folder"], folder)
    return folder


def _convert_fails(own, tmp_path, data, code, *needles, todo, extra=()):
    art = tmp_path / "artifacts"
    result = cli(art, "convert", "--model", own["model"], "--data", data, *extra)
    line = assert_fails(result, code, *needles, todo=todo)
    assert not art.exists() or (not mf.find_runs(art) and temp_files(art) == [])
    return line


@pytest.mark.parametrize("cut", ["png", "jpg"])
def test_truncated_image(own, tmp_path, shapes, cut):
    victim = sorted((shapes / "test" / "red_bar").glob(f"*.{cut}"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    _convert_fails(own, tmp_path, shapes, 3, str(victim), "truncated", todo="re-export the image or remove it")


def test_non_image_file_in_a_class_folder(own, tmp_path, shapes):
    (shapes / "train" / "green_disc" / "notes.txt").write_text("not a picture\n")
    _convert_fails(own, tmp_path, shapes, 3, "notes.txt", "not an image", todo="remove it")


def test_empty_class_folder(own, tmp_path, shapes):
    (shapes / "train" / "yellow_star").mkdir()
    _convert_fails(own, tmp_path, shapes, 3, "yellow_star", "is empty", todo="add images to it")


def test_test_class_missing_from_train(own, tmp_path, shapes):
    shutil.rmtree(shapes / "train" / "red_bar")
    _convert_fails(own, tmp_path, shapes, 3, "class 'red_bar' has no folder in the training split",
                   todo="add its training images")


def test_npz_missing_keys(own, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_test=np.zeros((3, 64, 64, 3), np.uint8))
    _convert_fails(own, tmp_path, path, 3, str(path), "lacks y_test", todo="an .npz needs x_test")


def test_npz_labels_out_of_range(own, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_test=np.zeros((3, 64, 64, 3), np.uint8), y_test=np.array([0, 1, 7]),
             class_names=np.asarray(CLASSES))
    _convert_fails(own, tmp_path, path, 3, "labels out of range 0..2", "found 0..7", todo="labels must index class_names")


def test_calibration_images_that_are_test_images_are_refused(own, tmp_path):
    flat = write_folder(tmp_path / "flat", per_class=5, split=None)
    calib = write_folder(tmp_path / "calib", per_class=6, split=None, seed=3)
    shutil.copy2(next((flat / "red_bar").glob("*.png")), calib / "red_bar" / "copied.png")
    art = tmp_path / "artifacts"
    result = cli(art, "convert", "--model", own["model"], "--data", flat, "--calib-data", calib,
                 "--format", "tflite", "--quantize", "int8")
    assert_fails(result, 2, "calibration images", "are also test images", todo="remove the duplicates")
    [run] = mf.find_runs(art)  # the import succeeded; no artifact was written
    assert not any(run.glob("*.tflite")) and temp_files(run) == []


def test_no_calibration_data_is_a_usage_error(own, tmp_path):
    flat = write_folder(tmp_path / "flat", per_class=5, split=None)
    result = cli(tmp_path / "artifacts", "convert", "--model", own["model"], "--data", flat, "--quantize", "int8")
    assert_fails(result, 2, "no training images to calibrate int8 on", todo="pass --calib-data")


def test_mixed_sizes_are_resized_with_one_warning(own, tmp_path, shapes, caplog):
    from PIL import Image

    for i, f in enumerate(sorted((shapes / "test" / "blue_square").glob("*.png"))[:3]):
        Image.open(f).resize((80 + i, 70)).save(f)
    with caplog.at_level(logging.WARNING, logger="exporter"):
        ds = data_mod.open_own(shapes, owndata.Preprocessing(64, 64, 3))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "resized to 64x64" in warnings[0].getMessage()
    assert ds.x_test[:].shape == (30, 64, 64, 3)


def test_scale_on_a_model_with_rescaling_warns_scaled_twice(own, tmp_path, caplog):
    from exporter.convert import import_model

    model = train_tiny_model(tmp_path / "rescaling.keras", rescaling=True, scale="raw", epochs=1)
    with caplog.at_level(logging.WARNING, logger="exporter"):
        run = import_model(model, run=tmp_path / "run", data=str(own["npz"]), scale="unit")
    assert any("scaled twice" in r.getMessage() for r in caplog.records)
    assert mf.read_manifest(run)["preprocessing"]["scale"] == "unit"


def test_unknown_scale_is_a_usage_error(own, tmp_path):
    _convert_fails(own, tmp_path, own["npz"], 2, "unknown --scale 'percent'", todo="choose one of",
                   extra=("--scale", "percent"))


def test_decode_errors_are_data_errors():
    with pytest.raises(DataError, match="not an image"):
        owndata.decode_image(b"hello", "x.png", owndata.Preprocessing(8, 8, 3))


def test_wilson_interval_and_the_conservative_agreement_gate():
    from exporter import formats
    from exporter.stats import wilson_interval
    from exporter.validate import check_gates

    lo, hi = wilson_interval(12, 12)
    assert hi == 1.0 and abs(lo - 12 / (12 + 1.959964 ** 2)) < 1e-9
    lo, hi = wilson_interval(50, 100)
    assert abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3
    gates = formats.Gates(min_agreement=97.0)
    base = {"finite": True, "agreement": 95.0, "agreement_without_near_ties": None, "near_ties_percent": 0.0,
            "change_points": 0.0, "max_abs_diff": 0.0}
    assert check_gates(base, gates)  # the whole test set: 95% < 97% fails
    assert not check_gates({**base, "agreement_ci95": [88.0, 98.5]}, gates)  # a sample that cannot prove a miss
    [fail] = check_gates({**base, "agreement_ci95": [90.0, 96.5]}, gates)
    assert "interval up to 96.50%" in fail


def test_warnings_at_the_command_line_are_said_once(own, tmp_path, shapes):
    """In a real process (logging to stderr): mixed image sizes and --scale on a model that rescales
    itself are one warning line each, and the command succeeds."""
    import os
    import pathlib
    import subprocess
    import sys

    from PIL import Image

    for i, f in enumerate(sorted((shapes / "train" / "green_disc").glob("*.png"))[:4]):
        Image.open(f).resize((90 + i, 77)).save(f)
    model = train_tiny_model(tmp_path / "rescaling.keras", rescaling=True, scale="raw", epochs=1)
    env = {**os.environ, "RESEXPORT_ARTIFACTS": str(tmp_path / "artifacts"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "exporter", "convert", "--model", str(model), "--data", str(shapes),
                           "--scale", "symmetric", "--format", "onnx", "--quantize", "int8"],
                          capture_output=True, text=True, timeout=300, env=env,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING exporter")]
    assert len(warnings) == 2, proc.stderr[-3000:]
    assert sum("scaled twice" in w for w in warnings) == 1
    assert sum("resized to 64x64" in w and "sizes" in w for w in warnings) == 1
