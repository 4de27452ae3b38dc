"""What exporters export from: a loaded model plus the shared intermediate forms, computed once."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporter.errors import MissingRuntimeError, ModelFileError, require


def tensorflow():
    tf = require("tensorflow", extra="full", purpose="Conversion to TFLite/ONNX")
    import keras

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
    _model: object = None
    _saved_model_dir: Path | None = None
    _onnx_fp32: bytes | None = None
    _tmp: list = field(default_factory=list)

    def keras_model(self):
        if self._model is None:
            from exporter.runtimes.keras import load_keras_model

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

    def cleanup(self) -> None:
        for tmp in self._tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        self._tmp.clear()


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
