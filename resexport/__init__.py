"""resexport as a Python library: the same stages as the `resexport` command line.

    import resexport as rx

    run = rx.convert(model, data="digits/")   # keras.Model or path -> Run (a run folder)
    result = rx.validate(run)                  # Validation (.passed, .artifacts, .failures())
    timing = rx.bench(run, batches=(1, 32))    # Bench (.rows, .table())

Everything here is `exporter.api`; errors are `resexport.ResexportError` and its subclasses.
"""

from exporter import __version__
from exporter.api import Bench, Validation, bench, convert, report, train, validate
from exporter.errors import ResexportError
from exporter.run import Run

__all__ = ["Bench", "ResexportError", "Run", "Validation", "__version__", "bench", "convert", "report", "train",
           "validate"]
