"""resexport as a Python library: the same stages as the `resexport` command line.

    import resexport as rx

    conv = rx.convert(model, data="digits/")   # keras.Model or path -> Conversion (.run: a Run, .artifacts)
    result = rx.validate(conv.run)             # Validation (.passed, .artifacts, .failures())
    timing = rx.bench(conv.run, batches=(1, 32))  # Bench (.rows, .table())

Each stage takes its options type (rx.ConvertOptions, rx.ValidateOptions, rx.BenchOptions, rx.TrainOptions)
or the same fields as keywords. Everything here is `exporter.api`; errors are `resexport.ResexportError`
and its subclasses.
"""

from exporter import __version__
from exporter.api import (Bench, BenchOptions, Conversion, ConvertOptions, KindOutcome, Status, TrainOptions,
                          Validation, ValidateOptions, bench, convert, report, train, validate)
from exporter.errors import ResexportError
from exporter.run import Run

__all__ = ["Bench", "BenchOptions", "Conversion", "ConvertOptions", "KindOutcome", "ResexportError", "Run", "Status",
           "TrainOptions", "Validation", "ValidateOptions", "__version__", "bench", "convert", "report", "train",
           "validate"]
