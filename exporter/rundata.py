"""Which data a command works on: `--data NAME|FOLDER|FILE.npz` and the preprocessing that goes with
it, decided once (from the model's input at convert/import, or from the images at train) and read
back from the run's manifest by every later stage (validate, bench, predict)."""

from __future__ import annotations

import logging
from pathlib import Path

from exporter import data as data_mod
from exporter import manifest as mf
from exporter.errors import UsageError
from exporter.owndata import Preprocessing

log = logging.getLogger(__name__)

DEFAULT_DATASET = "fashion_mnist"


def model_preprocessing(input_shape, scale: str | None, where) -> Preprocessing:
    """The preprocessing a model needs: its input's height, width and channels, and the scale."""
    shape = tuple(input_shape)
    if len(shape) != 3 or any(d is None for d in shape):
        raise UsageError(f"{where}: the model's input shape {shape} is not a fixed (height, width, channels)",
                         hint="export the model with a fixed input size")
    return Preprocessing(int(shape[0]), int(shape[1]), int(shape[2]), scale or "unit")


def open_data(spec: str | None, *, pp: Preprocessing | None = None, scale: str | None = None, data_dir=None,
              test_split: float | None = None, calib_data=None, train_limit: int | None = None,
              test_limit: int | None = None) -> data_mod.Dataset:
    """A built-in name (as before; scaled if pp asks for it), or the user's folder/.npz, opened lazily with
    pp (or, with no model to read it from, the first image's size and colour and `scale`)."""
    spec = str(spec) if spec is not None else DEFAULT_DATASET
    if data_mod.is_builtin_name(spec):
        if test_split is not None or calib_data is not None:
            raise UsageError(f"--test-split and --calib-data are for your own data, not the built-in {spec}",
                             hint="built-in datasets have their own train and test splits")
        ds = data_mod.load_dataset(spec, data_dir=data_dir, train_limit=train_limit, test_limit=test_limit)
        if pp is None and scale not in (None, "unit"):
            pp = Preprocessing(*ds.input_shape, scale)
        return data_mod.scaled_builtin(ds, pp)
    if not Path(spec).exists() and "/" not in spec and "." not in spec:
        raise UsageError(f"unknown dataset '{spec}'",
                         hint=f"choose one of: {', '.join(data_mod.dataset_names())}, or pass an image folder or .npz")
    source = None
    if pp is None:
        from exporter.owndata import open_source

        source = open_source(Path(spec), test_split=test_split)
        if source.native_shape is None:
            raise UsageError(f"{spec}: cannot tell the image size")
        pp = Preprocessing(*source.native_shape, scale or "unit")
    ds = data_mod.open_own(spec, pp, test_split=test_split, calib_data=calib_data, source=source)
    return data_mod.subset(ds, train_limit=train_limit, test_limit=test_limit)


def run_preprocessing(man: dict) -> Preprocessing | None:
    rec = man.get("preprocessing")
    return Preprocessing.from_dict(rec) if rec else None


def open_for_run(run: Path, *, data: str | None = None, data_dir=None, test_limit: int | None = None,
                 man: dict | None = None) -> data_mod.Dataset:
    """The run's own data (as recorded in its manifest) or `data`, with the run's preprocessing."""
    man = man or mf.read_manifest(run)
    pp = run_preprocessing(man)
    origin = man.get("dataset", {}).get("origin") or {}
    if data is None:
        spec = origin.get("path") or man.get("dataset", {}).get("name") or DEFAULT_DATASET
        return open_data(spec, pp=pp, data_dir=data_dir, test_split=origin.get("test_split"),
                         calib_data=origin.get("calib_data"), test_limit=test_limit)
    return open_data(data, pp=pp, data_dir=data_dir, test_limit=test_limit)
