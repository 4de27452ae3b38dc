"""The model as users write it: preprocessing read from the model (a Rescaling layer inside), any image
input rank ((H, W), (H, W, C), flat), the Python API, and no native log line in any command's output.

Numbers asserted here hold on any CPU: each accuracy is recomputed independently from the same files on
the same machine and compared with what validate reports; gates are asserted only for float32 kinds,
whose outputs match Keras to ~1e-6 whatever the kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter.cli import app
from exporter.data.preprocessing import Preprocessing, decide, input_scaling_layer
from tests.owndata_helpers import CLASSES, train_tiny_model, write_folder

runner = CliRunner()
ALL_KINDS = {"tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "onnx-fp32", "onnx-fp16", "onnx-int8"}
FLOAT32 = ("tflite-fp32", "onnx-fp32")
NATIVE_MARKERS = ("absl::InitializeLog", "I0000", "W0000", "E0000", "oneDNN", "cuda", "cpu_feature_guard",
                  "XNNPACK", "TfLiteXNNPackDelegate", "fully_quantize", "_INTERPRETER_DELETION_WARNING")


def _cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def _read_images(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test split as a user would load it: uint8 RGB pixels, labels by sorted class folder."""
    from PIL import Image

    x, y = [], []
    for c, cls in enumerate(sorted(p.name for p in folder.iterdir())):
        for f in sorted((folder / cls).iterdir()):
            with Image.open(f) as im:
                x.append(np.asarray(im.convert("RGB"), np.uint8))
            y.append(c)
    return np.stack(x), np.asarray(y)


# ------------------------------------------------------------------ deciding preprocessing (fast)

def _keras():
    import keras

    return keras


def test_decide_reads_the_scaling_layer_at_the_input_also_inside_a_nested_model():
    keras = _keras()
    inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 127.5, offset=-1),
                              keras.layers.Conv2D(2, 3)], name="backbone")
    x = keras.Input((16, 16, 3))
    h = keras.layers.Resizing(8, 8)(x)
    model = keras.Model(x, keras.layers.Dense(3)(keras.layers.Flatten()(inner(h))))
    pp = decide(model.input_shape[1:], scale=None, model=model)
    assert pp.scale == "raw" and "Rescaling" in pp.detected_by

    plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.Rescaling(1 / 255)])
    pp = decide((8, 8, 1), scale=None, model=plain)  # a Rescaling after a conv is not input scaling
    assert pp.scale == "unit" and "default" in pp.detected_by


def test_decide_tells_normalization_statistics_of_raw_pixels_from_those_of_unit_ones():
    keras = _keras()
    for mean, expected in ((120.0, "raw"), (0.45, "unit")):
        norm = keras.layers.Normalization(mean=[mean] * 3, variance=[1.0] * 3)
        model = keras.Sequential([keras.Input((4, 4, 3)), norm, keras.layers.Flatten(), keras.layers.Dense(2)])
        assert input_scaling_layer(model)[1] == expected
        assert decide((4, 4, 3), scale=None, model=model).scale == expected


def test_an_explicit_scale_wins_over_the_layer_and_says_so(caplog):
    keras = _keras()
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    pp = decide((4, 4, 1), scale="unit", model=model, where="m.keras")
    assert pp.scale == "unit" and pp.detected_by.startswith("--scale unit")
    assert "scaled twice" in caplog.text and "m.keras" in caplog.text


@pytest.mark.parametrize("shape,data,hwc,own", [
    ((28, 28), (28, 28, 1), (28, 28, 1), (28, 28)),
    ((28, 28, 1), None, (28, 28, 1), None),
    ((784,), (28, 28, 1), (28, 28, 1), (784,)),
    ((3072,), (32, 32, 3), (32, 32, 3), (3072,)),
])
def test_every_image_input_rank_maps_to_decoded_images_and_back(shape, data, hwc, own):
    pp = decide(shape, scale=None, data_shape=data)
    assert pp.shape == hwc and pp.input_shape == own and pp.model_shape == tuple(shape)
    pixels = np.arange(2 * np.prod(hwc), dtype=np.uint8).reshape(2, *hwc)
    x = pp.from_pixels(pixels)
    assert x.shape == (2, *shape) and np.allclose(x.reshape(2, -1), pixels.reshape(2, -1) / 255.0)
    assert Preprocessing.from_dict(json.loads(json.dumps(pp.to_dict()))) == pp


