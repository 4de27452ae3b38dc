"""TFLite exporters: float32, float16, dynamic-range, full-integer int8 (calibrated)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from exporter.errors import ResexportError, UsageError
from exporter.export.conformance import write_checked
from exporter.export.source import ExportSource, tensorflow
from exporter.export.tflite_app import AppSpec, make_app_ready
from exporter.quiet import native_stderr_hidden


def write_tflite(source: ExportSource, out: Path, blob: bytes, kind: str = "tflite") -> dict:
    """Every TFLite file is written here: atomically, and only if it passes the conformance gate
    (loads in LiteRT with tensors allocated, one image in, one batch x classes out)."""
    return write_checked(out, blob, kind, input_shape=source.input_shape, num_classes=source.num_classes)


def _convert(source: ExportSource, out: Path, configure, kind: str = "tflite") -> dict:
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
    record = write_tflite(source, out, blob, kind)
    return {"converter": "tf.lite.TFLiteConverter.from_saved_model", "seconds": round(time.perf_counter() - start, 2),
            "conformance": record}


def export_fp32(source: ExportSource, out: Path, calibration=None) -> dict:
    return _convert(source, out, lambda tf, c: None, "tflite-fp32")


def export_fp16(source: ExportSource, out: Path, calibration=None) -> dict:
    def configure(tf, c):
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.target_spec.supported_types = [tf.float16]

    return _convert(source, out, configure, "tflite-fp16")


def export_dynamic(source: ExportSource, out: Path, calibration=None) -> dict:
    return _convert(source, out, lambda tf, c: setattr(c, "optimizations", [tf.lite.Optimize.DEFAULT]), "tflite-dynamic")


def _representative(images: np.ndarray):
    def gen():
        for i in range(len(images)):
            yield [images[i: i + 1]]

    return gen


def _configure_int8(tf, c, images: np.ndarray) -> None:
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = _representative(images)
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = tf.int8
    c.inference_output_type = tf.int8


def int8_converter(source: ExportSource, calibration):
    """The converter export_int8 uses, configured and not yet run: the one place its settings live
    (exporter.quantize.diagnose debugs exactly this converter)."""
    if calibration is None:
        raise UsageError("tflite-int8 needs a calibration set")
    tf = tensorflow()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(source.saved_model_dir()))
    _configure_int8(tf, converter, np.asarray(calibration.x, dtype=np.float32))
    return converter


def export_int8(source: ExportSource, out: Path, calibration=None, float_layers=None, **_) -> dict:
    """Full integer: every op int8, input and output int8 (the runner quantises/dequantises with
    the parameters stored in the file). Calibrated on the training-split calibration subset.

    `float_layers`: output tensor names of ops to keep in float32 (selective quantisation, chosen by
    exporter.quantize.diagnose.fallback_search); see quantize_calibrated."""
    if calibration is None:
        raise UsageError("tflite-int8 needs a calibration set")
    if float_layers:
        start = time.perf_counter()
        blob = quantize_calibrated(calibrate_only(source, calibration), float_layers)
        record = write_tflite(source, out, blob, "tflite-int8")
        return {"converter": "tf.lite.TFLiteConverter.from_saved_model (calibrate only) + mlir_quantize "
                             "(denylisted_nodes)", "seconds": round(time.perf_counter() - start, 2),
                "conformance": record}
    images = np.asarray(calibration.x, dtype=np.float32)
    return _convert(source, out, lambda tf, c: _configure_int8(tf, c, images), "tflite-int8")


def calibrate_only(source: ExportSource, calibration) -> bytes:
    """The float model with calibration statistics, before quantisation: what QuantizationDebugger
    starts from (its converter is export_int8's, with `_experimental_calibrate_only`)."""
    converter = int8_converter(source, calibration)
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True
    try:
        with native_stderr_hidden():
            return converter.convert()
    except Exception as exc:
        raise ResexportError(f"TFLite calibration of {source.path} failed: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]}") from exc


def quantize_calibrated(calibrated: bytes, float_layers) -> bytes:
    """Quantise a calibrated model keeping the ops whose output tensors are `float_layers` in float32,
    with int8 input and output like export_int8.

    QuantizationDebugger.get_nondebug_quantized_model() does the same selective quantisation
    (denylisted_nodes) but with float32 input/output: it calls mlir_quantize without I/O types.
    We call the same function with them, so the artifact keeps tflite-int8's int8 interface."""
    tf = tensorflow()
    from tensorflow.lite.python import convert as tfl_convert

    try:
        with native_stderr_hidden():  # mlir_quantize prints "fully_quantize: 1, inference_type: 6, ..." to fd 2
            return tfl_convert.mlir_quantize(calibrated, disable_per_channel=False, fully_quantize=True,
                                             input_data_type=tf.int8, output_data_type=tf.int8,
                                             denylisted_nodes=list(float_layers) or None)
    except Exception as exc:
        raise ResexportError(f"TFLite selective quantisation failed: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]}") from exc


def quantize_debug_model(calibrated: bytes) -> bytes:
    """The calibrated model quantised with NumericVerify ops after each quantised op (float I/O):
    what QuantizationDebugger.get_debug_quantized_model() returns for export_int8's converter."""
    tensorflow()
    from tensorflow.lite.python import convert as tfl_convert

    with native_stderr_hidden():
        return tfl_convert.mlir_quantize(calibrated, disable_per_channel=False, fully_quantize=False,
                                         enable_numeric_verify=True)


def export_qat_int8(qat_model, out: Path, input_shape, *, target_cpu: str = "auto") -> dict:
    """Full-int8 TFLite from a quantisation-aware model (exporter.quantize.qat): the FakeQuant ranges
    become the file's quantisation, int8 input and output like export_int8, no calibration pass.
    `target_cpu` is ONNX's choice: LiteRT's int8 kernels take the same file on every CPU."""
    from exporter.quantize import qat

    start = time.perf_counter()
    try:
        blob = qat.tflite_bytes(qat_model, input_shape)
    except ResexportError:
        raise
    except Exception as exc:
        raise ResexportError(f"TFLite conversion of the QAT model failed: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]}") from exc
    record = write_checked(out, blob, "tflite-int8", input_shape=tuple(input_shape),
                           num_classes=int(qat_model.output_shape[-1]))
    return {"converter": "tf.lite.TFLiteConverter.from_concrete_functions (QAT FakeQuant ranges; int8 input/output)",
            "conformance": record, "seconds": round(time.perf_counter() - start, 2)}


def int8_key(target_cpu: str, mode: str) -> dict:
    """What a TFLite int8 file depends on besides model, calibration and remedy: nothing (one file for every CPU)."""
    return {}


def app_ready(path: Path, deploy: dict, *, name: str, version: str, num_classes=None) -> dict:
    """Make a written .tflite app-ready in place (exporter.export.tflite_app: MediaPipe Tasks' metadata, RGB
    input for gray models, uint8 I/O for int8), through the conformance gate again; returns the gate's
    record of the final file with what was done under "app"."""
    blob, record = make_app_ready(Path(path).read_bytes(), AppSpec.from_deployment(deploy, name=name, version=version))
    return {**write_checked(Path(path), blob, "tflite", input_shape=record["input"]["shape"][1:],
                            num_classes=num_classes, input_dtypes=(record["input"]["dtype"],)), "app": record}
