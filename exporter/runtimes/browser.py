"""The browser as a runner: each .onnx file through onnxruntime-web and each .tflite file through LiteRT.js,
both on WASM, in headless Chromium (exporter/runtimes/chromium.py), fed from Python batch by batch.

What the page runs is exporter/web/engine.js, the same code the page of `resexport web` calls. A TFLite
file is fed as its app record says an app feeds it: its input dtype and quantisation (an int8 file takes
uint8, quantised in the page with the file's scale and zero point; its uint8 output dequantised there) and
RGB for a gray model with an RGB adapter (the base Runner repeats the channel). LiteRT.js refuses a
dynamic batch (shape_signature -1) and never resizes inputs, so a .tflite is served with its batch pinned
to 1 (export/tflite_app.static_batch, recorded in `info["served_as"]`) and run image by image. A file the browser
runtime cannot load or run raises ModelFileError with the runtime's own words: validate records it as that
kind's failed verdict."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from exporter import formats
from exporter.errors import MissingRuntimeError, ModelFileError
from exporter.export.tflite_app import app_record, static_batch
from exporter.runtimes.base import Runner, check_file
from exporter.runtimes.chromium import host

ENGINES = {"onnx": "onnxruntime-web", "tflite": "@litertjs/core"}
PINNED_NOTE = ("the file with its batch pinned to 1 (shape_signature -1 -> 1; ops, weights, quantisation unchanged): "
               "LiteRT.js 2.5 refuses a dynamic batch, so a web app needs this too")


def io_spec(path: Path, family: str) -> tuple[dict, dict | None]:
    """(how the page feeds and reads the file, the file's app record or None)."""
    if family != "tflite":
        return {"dtype": "float32"}, None
    record = app_record(path)
    if not record:
        return {"dtype": "float32"}, None
    q_in, q_out = record["input"].get("quantization"), record["output"].get("quantization")
    io = {"dtype": record["input"]["dtype"], **(q_in or {}),
          "output": {"dtype": record["output"]["dtype"], **(q_out or {})}}
    return io, record


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text.split(" Call log:")[0][:300]


class BrowserRunner(Runner):
    engine = "browser"

    def __init__(self, path, page, handle: int, opened: dict, record: dict | None, *, device, threads, family):
        self.page, self.handle, self.record, self.family = page, handle, record, family
        self.rgb_adapter = bool(record and record.get("rgb_adapter"))
        self._shape = tuple(record["input"]["shape"][1:]) if record else None
        self._classes = len(record["spec"]["class_names"]) if record else None
        self.ms: list[float] = []  # time of each model call inside the page (performance.now), this runner's life
        info = opened["info"]
        browser = host()
        super().__init__(path, device=device, info={
            "provider": f"{info['engine']} (wasm{', SIMD' if info.get('simd', True) else ''}, "
                        f"{threads} thread{'s' if threads > 1 else ''}) in headless Chromium {browser.version}",
            "threads": threads, "browser": f"Chromium {browser.version}",
            "js_package": f"{ENGINES[family]} {browser.packages[ENGINES[family]]}",
            "page": {k: v for k, v in info.items() if k != "userAgent"},
            "precision": record["input"]["dtype"] if record and record["input"]["dtype"] != "float32" else "see file",
            "fed_as": f"{opened.get('input_dtype', (record or {}).get('input', {}).get('dtype', 'float32'))} "
                      "batches from Python (base64), quantised in the page as an app does"})

    @classmethod
    def load(cls, path, *, device="cpu", threads=None, **_):
        if device != "cpu":
            raise MissingRuntimeError("the browser runner runs on WASM (CPU) here", hint="use --device cpu")
        path = Path(path)
        family = formats.family_of_path(path)
        check_file(path, family)
        try:
            io, record = io_spec(path, family)
            pinned = static_batch(path.read_bytes()) if family == "tflite" else None
        except Exception as exc:  # a flatbuffer that does not parse: the file's failure, before the browser
            raise ModelFileError(f"{path.name} is not a readable TFLite file: {_one_line(exc)}",
                                 hint="the file is corrupt or truncated; re-create it") from exc
        threads = threads or 1
        browser = host()
        page = browser.page(threads)
        url = browser.server.add_file(path, content=pinned)
        try:
            opened = page.evaluate("([u, f, io, t]) => window.resexport.open(u, f, io, t)", [url, family, io, threads])
        except Exception as exc:  # the JS runtime's refusal (playwright.Error): this file's failure
            raise ModelFileError(f"{ENGINES[family]} in Chromium cannot load {path.name}: {_one_line(exc)}",
                                 hint="the file runs natively but not in this browser runtime") from exc
        runner = cls(path, page, opened["id"], opened, record, device=device, threads=threads, family=family)
        if pinned is not None:
            runner.info["served_as"] = PINNED_NOTE
        return runner

    @property
    def input_shape(self):
        return self._shape

    @property
    def num_outputs(self):
        return self._classes

    def _predict(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        payload = base64.b64encode(x.tobytes()).decode("ascii")
        try:
            res = self.page.evaluate("([id, b, n, s]) => window.resexport.predict(id, b, n, s)",
                                     [self.handle, payload, len(x), list(x.shape[1:])])
        except Exception as exc:
            raise ModelFileError(f"{ENGINES[self.family]} in Chromium cannot run {self.path.name}: {_one_line(exc)}",
                                 hint="the file runs natively but not in this browser runtime") from exc
        self.ms.extend(res["ms"])
        return np.frombuffer(base64.b64decode(res["out"]), dtype=np.float32).reshape(len(x), -1)

    def close(self) -> None:
        if self.handle is not None:
            try:
                self.page.evaluate("(id) => window.resexport.close(id)", self.handle)
            finally:
                self.handle = None
