"""resexport as a Python library: the same stages as the `resexport` command line.

    import resexport as rx

    run = rx.convert(model, data="digits/")   # keras.Model or path -> Run (a run folder)
    result = rx.validate(run)                  # Validation (.passed, .artifacts, .failures())
    timing = rx.bench(run, batches=(1, 32))    # Bench (.rows, .table())

Everything here is `exporter.api`; errors are `resexport.ResexportError` and its subclasses.

Importing resexport also registers the QAT layers with Keras (exporter.quantize.layers), so a QAT run's
fine-tuned model opens with plain Keras: `keras.saving.load_model("artifacts/<run>/model_qat.keras")`.
That needs Keras imported, so it happens only where Keras imports: the edge box (validate/bench on
.tflite/.onnx, no Keras, no TensorFlow) imports resexport without either. The CLI (exporter.cli) does not
import this package, so `resexport --help` stays fast.
"""

import importlib

from exporter import __version__
from exporter.api import Bench, Validation, bench, convert, report, train, validate
from exporter.errors import ResexportError
from exporter.run import Run

__all__ = ["Bench", "ResexportError", "Run", "Validation", "__version__", "bench", "convert", "report", "train",
           "validate"]


def _register_qat_layers() -> bool:
    try:
        importlib.import_module("keras")
    except ImportError:  # no Keras (the edge box), or its backend is missing: nothing to register
        return False
    importlib.import_module("exporter.quantize.layers")
    return True


_register_qat_layers()
