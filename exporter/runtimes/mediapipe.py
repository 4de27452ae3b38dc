"""MediaPipe Tasks' ImageClassifier as a runner: the same C++ task graph as the Android, iOS and web SDKs,
fed as an app feeds it — an RGB uint8 image (`mp.Image`, SRGB) at the model's size — reading the
file's own metadata (normalisation, class names) and giving its scores by category index.

Validate's test images are the run's preprocessed inputs; the runner turns each back into the pixels it
came from with the file's recorded normalisation (`(x * std + mean)`, rounded: exact for images stored as
0..255 pixels) and repeats a gray image's channel, as a phone's camera image of a gray picture is. So a
file passes here only if what the SDK does with an app's image is what validate checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporter.errors import MissingRuntimeError, ModelFileError, require
from exporter.export.tflite_app import AppSpec, app_record
from exporter.quiet import native_stderr_hidden
from exporter.runtimes.base import Runner, check_file
from exporter.runtimes.tflite import tflite_precision


class MediaPipeRunner(Runner):
    engine = "mediapipe"

    def __init__(self, path, classifier, record, *, device, mp, version):
        self.classifier, self.record, self._mp = classifier, record, mp
        spec = AppSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in record["spec"].items()})
        self._mean, self._std = (np.asarray(v, np.float32) for v in spec.normalization())
        self._classes = len(spec.class_names)
        self.rgb_adapter = bool(record.get("rgb_adapter"))
        super().__init__(path, device=device, info={
            "provider": "MediaPipe Tasks ImageClassifier (CPU)", "threads": None, "version": version,
            "precision": _precision(path, record),
            "input_dtype": record["input"]["dtype"], "fed_as": "uint8 RGB mp.Image (SRGB) at the model's size"})

    @classmethod
    def load(cls, path, *, device="cpu", threads=None, **_):
        if device != "cpu":
            raise MissingRuntimeError("the MediaPipe runner runs on the CPU here", hint="use --device cpu")
        mp = require("mediapipe", extra="app", purpose="Running .tflite files through MediaPipe Tasks")
        check_file(Path(path), "tflite")
        record = app_record(path)
        if not record:
            raise ModelFileError(f"{path} carries no app metadata, so MediaPipe Tasks refuses it",
                                 hint="re-create it with `resexport convert --force`")
        if not record.get("mediapipe_ready"):
            raise MissingRuntimeError(f"{path}: {record.get('why_not', 'not an image classifier MediaPipe takes')}")
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=-1)
        try:
            with native_stderr_hidden():
                classifier = vision.ImageClassifier.create_from_options(options)
        except Exception as exc:  # MediaPipe's own refusal, e.g. a metadata or tensor-type check
            raise ModelFileError(f"MediaPipe's ImageClassifier refuses {path}: {' '.join(str(exc).split())[:300]}",
                                 hint="re-create it with `resexport convert --force`") from exc
        runner = cls(path, classifier, record, device=device, mp=mp, version=getattr(mp, "__version__", "?"))
        names = runner.categories()
        if names != list(record["spec"]["class_names"]):
            runner.close()
            raise ModelFileError(f"{path}: MediaPipe reads the class names {names[:5]}..., the run has "
                                 f"{list(record['spec']['class_names'])[:5]}...", hint="re-create it with "
                                 "`resexport convert --force`")
        runner.info["category_names"] = "the run's class names, read by MediaPipe from the file's labels"
        return runner

    @property
    def input_shape(self):
        return tuple(self.record["input"]["shape"][1:])

    @property
    def num_outputs(self):
        return self._classes

    def pixels(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed model inputs -> the uint8 RGB images an app would hand the SDK."""
        p = np.clip(np.round(x * self._std + self._mean), 0, 255).astype(np.uint8)
        return np.repeat(p, 3, axis=-1) if p.shape[-1] == 1 else p

    def _predict(self, x):
        out = np.zeros((len(x), self._classes), np.float32)
        with native_stderr_hidden():
            for i, image in enumerate(self.pixels(x)):
                result = self.classifier.classify(self._mp.Image(image_format=self._mp.ImageFormat.SRGB,
                                                                 data=np.ascontiguousarray(image)))
                for c in result.classifications[0].categories:
                    out[i, c.index] = c.score
        return out

    def categories(self) -> list[str]:
        """The category names MediaPipe gives, in output order (from one classification of a black image)."""
        image = np.zeros((*self.input_shape[:2], 3), np.uint8)
        with native_stderr_hidden():
            result = self.classifier.classify(self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=image))
        names = {c.index: c.category_name for c in result.classifications[0].categories}
        return [names.get(i, "") for i in range(self._classes)]

    def close(self) -> None:
        if self.classifier is not None:
            self.classifier.close()
            self.classifier = None


def _precision(path, record) -> str:
    """What the file computes in, read from its tensors as the LiteRT runner reads it."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return tflite_precision(Interpreter(model_path=str(path)), record["input"]["dtype"])
    except ImportError:
        return "unknown"
