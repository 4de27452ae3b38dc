"""What exporters export from: a loaded model plus the shared intermediate forms, computed once."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporter.errors import ExportError, MissingRuntimeError, ModelFileError, require
from exporter.runtimes.keras import load_keras_model


def tensorflow():
    tf = require("tensorflow", extra="full", purpose="Conversion to TFLite/ONNX")
    keras = require("keras", extra="full", purpose="Conversion to TFLite/ONNX")  # its backend may be missing

    if keras.backend.backend() != "tensorflow":
        raise MissingRuntimeError(f"conversion needs Keras on the TensorFlow backend, this process runs "
                                  f"'{keras.backend.backend()}'", hint="unset KERAS_BACKEND or set it to tensorflow")
    return tf


@dataclass
class ExportSource:
    path: Path                     # the reference model file or SavedModel folder in the run
    family: str                    # keras | savedmodel
    input_shape: tuple[int, ...]   # one image, HWC
    input_name: str = "image"
    unsafe: bool = False
    num_classes: int | None = None  # when known, the conformance gate checks the output against it
    _model: object = None
    _saved_model_dir: Path | None = None
    _onnx_fp32: bytes | None = None
    _tmp: list = field(default_factory=list)

    def keras_model(self):
        if self._model is None:
            self._model = load_keras_model(self.path, unsafe=self.unsafe)
        return self._model

    def check_weights_finite(self) -> None:
        if self.family == "keras":
            check_weights_finite(self.keras_model(), self.path)

    def saved_model_dir(self) -> Path:
        """A SavedModel with a 'serving_default' signature: the form TFLite's converter needs for
        calibration (variables frozen). Made once per source.

        The signature calls the model with training=False explicitly. Keras' own
        `model.export(format="tf_saved_model")` traces some models in training mode (a `Resizing` or
        `Random*` layer anywhere inside flips it): BatchNormalization then normalises with batch
        statistics and augmentation runs at inference, so every artifact depends on its batch."""
        if self.family == "savedmodel":
            return self.path
        if self._saved_model_dir is None:
            tf = tensorflow()
            import keras

            model = self.keras_model()
            tmp = Path(tempfile.mkdtemp(prefix="resexport-sm-"))
            self._tmp.append(tmp)
            archive = keras.export.ExportArchive()
            archive.track(model)
            spec = tf.TensorSpec((None, *self.input_shape), tf.float32, name=self.input_name)
            archive.add_endpoint(name="serving_default", fn=lambda x: inference_call(model, x),
                                 input_signature=[spec])
            archive.write_out(str(tmp / "sm"), verbose=False)
            self._saved_model_dir = tmp / "sm"
        return self._saved_model_dir

    def serving_function(self):
        """A tf.function image -> {'probabilities': ...} with a dynamic batch and a named input."""
        tf = tensorflow()
        spec = tf.TensorSpec((None, *self.input_shape), tf.float32, name=self.input_name)
        loaded = tf.saved_model.load(str(self.saved_model_dir()))
        if "serving_default" not in loaded.signatures:
            raise ModelFileError(f"{self.path}: SavedModel has no 'serving_default' signature")
        sig = loaded.signatures["serving_default"]
        arg = list(sig.structured_input_signature[1])[0]

        @tf.function(input_signature=[spec])
        def serve(x):
            return {"probabilities": list(sig(**{arg: x}).values())[0]}

        serve._resexport_keepalive = loaded  # keep the variables alive with the function
        return serve

    def frozen_serving_function(self):
        """serving_function with every variable AND every captured tensor folded into the graph as a
        constant: a tf.function whose only input is the image.

        A Keras `Normalization` layer (EfficientNet, ConvNeXt...) computes its mean and variance
        eagerly when built, so the traced function captures them as tensors rather than variables;
        tf2onnx lists a concrete function's captured inputs as graph inputs, which gave ONNX files
        with three inputs (issue 18). Freezing here (convert_variables_to_constants_v2 converts
        captured tensors as well as variables) leaves nothing for a converter to capture."""
        tf = tensorflow()
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        live = self.serving_function()  # holds the loaded SavedModel (its variables) while freezing
        # tf2onnx's own settings: keep control flow, and inline every function call (Keras wraps some
        # ops, e.g. ConvNeXt's depthwise convolutions, in calls that are otherwise left as opaque
        # StatefulPartitionedCall nodes no converter can read)
        frozen = convert_variables_to_constants_v2(live.get_concrete_function(), lower_control_flow=False,
                                                   aggressive_inlining=True)
        del live
        frozen = _without_xla_calls(frozen)
        leftover = [t for t in frozen.inputs if t.dtype != tf.resource]
        if len(leftover) != 1:
            raise ExportError(f"{self.path}: the serving function still has {len(leftover)} inputs after "
                              "freezing (expected the image only)")
        spec = tf.TensorSpec((None, *self.input_shape), tf.float32, name=self.input_name)

        @tf.function(input_signature=[spec])
        def serve(x):
            out = frozen(x)
            if isinstance(out, dict):
                out = next(iter(out.values()))
            if isinstance(out, (list, tuple)):
                out = out[0]
            return {"probabilities": out}

        serve._resexport_keepalive = frozen
        return serve

    def cleanup(self) -> None:
        for tmp in self._tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        self._tmp.clear()


XLA_ATTRS = ("_XlaMustCompile", "_noinline", "_XlaCompile", "_XlaScope")


def _without_xla_calls(frozen):
    """The frozen function with its XLA-compiled calls made ordinary, inlinable calls.

    Keras (TensorFlow backend) runs grouped convolutions (ConvNeXt's depthwise blocks) in a
    `tf.function(jit_compile=True)`: the graph keeps them as StatefulPartitionedCall nodes marked
    `_XlaMustCompile`/`_noinline`, which grappler never inlines and no converter can read. Dropping
    those attributes changes no arithmetic (XLA or not, the body is the same Conv2D)."""
    from tensorflow.python.eager import wrap_function

    graph_def = frozen.graph.as_graph_def()
    xla = {f.signature.name for f in graph_def.library.function if any(a in f.attr for a in XLA_ATTRS)}
    if not xla:
        return frozen
    # renamed, so that the edited definitions never meet the registered ones of the same name
    renamed = {name: f"{name}_inlinable" for name in xla}
    for fn in graph_def.library.function:
        fn.signature.name = renamed.get(fn.signature.name, fn.signature.name)
        for attr in XLA_ATTRS:
            if attr in fn.attr:
                del fn.attr[attr]
    for node in list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]:
        for attr in XLA_ATTRS:
            if attr in node.attr:
                del node.attr[attr]
        for value in node.attr.values():
            if value.HasField("func") and value.func.name in renamed:
                value.func.name = renamed[value.func.name]
    return wrap_function.function_from_graph_def(graph_def, [t.name for t in frozen.inputs],
                                                 [t.name for t in frozen.outputs])


def inference_call(model, x):
    """The model's inference: training=False, never a framework's default tracing mode. A model
    with several outputs (or a dict) is reduced to its first, the classifier head by convention."""
    y = model(x, training=False)
    if isinstance(y, dict):
        y = next(iter(y.values()))
    if isinstance(y, (list, tuple)):
        y = y[0]
    return y


def check_weights_finite(model, path: Path) -> None:
    """NaN or Inf in any weight of a Keras model is bad input: refuse before anything is written."""
    for w in model.weights:
        if not np.all(np.isfinite(np.asarray(w))):
            raise ModelFileError(f"{path}: weight '{w.path}' contains NaN or Inf",
                                 hint="the model diverged in training; retrain it (lower --lr)")
