"""Issue 18: keras.applications families that broke the ONNX export convert, with one-input ONNX
files that agree with Keras.

EfficientNetB0 (Rescaling + Normalization inside: its mean/variance were captured as graph inputs)
and ConvNeXtTiny (Normalization, grouped convolutions run as XLA calls, exact GELU) at 32x32x3, 10
classes, weights=None. Untrained, such a model outputs near-uniform probabilities, where agreement
proves nothing; the head's weights are scaled (deterministically) so its top class is decisive.
The full sweep of seven families over all seven kinds is benchmarks/applications_sweep.py."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow
SHAPE = (32, 32, 3)


def decisive(model, scale: float = 40.0):
    """Scale the classifier's kernel so the top-1 margin is wide (weights set, not trained)."""
    head = model.layers[-1]
    kernel, bias = head.get_weights()
    head.set_weights([kernel * scale, bias])
    return model


@pytest.mark.parametrize("family", ["EfficientNetB0", "ConvNeXtTiny"])
def test_family_exports_one_input_onnx_that_agrees_with_keras(family, tmp_path):
    """onnx-fp32 and onnx-fp16 through the write-time gate (full checker, strict shape inference,
    one-input signature), then ONNX Runtime and the onnx reference evaluator against Keras on 8 images
    within the kinds' max-diff gates. (convert + validate of all seven kinds of these and five more
    families: benchmarks/applications_sweep.py; a convert/validate round trip on a model with the
    same features: tests/test_conformance.py.)"""
    import keras
    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    from exporter import formats
    from exporter.export import onnx as eo
    from exporter.export.source import ExportSource

    keras.utils.set_random_seed(0)
    model = decisive(getattr(keras.applications, family)(weights=None, input_shape=SHAPE, classes=10))
    path = tmp_path / f"{family}.keras"
    model.save(path)
    x = np.random.default_rng(0).integers(0, 256, (8, *SHAPE)).astype(np.float32)
    expected = np.asarray(model(x, training=False))
    assert (np.sort(expected, 1)[:, -1] - np.sort(expected, 1)[:, -2]).min() > 0.05  # decisive: no near-ties
    source = ExportSource(path, "keras", SHAPE, num_classes=10)
    try:
        for kind, export in (("onnx-fp32", eo.export_fp32), ("onnx-fp16", eo.export_fp16)):
            out = tmp_path / f"{kind}.onnx"
            conf = export(source, out)["conformance"]
            assert [i["name"] for i in conf["inputs"]] == ["image"] and conf["opset"] == eo.OPSET
            proto = onnx.load(str(out))
            inits = {t.name for t in proto.graph.initializer}
            assert [v.name for v in proto.graph.input if v.name not in inits] == ["image"], kind
            got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
            gate = formats.get(kind).gates.max_abs_diff
            assert np.abs(got - expected).max() <= gate, kind
            assert (got.argmax(1) == expected.argmax(1)).all(), kind
            reference = ReferenceEvaluator(proto).run(None, {"image": x[:2]})[0]
            assert np.abs(reference - got[:2]).max() <= gate, kind
    finally:
        source.cleanup()
