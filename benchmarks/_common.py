"""Shared by the benchmark scripts: where results go, and the machine they ran on."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUN = ROOT / "artifacts" / "benchmarks-pipeline"   # the run every script measures
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def machine() -> dict:
    from exporter.bench import environment

    return environment("cpu")


def save(name: str, doc: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown)


def need_run() -> Path:
    if not (RUN / "manifest.json").is_file():
        sys.exit(f"{RUN} missing: run benchmarks/pipeline_default.py first")
    return RUN


def model_flops(model) -> int:
    """Multiply-adds x 2 of every Conv2D and Dense, from the layers' output shapes."""
    import keras

    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            flops += 2 * h * w * c_out * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return int(flops)
