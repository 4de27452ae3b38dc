"""Issue 31: files an app loads as they are. Every TFLite kind goes into the real SDK — MediaPipe Tasks'
ImageClassifier, the C++ core of the Android, iOS and web SDKs — fed as an app feeds it (uint8 RGB images),
and must give the class names of the run and the top-1 of resexport's own LiteRT runner on the same file."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter import formats
from exporter.cli import app
from exporter.data.preprocessing import Preprocessing
from exporter.export.tflite_app import GRAY_DIVISOR, GRAY_WEIGHTS, METADATA_NAME, AppSpec, app_record, make_app_ready
from exporter.run import Run
from exporter.runtimes import load_runner
from tests.owndata_helpers import CLASSES, write_folder

mp = pytest.importorskip("mediapipe")
from mediapipe.tasks.python import BaseOptions, vision  # noqa: E402

# its module fixture is built once: every test of this file runs in one xdist worker (Makefile: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("app_ready")

TFLITE_KINDS = [k.name for k in formats.EXPORTABLE if k.family == "tflite"]
OWN_MODELS = Path(__file__).resolve().parent / "fixtures" / "own"


def classifier(path: Path):
    return vision.ImageClassifier.create_from_options(
        vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=-1))


def sdk_top1(path: Path, images: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """MediaPipe's top-1 index for uint8 RGB images, and the category names it reads from the file."""
    clf = classifier(path)
    try:
        top, names = [], {}
        for image in images:
            result = clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
            cats = result.classifications[0].categories
            top.append(cats[0].index)
            names.update({c.index: c.category_name for c in cats})
        return np.asarray(top), [names[i] for i in sorted(names)]
    finally:
        clf.close()


def assert_same_top1(sdk: np.ndarray, ours: np.ndarray, kind: str) -> None:
    """Float kinds: every image up to near-ties (top two within 1e-4); int8: >= 99.9% of them."""
    top = np.argsort(ours, axis=1)[:, -2:]
    tie = (ours[np.arange(len(ours)), top[:, 1]] - ours[np.arange(len(ours)), top[:, 0]]) < 1e-4
    same = sdk == ours.argmax(1)
    if formats.get(kind).quantize == "int8":
        assert same.mean() >= 0.999, f"{kind}: MediaPipe agrees with LiteRT on {same.mean():.2%}"
    else:
        assert same[~tie].all(), f"{kind}: MediaPipe differs from LiteRT on {(~same[~tie]).sum()} images"


@pytest.mark.parametrize("kind", TFLITE_KINDS)
def test_every_tflite_kind_of_a_gray_run_loads_in_mediapipe(converted_run, fmnist_small, kind):
    path = converted_run / formats.get(kind).filename
    pixels = np.round(fmnist_small.x_test * 255).astype(np.uint8)  # the real test images, 0..255
    rgb = np.repeat(pixels, 3, axis=-1)  # what a phone's RGB image of a gray picture holds
    top, names = sdk_top1(path, rgb)
    assert names == list(fmnist_small.class_names)
    ours = load_runner(path, kind=kind).predict(fmnist_small.x_test)
    assert_same_top1(top, ours, kind)


def test_the_int8_file_takes_raw_uint8_pixels_and_gives_uint8_scores(converted_run):
    record = app_record(converted_run / "model_int8.tflite")
    assert record["input"] == {"dtype": "uint8", "shape": [1, 28, 28, 3], "color": "rgb",
                               "quantization": {"scale": pytest.approx(1 / 255), "zero_point": 0},
                               "normalization": None}
    assert record["output"]["dtype"] == "uint8" and record["rgb_adapter"] and record["mediapipe_ready"]


