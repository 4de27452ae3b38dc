"""Which data a command works on: `--data NAME|FOLDER|FILE.npz`, opened once, with the preprocessing
that goes with it: decided by exporter.data.preprocessing.decide (from the model at convert/import, from
the images at train). Later stages (validate, bench, predict) open the run's data through
exporter.run.open_for_run, which reads the run's record and asks this module: data never imports the run.
(Named `choose`, not `select`: no module here carries a standard-library name.)"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from exporter.data import datasets as data_mod
from exporter.data.own import open_source as open_own_source
from exporter.data.preprocessing import Preprocessing, decide
from exporter.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_DATASET = "fashion_mnist"
BUILTIN_SHAPES = {"fashion_mnist": (28, 28, 1), "mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


def _check_spec(spec: str) -> None:
    if not data_mod.is_builtin_name(spec) and not Path(spec).exists() and "/" not in spec and "." not in spec:
        raise UsageError(f"unknown dataset '{spec}'",
                         hint=f"choose one of: {', '.join(data_mod.DATASETS)}, or pass an image folder or .npz")


_SCANNED: list[dict] = []  # the innermost one_scan() scope: (path, test_split) -> Source


@contextlib.contextmanager
def one_scan():
    """Within this scope (one CLI command, one API call), each folder/.npz of the user's is scanned once,
    however many times the command opens it (e.g. convert --model: to decide preprocessing, then to run)."""
    _SCANNED.append({})
    try:
        yield
    finally:
        _SCANNED.pop()


def open_source(spec: str | None, *, test_split: float | None = None):
    """The user's folder/.npz scanned (every file read, hashed, its header checked); once per one_scan()
    scope. None for a built-in name."""
    spec = str(spec) if spec is not None else DEFAULT_DATASET
    _check_spec(spec)
    if data_mod.is_builtin_name(spec):
        return None
    path = Path(spec)
    if not _SCANNED:
        return open_own_source(path, test_split=test_split)
    key = (str(path.resolve()), test_split)
    if key not in _SCANNED[-1]:
        _SCANNED[-1][key] = open_own_source(path, test_split=test_split)
    return _SCANNED[-1][key]


def native_shape(spec: str | None, source=None) -> tuple | None:
    """(H, W, C) of the data's images as stored: a built-in's, or the first image of the user's data."""
    spec = str(spec) if spec is not None else DEFAULT_DATASET
    if data_mod.is_builtin_name(spec):
        return BUILTIN_SHAPES[spec]
    return source.native_shape if source is not None else None


def for_model(model_input, *, scale: str | None, model=None, data: str | None = None, source=None,
              where="the model") -> Preprocessing:
    """The preprocessing a model needs for `data` (exporter.data.preprocessing.decide)."""
    return decide(model_input, scale=scale, model=model, data_shape=native_shape(data, source), where=where)


def open_data(spec: str | None, *, pp: Preprocessing | None = None, scale: str | None = None, data_dir=None,
              test_split: float | None = None, calib_data=None, train_limit: int | None = None,
              test_limit: int | None = None, source=None) -> data_mod.Dataset:
    """A built-in name (as loaded, or scaled/reshaped if pp asks for it), or the user's folder/.npz, opened
    lazily with pp (or, with no model to decide it, the first image's size and colour and `scale`).
    `source`: the user's data already opened by open_source (so it is scanned once per command)."""
    spec = str(spec) if spec is not None else DEFAULT_DATASET
    _check_spec(spec)
    if data_mod.is_builtin_name(spec):
        if test_split is not None or calib_data is not None:
            raise UsageError(f"--test-split and --calib-data are for your own data, not the built-in {spec}",
                             hint="built-in datasets have their own train and test splits")
        ds = data_mod.load_dataset(spec, data_dir=data_dir, train_limit=train_limit, test_limit=test_limit)
        if pp is None and scale not in (None, "unit"):
            pp = Preprocessing(*ds.input_shape, scale, detected_by=f"--scale {scale}")
        return data_mod.scaled_builtin(ds, pp)
    source = source or open_source(spec, test_split=test_split)
    if pp is None:
        if source.native_shape is None:
            raise UsageError(f"{spec}: cannot tell the image size")
        pp = Preprocessing(*source.native_shape, scale or "unit",
                           detected_by=f"--scale {scale}" if scale else "default 0..1; the data's own image size")
    ds = data_mod.open_own(spec, pp, test_split=test_split, calib_data=calib_data, source=source)
    return data_mod.subset(ds, train_limit=train_limit, test_limit=test_limit)
