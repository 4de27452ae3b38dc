"""`resexport web`: the run's .onnx and .tflite files in a page a person uses, served on 127.0.0.1.

The page (exporter/web/index.html) runs every file in the visitor's browser through the same engine.js
the browser runner drives (onnxruntime-web, LiteRT.js), on test images from the run's data (click through
them) or the visitor's own (pick or drop; preprocessed in the page as the run records it), and shows each
kind's top-3 and latency side by side, the Keras reference's answer for test images (from the
reference_outputs.npz validate writes) and where the kinds disagree. This module only gathers what the
page needs and serves it; it computes nothing."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter import formats
from exporter.errors import UsageError
from exporter.export.tflite_app import static_batch
from exporter.run import Run
from exporter.runtimes.browser import ENGINES, io_spec
from exporter.runtimes.chromium import Server, check_js_packages
from exporter.validate import REFERENCE_CACHE

log = logging.getLogger(__name__)


@dataclass
class WebApp:
    server: Server
    kinds: list[str]
    samples: int
    reference: bool

    @property
    def url(self) -> str:
        return f"{self.server.url}/web/index.html"

    def close(self) -> None:
        self.server.close()


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.float32).tobytes()).decode("ascii")


def _reference(run: Run, dataset, n: int) -> np.ndarray | None:
    """The reference model's outputs on the first n test images, if validate cached them for this test set."""
    cache = run / REFERENCE_CACHE
    if not cache.is_file():
        return None
    with np.load(cache) as npz:
        if str(npz["test_hash"]) != dataset.content_hash or len(npz["outputs"]) < n:
            return None
        return np.asarray(npz["outputs"][:n], np.float32)


def serve(*, run: Run, dataset, port: int = 8000, samples: int = 60) -> WebApp:
    """Start serving the run's page on 127.0.0.1:port (0: any free port); the caller closes it."""
    kinds = [k for k in run.artifacts if formats.get(k).family in ENGINES and run.artifact_path(k).is_file()]
    if not kinds:
        raise UsageError(f"{run} has no .onnx or .tflite files to run in the browser",
                         hint="run `resexport convert` first")
    versions = check_js_packages()
    n = min(samples, len(dataset.y_test))
    x = np.asarray(dataset.x_test[:n], np.float32)
    ref = _reference(run, dataset, n)
    server = Server(port, home="/web/index.html")
    entries = []
    for name in kinds:
        path, family = run.artifact_path(name), formats.get(name).family
        io, record = io_spec(path, family)
        pinned = static_batch(path.read_bytes()) if family == "tflite" else None
        url = server.add_file(path, name=Path(path).name, content=pinned)
        entries.append({"kind": name, "family": family, "url": url, "io": io, "engine": ENGINES[family],
                        "version": versions[ENGINES[family]],
                        "rgb_adapter": bool(record and record.get("rgb_adapter"))})
    info = {"run": run.name, "kinds": entries,
            "class_names": list(dataset.class_names), "preprocessing": run.recorded_preprocessing.to_dict(),
            "samples": n, "reference": ref is not None,
            "reference_note": None if ref is not None else f"no {REFERENCE_CACHE} for this test set: run "
                                                            "`resexport validate` once to see Keras' answers"}
    server.api["run.json"] = lambda: info
    server.api["samples.json"] = lambda: {"x": _b64(x), "shape": list(x.shape[1:]),
                                          "labels": [int(v) for v in dataset.y_test[:n]],
                                          "reference": _b64(ref) if ref is not None else None}
    log.info("serving %s on %s", run, server.url)
    return WebApp(server, kinds, n, ref is not None)