@pytest.mark.parametrize("shape,data,message", [
    ((100,), (28, 28, 1), "flat vectors of 100"),
    ((28, 28, 5), None, "not an image"),
    ((None, None, 3), None, "not fixed"),
    ((2, 3, 4, 1), None, "not an image"),
])
def test_inputs_that_are_not_images_are_refused_with_the_reason(shape, data, message):
    from exporter.errors import UsageError

    with pytest.raises(UsageError, match=message):
        decide(shape, scale=None, data_shape=data)


# ------------------------------------------------------------------ end to end (slow)

@pytest.fixture(scope="module")
def rescaling_case(tmp_path_factory):
    """The Keras image-classification tutorial's pattern: Rescaling(1/255) first, trained on raw pixels,
    and a folder of PNG/JPEG images (90 per class, 30 of them test)."""
    root = tmp_path_factory.mktemp("rescaling")
    folder = write_folder(root / "shapes", per_class=90)
    model = train_tiny_model(root / "m.keras", scale="raw", rescaling=True, epochs=15)
    return root, folder, model


@pytest.mark.slow
def test_a_rescaling_first_model_validates_at_the_accuracy_keras_gives_on_raw_pixels(rescaling_case):
    import keras

    from exporter.runtimes import load_runner

    root, folder, model_path = rescaling_case
    run = root / "run"
    _cli("convert", "--model", model_path, "--data", folder, "--run", run)  # no --scale
    man = json.loads((run / "manifest.json").read_text())
    assert man["preprocessing"]["scale"] == "raw" and "Rescaling" in man["preprocessing"]["detected_by"]
    assert set(man["artifacts"]) == ALL_KINDS
    result = runner.invoke(app, ["validate", "--run", str(run), "--json"])
    report = json.loads(result.stdout)

    x, y = _read_images(folder / "test")
    model = keras.saving.load_model(model_path)
    keras_acc = float((np.asarray(model(x.astype(np.float32), training=False)).argmax(1) == y).mean())
    assert abs(report["reference"]["accuracy"] - keras_acc) < 1e-4  # 0.01 pt
    assert keras_acc > 1 / len(CLASSES) + 0.3, "the tiny model should be far above chance on raw pixels"
    rows = {r["kind"]: r for r in report["artifacts"] if r["target"] == r["kind"]}  # each on its own runtime
    assert set(rows) == ALL_KINDS
    for kind, row in rows.items():  # every kind's accuracy, recomputed from its own file
        r = load_runner(run / man["artifacts"][kind]["file"], kind=kind)
        acc = float((r.predict(x.astype(np.float32)).argmax(1) == y).mean())
        r.close()
        assert abs(row["accuracy"] - acc) < 1e-4, kind
        assert row["agreement"] >= 90.0, kind  # int8 included: far from the chance level a double scaling gives
    for kind in FLOAT32:
        assert rows[kind]["passed"], rows[kind]["failures"]


@pytest.fixture(scope="module")
def mnist_like_npz(tmp_path_factory, fmnist):
    """(N, 28, 28) uint8 images without a channel axis, saved compressed: the TF beginner tutorial's data."""
    path = tmp_path_factory.mktemp("npz") / "fm28.npz"
    from exporter.data import stratified_indices

    tr, te = stratified_indices(fmnist.y_train, 2000, seed=5), stratified_indices(fmnist.y_test, 300, seed=5)
    u8 = lambda a: np.round(a[..., 0] * 255).astype(np.uint8)  # noqa: E731
    np.savez_compressed(path, x_train=u8(fmnist.x_train[tr]), y_train=fmnist.y_train[tr],
                        x_test=u8(fmnist.x_test[te]), y_test=fmnist.y_test[te])
    return path


