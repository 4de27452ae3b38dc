"""TFLite exporters: float32, float16, dynamic-range, full-integer int8 (calibrated)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from exporter.errors import ResexportError, UsageError
from exporter.export.source import ExportSource, tensorflow
from exporter.fsutil import atomic_path
from exporter.quiet import native_stderr_hidden


def _convert(source: ExportSource, out: Path, configure) -> dict:
    tf = tensorflow()
    start = time.perf_counter()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(source.saved_model_dir()))
    configure(tf, converter)
    try:
        with native_stderr_hidden():  # the converter prints "fully_quantize: 0, inference_type: 6, ..." to fd 2
            blob = converter.convert()
    except ResexportError:
        raise
    except Exception as exc:  # the converter raises ConverterError, RuntimeError, ValueError...
        raise ResexportError(f"TFLite conversion of {source.path} failed: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]}") from exc
    with atomic_path(out) as tmp:
        tmp.write_bytes(blob)
    return {"converter": "tf.lite.TFLiteConverter.from_saved_model", "seconds": round(time.perf_counter() - start, 2)}


def export_fp32(source: ExportSource, out: Path, calibration=None) -> dict:
    return _convert(source, out, lambda tf, c: None)


def export_fp16(source: ExportSource, out: Path, calibration=None) -> dict:
    def configure(tf, c):
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.target_spec.supported_types = [tf.float16]

    return _convert(source, out, configure)


def export_dynamic(source: ExportSource, out: Path, calibration=None) -> dict:
    return _convert(source, out, lambda tf, c: setattr(c, "optimizations", [tf.lite.Optimize.DEFAULT]))


def export_int8(source: ExportSource, out: Path, calibration=None) -> dict:
    """Full integer: every op int8, input and output int8 (the runner quantises/dequantises with
    the parameters stored in the file). Calibrated on the training-split calibration subset."""
    if calibration is None:
        raise UsageError("tflite-int8 needs a calibration set")
    images = np.asarray(calibration.x, dtype=np.float32)

    def representative():
        for i in range(len(images)):
            yield [images[i: i + 1]]

    def configure(tf, c):
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = representative
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        c.inference_input_type = tf.int8
        c.inference_output_type = tf.int8

    return _convert(source, out, configure)