@pytest.mark.parametrize("kind", ["tflite-fp32", "tflite-int8"])
def test_the_rgb_adapter_passes_gray_pixels_unchanged_and_makes_colour_gray(converted_run, kind):
    """The gray tensor the model sees: for R = G = B exactly the pixel (int8: the same int8 value the
    file's own input quantisation gives it); for colour, (65 R + 127 G + 25 B) / 217."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(converted_run / formats.get(kind).filename),
                         experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    gray = next(t for t in interp.get_tensor_details() if t["name"].endswith("/model_input"))
    rng = np.random.default_rng(0)
    p = rng.integers(0, 256, (1, 28, 28, 1)).astype(np.uint8)
    colour = rng.integers(0, 256, (1, 28, 28, 3)).astype(np.uint8)
    luma = (colour.astype(np.float64) @ np.asarray(GRAY_WEIGHTS, np.float64) / GRAY_DIVISOR)[..., None]
    for image, expected, tol in ((np.repeat(p, 3, -1), p.astype(np.float64), 0), (colour, luma, 1)):
        feed = image if inp["dtype"] == np.uint8 else image.astype(np.float32) / np.float32(255)
        interp.set_tensor(inp["index"], feed)
        interp.invoke()
        got = interp.get_tensor(gray["index"]).astype(np.float64)
        if gray["dtype"] == np.int8:  # in the int8 file's own steps
            scale, zero = gray["quantization"]
            want = np.clip(np.round(expected / 255 / scale) + zero, -128, 127)
            assert np.abs(got - want).max() <= tol
        else:
            assert np.abs(got - expected / 255).max() <= 1e-6 + tol * 0.5 / 255


def test_metadata_reads_back_with_the_sdks_own_schema(converted_run, fmnist):
    """The TFLITE_METADATA buffer, parsed with MediaPipe's generated schema code: name, version, an RGB image
    input with normalisation where the input is float, labels as TENSOR_AXIS_LABELS, zipped in the file."""
    from ai_edge_litert import schema_py_generated as tfl
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md

    for kind in ("tflite-fp32", "tflite-int8"):
        blob = (converted_run / formats.get(kind).filename).read_bytes()
        model = tfl.Model.GetRootAs(bytearray(blob), 0)
        entry = next(model.Metadata(i) for i in range(model.MetadataLength())
                     if model.Metadata(i).Name().decode() == METADATA_NAME)
        meta = md.ModelMetadata.GetRootAs(bytes(model.Buffers(entry.Buffer()).DataAsNumpy()), 0)
        assert meta.Name().decode() == Run(converted_run).model_name
        assert meta.Version().decode().startswith("resexport ")
        sub = meta.SubgraphMetadata(0)
        image = sub.InputTensorMetadata(0)
        assert image.Content().ContentPropertiesType() == md.ContentProperties.ImageProperties
        props = md.ImageProperties()
        props.Init(image.Content().ContentProperties().Bytes, image.Content().ContentProperties().Pos)
        assert props.ColorSpace() == md.ColorSpaceType.RGB
        if kind == "tflite-fp32":
            unit = image.ProcessUnits(0)
            assert unit.OptionsType() == md.ProcessUnitOptions.NormalizationOptions
            norm = md.NormalizationOptions()
            norm.Init(unit.Options().Bytes, unit.Options().Pos)
            assert norm.MeanAsNumpy().tolist() == [0.0] and norm.StdAsNumpy().tolist() == [255.0]
        else:
            assert image.ProcessUnitsLength() == 0  # uint8: the SDK hands over pixels as they are
        labels = sub.OutputTensorMetadata(0).AssociatedFiles(0)
        assert labels.Type() == md.AssociatedFileType.TENSOR_AXIS_LABELS
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            text = zf.read(labels.Name().decode()).decode()
        assert text.splitlines() == list(fmnist.class_names)
        assert make_app_ready(blob, AppSpec(**{k: tuple(v) if isinstance(v, list) else v
                                               for k, v in app_record(blob)["spec"].items()}))[0] == blob


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("shapes") / "shapes")


@pytest.mark.parametrize("model, scale, int8_input", [("softmax_unit.keras", "unit", "uint8"),
                                                      ("logits_symmetric.keras", "symmetric", "float32")])
def test_rgb_models_of_our_users_load_in_mediapipe(shapes, tmp_path, model, scale, int8_input):
    """A user's RGB model on their own PNG/JPEG images: every TFLite kind in MediaPipe, fed the image files'
    own pixels. int8 takes uint8 where the scale is a raw-pixel affine (unit), else float32 with
    normalisation metadata (symmetric: 127.5 is no integer zero point); a logits model's scores are its logits."""
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["convert", "--model", str(OWN_MODELS / model), "--data", str(shapes),
                                      "--scale", scale, "--run", str(run), "--format", "tflite", "--json"])
    assert result.exit_code == 0, result.output
    from PIL import Image

    files = sorted((shapes / "test").rglob("*.*"))
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    pp = Preprocessing.from_dict(json.loads((run / "manifest.json").read_text())["preprocessing"])
    for kind in TFLITE_KINDS:
        path = run / formats.get(kind).filename
        top, names = sdk_top1(path, images)
        assert names == list(CLASSES)
        ours = load_runner(path, kind=kind).predict(pp.from_pixels(images))
        assert_same_top1(top, ours, kind)
        record = app_record(path)
        assert record["input"]["dtype"] == (int8_input if kind == "tflite-int8" else "float32")
        assert not record["rgb_adapter"]


def test_validate_runs_the_sdk_and_catches_metadata_that_lies(converted_run, tmp_path):
    """`validate --runtimes litert,mediapipe`: a MediaPipe row per TFLite kind, gated like any runner, with
    its agreement with LiteRT on the same file. A file whose normalisation metadata is wrong (raw 0..255
    pixels for a 0..1 model) still passes on LiteRT, which feeds the model directly, and fails in the SDK."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(converted_run, run)
    (run / "validation.json").unlink(missing_ok=True)
    ok = CliRunner().invoke(app, ["validate", "--run", str(run), "--artifacts", "tflite-fp32,tflite-int8",
                                  "--runtimes", "litert,mediapipe", "--limit", "300", "--json"])
    assert ok.exit_code == 0, ok.output
    rows = {r["target"]: r for r in json.loads(ok.stdout)["artifacts"]}
    assert set(rows) == {"tflite-fp32", "tflite-fp32 · mediapipe", "tflite-int8", "tflite-int8 · mediapipe"}
    for kind in ("tflite-fp32", "tflite-int8"):
        sdk = rows[f"{kind} · mediapipe"]
        assert sdk["passed"] and sdk["runner"]["engine"] == "mediapipe" and sdk["same_file"]["runtime"] == "litert"
        assert sdk["same_file"]["top1_agreement_without_near_ties"] >= 99.9
    path = run / "model_fp32.tflite"
    spec = AppSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in app_record(path)["spec"].items()})
    path.write_bytes(make_app_ready(path.read_bytes(), AppSpec(**{**spec.__dict__, "scale": "raw"}))[0])
    bad = CliRunner().invoke(app, ["validate", "--run", str(run), "--artifacts", "tflite-fp32",
                                   "--runtimes", "litert,mediapipe", "--limit", "300"])
    assert bad.exit_code == 4, bad.output
    assert "tflite-fp32 · mediapipe" in bad.stderr and "tflite-fp32:" not in bad.stderr
