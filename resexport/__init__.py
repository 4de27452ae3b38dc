"""resexport as a Python library: the same stages as the `resexport` command line.

    import resexport as rx

    conv = rx.convert(model, data="digits/")   # keras.Model or path -> Conversion (.run: a Run, .artifacts)
    result = rx.validate(conv.run)             # Validation (.passed, .artifacts, .failures())
    timing = rx.bench(conv.run, batches=(1, 32))  # Bench (.rows, .table())

Each stage takes its options type (rx.ConvertOptions, rx.ValidateOptions, rx.BenchOptions, rx.TrainOptions)
or the same fields as keywords. Everything here is `exporter.api`; errors are `resexport.ResexportError`
and its subclasses.

Importing resexport also registers the QAT layers with Keras (exporter.quantize.layers), so a QAT run's
fine-tuned model opens with plain Keras: `keras.saving.load_model("artifacts/<run>/model_qat.keras")`.
That needs Keras imported, so it happens only where Keras imports: the edge box (validate/bench on
.tflite/.onnx, no Keras, no TensorFlow) imports resexport without either. The CLI (exporter.cli) does not
import this package, so `resexport --help` stays fast.
"""

import importlib

from exporter import __version__
from exporter.api import (Bench, BenchOptions, Conversion, ConvertOptions, KindOutcome, Status, TrainOptions,
                          Validation, ValidateOptions, bench, convert, report, train, validate)
from exporter.errors import ResexportError
from exporter.run import Run

__all__ = ["Bench", "BenchOptions", "Conversion", "ConvertOptions", "KindOutcome", "ResexportError", "Run", "Status",
           "TrainOptions", "Validation", "ValidateOptions", "__version__", "bench", "convert", "report", "train",
           "validate"]


def _register_qat_layers() -> bool:
    try:
        importlib.import_module("keras")
    except ImportError:  # no Keras (the edge box), or its backend is missing: nothing to register
        return False
    importlib.import_module("exporter.quantize.layers")
    return True


_register_qat_layers()