def _tutorial_mlp(path: Path, npz: Path, *, flat=False):
    """Input((28, 28)) -> Flatten -> Dense 128 relu -> Dense 10 logits (or Input((784,)) without Flatten)."""
    import keras

    keras.utils.set_random_seed(0)
    d = np.load(npz)
    x = d["x_train"].astype(np.float32) / 255.0
    layers = [keras.Input((784,) if flat else (28, 28))] + ([] if flat else [keras.layers.Flatten()])
    model = keras.Sequential(layers + [keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x.reshape(len(x), -1) if flat else x, d["y_train"], epochs=2, verbose=0)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def tutorial_mlp(tmp_path_factory, mnist_like_npz) -> Path:
    """The tutorial MLP trained once for the module's tests that all trained the same one (read-only:
    they import it, none changes the file)."""
    return _tutorial_mlp(tmp_path_factory.mktemp("mlp") / "mlp.keras", mnist_like_npz)


@pytest.mark.slow
def test_the_tutorial_mlp_on_hw_images_converts_to_every_kind_keeping_its_input_rank(tmp_path, mnist_like_npz,
                                                                                      tutorial_mlp):
    import keras

    from exporter.runtimes import load_runner

    model_path = tutorial_mlp
    run = tmp_path / "run"
    _cli("convert", "--model", model_path, "--data", mnist_like_npz, "--run", run)
    man = json.loads((run / "manifest.json").read_text())
    assert man["preprocessing"]["input_shape"] == [28, 28] and man["preprocessing"]["layout"] == "NHW"
    assert set(man["artifacts"]) == ALL_KINDS
    result = runner.invoke(app, ["validate", "--run", str(run), "--json"])
    report = json.loads(result.stdout)
    rows = {r["kind"]: r for r in report["artifacts"] if r["target"] == r["kind"]}  # each on its own runtime
    assert set(rows) == ALL_KINDS and all(r["agreement"] >= 90.0 for r in rows.values())
    for kind in FLOAT32:
        assert rows[kind]["passed"], rows[kind]["failures"]

    model = keras.saving.load_model(model_path)
    x = np.load(mnist_like_npz)["x_test"][:9].astype(np.float32) / 255.0  # (9, 28, 28): the model's own rank
    want = np.asarray(model(x, training=False))
    for kind in FLOAT32:
        r = load_runner(run / man["artifacts"][kind]["file"], kind=kind)
        assert tuple(r.input_shape) == (28, 28), kind
        assert np.abs(r.predict(x[:1]) - want[:1]).max() < 1e-4 and np.abs(r.predict(x) - want).max() < 1e-4
        r.close()


@pytest.mark.slow
def test_a_flat_input_model_takes_the_data_flattened(tmp_path, mnist_like_npz):
    from PIL import Image

    model_path = _tutorial_mlp(tmp_path / "flat.keras", mnist_like_npz, flat=True)
    run = tmp_path / "run"
    _cli("convert", "--model", model_path, "--data", mnist_like_npz, "--run", run, "--format", "tflite",
         "--quantize", "none")
    man = json.loads((run / "manifest.json").read_text())
    assert man["preprocessing"]["input_shape"] == [784] and "784 = 28x28x1" in man["preprocessing"]["detected_by"]
    report = json.loads(runner.invoke(app, ["validate", "--run", str(run), "--json"]).stdout)
    assert report["passed"]
    img = np.load(mnist_like_npz)["x_test"][0]
    Image.fromarray(img).save(tmp_path / "one.png")
    a = json.loads(_cli("predict", "--run", run, "--json", tmp_path / "one.png").stdout)
    b = json.loads(_cli("predict", "--run", run, "--json", "--artifact", "keras", tmp_path / "one.png").stdout)
    assert a["predictions"][0]["top"][0]["index"] == b["predictions"][0]["top"][0]["index"]
    assert abs(a["predictions"][0]["top"][0]["probability"] - b["predictions"][0]["top"][0]["probability"]) < 1e-4


# ------------------------------------------------------------------ the Python API

@pytest.mark.slow
def test_the_python_api_converts_validates_and_benches_an_in_memory_model(tmp_path, mnist_like_npz, tutorial_mlp):
    import keras

    import resexport as rx

    model = keras.saving.load_model(tutorial_mlp)
    conv = rx.convert(model, data=mnist_like_npz, run=tmp_path / "api-run", format="all", quantize="none")
    run = conv.run
    assert isinstance(conv, rx.Conversion) and isinstance(run, rx.Run)
    assert set(run.artifacts) == {"tflite-fp32", "onnx-fp32"} and not conv.failures()
    assert {k: o.status for k, o in conv.artifacts.items()} == {"tflite-fp32": rx.Status.WRITTEN,
                                                                 "onnx-fp32": rx.Status.WRITTEN}
    again = rx.convert(run=run, options=rx.ConvertOptions(format="all"), quantize="none")  # options + a keyword
    assert again.up_to_date and again.run.path == run.path
    assert run.preprocessing.model_shape == (28, 28) and run.output == "logits"
    result = rx.validate(conv)  # a Conversion stands for its run
    assert isinstance(result, rx.Validation) and result.passed and not result.failures()
    assert abs(result.reference_accuracy - result.artifacts["tflite-fp32"]["accuracy"]) < 2e-3
    timing = rx.bench(run, batches=(1,), min_runs=2, min_time=0, warmup=1, reference=False)
    assert isinstance(timing, rx.Bench) and {"tflite-fp32", "onnx-fp32"} <= set(timing.table(1))
    assert all(v > 0 for v in timing.table(1).values())
    assert (run / "validation.json").is_file() and (run / "bench.json").is_file()
    with pytest.raises(rx.ResexportError, match="keras.Model or a path"):
        rx.convert(object(), data=mnist_like_npz)


@pytest.mark.slow
def test_the_python_api_trains_converts_a_run_and_reads_its_results(tmp_path, mnist_like_npz):
    """README, From Python: rx.train trains a registry model into a run; rx.convert(run=...) converts that
    run; validate(check=True) raises ValidationFailed (the CLI's exit 4) where check=False returns
    passed=False; rx.report writes the report; the Run gives artifact_path, validation and bench."""
    import resexport as rx
    from exporter.errors import ValidationFailed

    trained = rx.train(model="resmini", data=mnist_like_npz, epochs=1, max_batches=3, run=tmp_path / "trained")
    run = trained.run
    assert isinstance(run, rx.Run) and run.model_path.is_file() and run.artifacts == {}
    assert run.validation is None and run.bench is None
    conv = rx.convert(run=run, format="tflite", quantize="none")
    assert conv.run.path == run.path and {k: o.status for k, o in conv.artifacts.items()} == {
        "tflite-fp32": rx.Status.WRITTEN}
    path = conv.run.artifact_path("tflite-fp32")
    assert path == run.path / "model_fp32.tflite" and path.stat().st_size == conv.run.artifact("tflite-fp32")["bytes"]

    # a gate no artifact can meet (agreement above 100%): deterministic on any CPU
    with pytest.raises(ValidationFailed, match="validation.json"):
        rx.validate(run, check=True, min_agreement=100.5)
    result = rx.validate(run, min_agreement=100.5)
    assert result.passed is False and "tflite-fp32" in result.failures()
    with pytest.raises(ValidationFailed):
        result.check()
    on_disk = rx.Run(run.path).validation
    assert on_disk["passed"] is False and on_disk["artifacts"][0]["gates"]["min_agreement"] == 100.5
    timing = rx.bench(run, batches=(1,), min_runs=2, min_time=0, warmup=1, reference=False)
    assert rx.Run(run.path).bench["results"] == json.loads(json.dumps(timing.rows))
    table = rx.report(run)
    assert (run.path / "report.md").is_file() and "tflite-fp32" in (run.path / "report.md").read_text()
    assert "tflite-fp32" in [r["kind"] for r in table["rows"]]


# ------------------------------------------------------------------ native noise

@pytest.mark.slow
def test_no_command_prints_a_native_log_line_on_an_imported_run(tmp_path, mnist_like_npz, tutorial_mlp):
    """convert, validate, bench, predict and inspect in real processes (CliRunner cannot see fd 2)."""
    from PIL import Image

    model_path = tutorial_mlp
    Image.fromarray(np.load(mnist_like_npz)["x_test"][0]).save(tmp_path / "one.png")
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
    commands = [
        ["convert", "--model", model_path, "--data", mnist_like_npz, "--run", run, "--format", "all", "--quantize",
         "int8"],
        ["convert", "--run", run, "--format", "tflite", "--quantize", "none"],
        ["validate", "--run", run],
        ["bench", "--run", run, "--batch", "1", "--min-runs", "2", "--min-time", "0", "--warmup", "1"],
        ["predict", "--run", run, tmp_path / "one.png"],
        ["inspect", "--run", run, "--artifact", "tflite-int8", "--samples", "20"],
    ]
    for args in commands:
        proc = subprocess.run([sys.executable, "-m", "exporter", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=300)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        noise = [line for line in proc.stderr.splitlines() if any(m in line for m in NATIVE_MARKERS)]
        assert not noise, (args[0], noise)


def test_convert_model_scans_the_users_folder_once(tmp_path, monkeypatch):
    """convert --model opens the data to decide preprocessing and again to run: every image is read and
    hashed once per command (one FileItems per split), not once per opening."""
    from exporter.data import own

    folder = write_folder(tmp_path / "shapes", per_class=6)
    built = []
    original = own.FileItems.__init__

    def counting(self, paths, root):
        built.append(root)
        original(self, paths, root)

    monkeypatch.setattr(own.FileItems, "__init__", counting)
    model = Path(__file__).parent / "fixtures" / "own" / "softmax_unit.keras"
    _cli("convert", "--model", model, "--data", folder, "--run", tmp_path / "run", "--format", "tflite",
         "--quantize", "none")
    assert sorted(p.name for p in built) == ["test", "train"]
