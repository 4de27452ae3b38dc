"""Issue 18: keras.applications families that broke the ONNX export convert, with one-input ONNX
files that agree with Keras, and `validate` gives every kind a verdict.

EfficientNetB0 (Rescaling + Normalization inside: its mean/variance were captured as graph inputs)
and ConvNeXtTiny (Normalization, grouped convolutions run as XLA calls, exact GELU) at 32x32x3, 10
classes, weights=None. Untrained, such a model outputs near-uniform probabilities, where agreement
proves nothing; the head's weights are scaled (deterministically) so its top class is decisive.
The full sweep of seven families over all seven kinds is benchmarks/applications_sweep.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter import manifest as mf
from exporter.cli import app

pytestmark = pytest.mark.slow
SHAPE = (32, 32, 3)


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def decisive(model, scale: float = 40.0):
    """Scale the classifier's kernel so the top-1 margin is wide (weights set, not trained)."""
    head = model.layers[-1]
    kernel, bias = head.get_weights()
    head.set_weights([kernel * scale, bias])
    return model


@pytest.mark.parametrize("family", ["EfficientNetB0", "ConvNeXtTiny"])
def test_family_converts_to_one_input_onnx_and_every_kind_gets_a_verdict(family, tmp_path):
    import keras
    import onnx

    keras.utils.set_random_seed(0)
    model = decisive(getattr(keras.applications, family)(weights=None, input_shape=SHAPE, classes=10))
    path = tmp_path / f"{family}.keras"
    model.save(path)
    rng = np.random.default_rng(0)
    npz = tmp_path / "data.npz"
    np.savez(npz, x_train=rng.integers(0, 256, (40, *SHAPE), dtype=np.uint8), y_train=np.arange(40) % 10,
             x_test=rng.integers(0, 256, (40, *SHAPE), dtype=np.uint8), y_test=np.arange(40) % 10)
    run = tmp_path / "run"
    for i, quantize in enumerate(("none", "float16")):
        result = cli("convert", *(("--model", path, "--data", npz, "--scale", "raw") if i == 0 else ()),
                     "--run", run, "--format", "all", "--quantize", quantize)
        assert result.exit_code == 0, result.output
    man = mf.read_manifest(run)
    for kind in ("onnx-fp32", "onnx-fp16"):
        proto = onnx.load(str(run / man["artifacts"][kind]["file"]))
        inits = {t.name for t in proto.graph.initializer}
        assert [v.name for v in proto.graph.input if v.name not in inits] == ["image"], kind
        assert man["artifacts"][kind]["conformance"]["opset"]
    result = cli("validate", "--run", run, "--json")
    report = json.loads((run / "validation.json").read_text())
    verdicts = {r["kind"]: r for r in report["artifacts"]}
    assert set(verdicts) == {"tflite-fp32", "onnx-fp32", "tflite-fp16", "onnx-fp16"}
    assert result.exit_code == 0, [(k, v["failures"]) for k, v in verdicts.items()]
    assert verdicts["onnx-fp32"]["max_abs_diff"] <= 1e-3
