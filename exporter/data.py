"""Datasets: local-first loading, parsers for the real file formats, the calibration split.

Knows nothing about models or artifact formats. All images come out as float32 NHWC in 0..1,
labels as int64, exactly as the seeds prepare them (pixels / 255).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporter.errors import DataError, UsageError

log = logging.getLogger(__name__)

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(i) for i in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"

REFETCH = "delete the file and fetch it again"
REFETCH_CIFAR = "delete it and download cifar-10-python.tar.gz again"
MISMATCH = "check that the files are this dataset's (or pass the matching --dataset), or fetch them again"


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str = ""
    subset: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "train": int(len(self.y_train)),
                "test": int(len(self.y_test)), "input_shape": list(self.input_shape),
                "class_names": list(self.class_names), **({"subset": self.subset} if self.subset else {})}


# ----------------------------------------------------------------------------------------- IDX

_IDX_DTYPES = {0x08: np.uint8}


def parse_idx(data: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Parse one IDX file (already decompressed). Only unsigned-byte payloads occur in (Fashion-)MNIST."""
    if len(data) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(data)} bytes)", hint=REFETCH)
    zero, dtype_code, ndim = data[0] | data[1], data[2], data[3]
    if zero != 0 or dtype_code not in _IDX_DTYPES or ndim not in (1, 3):
        raise DataError(f"{name}: bad IDX magic number {data[:4].hex()} "
                        "(expected 00000801 for labels or 00000803 for images)", hint=REFETCH)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header", hint=REFETCH)
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = math.prod(dims)  # Python int: np.prod(int64) wraps, e.g. 2**31 * 2**31 * 4 == 0
    if len(data) - header != count:
        raise DataError(f"{name}: IDX header promises {dims} = {count} bytes but the file holds "
                        f"{len(data) - header}: truncated or corrupt", hint=REFETCH)
    return np.frombuffer(data, dtype=_IDX_DTYPES[dtype_code], offset=header).reshape(dims)


def read_idx_gz(path: Path) -> np.ndarray:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip data ({exc})",
                        hint="delete the file and fetch it again") from exc
    return parse_idx(data, name=str(path))


def _check_split(name: str, x: np.ndarray, y: np.ndarray, classes: int, image_shape: tuple) -> None:
    if x.ndim != 1 + len(image_shape) or tuple(x.shape[1:]) != image_shape:
        raise DataError(f"{name}: images have shape {tuple(x.shape[1:])}, expected {image_shape}", hint=MISMATCH)
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{name}: {len(x)} images but {y.shape[0] if y.ndim else 0} labels", hint=MISMATCH)
    if len(y) == 0:
        raise DataError(f"{name}: no samples", hint=MISMATCH)
    if int(y.max()) >= classes or int(y.min()) < 0:
        raise DataError(f"{name}: labels out of range 0..{classes - 1} "
                        f"(found {int(y.min())}..{int(y.max())})", hint=MISMATCH)


def load_idx_folder(folder: Path, *, name: str, class_names: tuple[str, ...]) -> Dataset:
    arrays = {key: read_idx_gz(folder / fname) for key, fname in IDX_FILES.items()}
    return _finish(name, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                   class_names, str(folder))


# ------------------------------------------------------------------------------------- CIFAR-10

class _SafeUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow only the handful of globals a numpy array needs."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def parse_cifar_batch(data: bytes, *, name: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR-10 python batch: a pickled dict with b'data' (N x 3072 uint8, channel-major
    1024 R, 1024 G, 1024 B, rows of 32) and b'labels' (N ints). Returns NHWC uint8 and int64 labels."""
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # the pickle module raises a zoo of types on corrupt input
        raise DataError(f"{name}: not a readable CIFAR-10 python batch ({type(exc).__name__}: {exc})",
                        hint=REFETCH) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{name}: not a CIFAR-10 batch (top level is {type(obj).__name__}, expected dict)",
                        hint=REFETCH)
    raw = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if raw is None or labels is None:
        raise DataError(f"{name}: CIFAR-10 batch lacks 'data' or 'labels'", hint=REFETCH)
    try:
        raw = np.asarray(raw)
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"{name}: CIFAR-10 'data' or 'labels' are not arrays of integers",
                        hint=REFETCH) from exc
    if raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] != 3072:
        raise DataError(f"{name}: CIFAR-10 'data' must be uint8 of shape (N, 3072), "
                        f"found {raw.dtype} {raw.shape}", hint=REFETCH)
    if labels.ndim != 1 or len(labels) != len(raw):
        raise DataError(f"{name}: {len(raw)} images but {labels.size} labels", hint=REFETCH)
    images = raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _read_cifar_members(source: Path) -> dict[str, bytes]:
    wanted = (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH)
    members: dict[str, bytes] = {}
    if source.is_dir():
        for m in wanted:
            path = source / m
            if not path.is_file():
                raise DataError(f"{source}: missing CIFAR-10 batch file {m}", hint=REFETCH_CIFAR)
            members[m] = path.read_bytes()
        return members
    try:
        with tarfile.open(source, "r:gz") as tar:
            for info in tar.getmembers():
                base = info.name.rsplit("/", 1)[-1]
                if base in wanted and info.isfile():
                    fh = tar.extractfile(info)
                    members[base] = fh.read() if fh else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source}: corrupt CIFAR-10 archive ({exc})",
                        hint=REFETCH_CIFAR) from exc
    missing = [m for m in wanted if m not in members]
    if missing:
        raise DataError(f"{source}: archive lacks {', '.join(missing)}", hint=REFETCH_CIFAR)
    return members


def load_cifar10_source(source: Path) -> Dataset:
    members = _read_cifar_members(source)
    train = [parse_cifar_batch(members[m], name=f"{source}/{m}") for m in CIFAR_TRAIN_BATCHES]
    x_test, y_test = parse_cifar_batch(members[CIFAR_TEST_BATCH], name=f"{source}/{CIFAR_TEST_BATCH}")
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return _finish("cifar10", x_train, y_train, x_test, y_test, CIFAR10_CLASSES, str(source))


# ------------------------------------------------------------------------------------- loading

def _finish(name, x_train, y_train, x_test, y_test, class_names, source) -> Dataset:
    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    if x_train.ndim == 3:
        x_train = x_train[..., None]
    if x_test.ndim == 3:
        x_test = x_test[..., None]
    image_shape = tuple(x_train.shape[1:])
    y_train = np.asarray(y_train).astype(np.int64).reshape(-1)
    y_test = np.asarray(y_test).astype(np.int64).reshape(-1)
    _check_split(f"{name} train split ({source})", x_train, y_train, len(class_names), image_shape)
    _check_split(f"{name} test split ({source})", x_test, y_test, len(class_names), image_shape)
    return Dataset(name, _to_unit_float(x_train), y_train, _to_unit_float(x_test), y_test,
                   tuple(class_names), source)


def _to_unit_float(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / np.float32(255.0)) if x.dtype == np.uint8 else x.astype(np.float32)


@dataclass(frozen=True)
class _Spec:
    folders: tuple[str, ...]  # sub-folder names tried under every root
    system: tuple[str, ...]   # absolute folders (Debian packages)
    classes: tuple[str, ...]
    keras_name: str
    how_to_get: str


DATASETS = {
    "fashion_mnist": _Spec(("fashion-mnist", "fashion_mnist"), ("/usr/share/datasets/fashion-mnist",),
                           FASHION_CLASSES, "fashion_mnist",
                           "on Debian: apt-get install dataset-fashion-mnist; elsewhere the network "
                           "download (keras.datasets) or --data-dir with the four *-ubyte.gz files"),
    "mnist": _Spec(("mnist",), ("/usr/share/datasets/mnist",), MNIST_CLASSES, "mnist",
                   "the network download (keras.datasets) or --data-dir with the four *-ubyte.gz files"),
    "cifar10": _Spec((CIFAR_FOLDER, "cifar10", "cifar-10"), (), CIFAR10_CLASSES, "cifar10",
                     "download cifar-10-python.tar.gz from the CIFAR-10 page of the University of "
                     "Toronto and pass --data-dir to the .tar.gz or its extracted folder"),
}


def dataset_names() -> list[str]:
    return list(DATASETS)


def candidate_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every place looked at, in order: --data-dir, $RESEXPORT_DATA, ~/.keras/datasets, system."""
    spec = DATASETS[name]
    roots = [Path(p) for p in (data_dir, os.environ.get("RESEXPORT_DATA")) if p]
    roots.append(Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets")
    out: list[Path] = []
    for root in roots:
        out.append(root)
        out.extend(root / sub for sub in spec.folders)
        if name == "cifar10":
            out.append(root / CIFAR_ARCHIVE)
    out.extend(Path(p) for p in spec.system)
    return list(dict.fromkeys(out))


def _local(name: str, place: Path) -> Dataset | None:
    if name == "cifar10":
        if place.is_file() and place.name.endswith((".tar.gz", ".tgz")):
            return load_cifar10_source(place)
        if place.is_dir() and (place / CIFAR_TEST_BATCH).is_file():
            return load_cifar10_source(place)
        return None
    if place.is_dir() and all((place / f).is_file() for f in IDX_FILES.values()):
        return load_idx_folder(place, name=name, class_names=DATASETS[name].classes)
    return None


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, download: bool = True,
                 train_limit: int | None = None, test_limit: int | None = None) -> Dataset:
    """Load a dataset from the first local place that has it, else keras.datasets' download.

    train_limit/test_limit take a deterministic stratified subset (for quick runs and tests);
    the subset is recorded in Dataset.subset.
    """
    if name not in DATASETS:
        raise UsageError(f"unknown dataset '{name}'", hint=f"choose one of: {', '.join(DATASETS)}")
    if data_dir is not None and not Path(data_dir).exists():
        raise DataError(f"--data-dir {data_dir} does not exist",
                        hint="pass the folder (or for cifar10 the .tar.gz) that holds the dataset files")
    places = candidate_dirs(name, data_dir)
    ds = None
    for place in places:
        ds = _local(name, place)
        if ds is not None:
            log.info("loaded %s from %s", name, place)
            break
    if ds is None and download:
        ds = _download(name, places)
    if ds is None:
        raise DataError(f"{name} not found; looked in: {', '.join(map(str, places))}",
                        hint=f"get it: {DATASETS[name].how_to_get}")
    return subset(ds, train_limit=train_limit, test_limit=test_limit)


def _download(name: str, places: list[Path]) -> Dataset:
    spec = DATASETS[name]
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, spec.keras_name).load_data()
    except Exception as exc:  # network, SSL, corrupt cache: all mean "could not get it"
        raise DataError(f"{name} not found locally (looked in: {', '.join(map(str, places))}) "
                        f"and the keras.datasets download failed ({type(exc).__name__}: {exc})",
                        hint=f"get it: {spec.how_to_get}") from exc
    return _finish(name, x_train, y_train, x_test, y_test, spec.classes, f"keras.datasets.{spec.keras_name}")


# ---------------------------------------------------------------------------- subsets and calib

def stratified_indices(labels: np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
    """n indices spread as evenly as possible over the classes, deterministic for (labels, n, seed)."""
    labels = np.asarray(labels)
    if n <= 0:
        raise UsageError(f"sample count must be positive, got {n}")
    if n > len(labels):
        raise UsageError(f"asked for {n} samples but only {len(labels)} are available")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    take = {c: 0 for c in classes}
    remaining = n
    while remaining:  # round-robin so small classes are exhausted gracefully
        for c in classes:
            if remaining and take[c] < len(pools[c]):
                take[c] += 1
                remaining -= 1
    return np.sort(np.concatenate([pools[c][: take[c]] for c in classes])).astype(np.int64)


def indices_hash(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()[:16]


def subset(ds: Dataset, *, train_limit: int | None = None, test_limit: int | None = None) -> Dataset:
    if not train_limit and not test_limit:
        return ds
    info = dict(ds.subset)
    x_train, y_train, x_test, y_test = ds.x_train, ds.y_train, ds.x_test, ds.y_test
    if train_limit and train_limit < len(y_train):
        idx = stratified_indices(y_train, train_limit, seed=1)
        x_train, y_train = x_train[idx], y_train[idx]
        info["train"] = {"count": int(train_limit), "indices_sha256": indices_hash(idx)}
    if test_limit and test_limit < len(y_test):
        idx = stratified_indices(y_test, test_limit, seed=2)
        x_test, y_test = x_test[idx], y_test[idx]
        info["test"] = {"count": int(test_limit), "indices_sha256": indices_hash(idx)}
    return Dataset(ds.name, x_train, y_train, x_test, y_test, ds.class_names, ds.source, info)


MIN_CALIBRATION = 10


@dataclass(frozen=True)
class Calibration:
    x: np.ndarray
    indices: np.ndarray
    hash: str

    def describe(self) -> dict:
        return {"split": "train", "count": int(len(self.indices)), "indices_sha256": self.hash}


def calibration_set(ds: Dataset, n: int = 500, *, seed: int = 0) -> Calibration:
    """A stratified calibration subset drawn from the TRAINING split only, so it is disjoint from
    the test set that validation uses by construction."""
    if n < MIN_CALIBRATION:
        raise UsageError(f"--calib-samples {n} is too few for int8 calibration",
                         hint=f"use at least {MIN_CALIBRATION} (default 500)")
    idx = stratified_indices(ds.y_train, n, seed=seed)
    return Calibration(ds.x_train[idx], idx, indices_hash(idx))


def holdout_set(ds: Dataset, n: int, *, exclude=(), seed: int = 3) -> Calibration:
    """A stratified slice of the TRAINING split, disjoint from `exclude` (indices into ds.x_train:
    the calibration set, the images a model was trained on): where int8 choices are measured, so the
    test set stays unseen until validation. Falls back to the non-excluded images if fewer than n are left."""
    keep = np.setdiff1d(np.arange(len(ds.y_train)), np.asarray(list(exclude), dtype=np.int64))
    if len(keep) == 0:
        raise UsageError("no training images are left outside the calibration and training subsets",
                         hint="use fewer --calib-samples")
    idx = keep[stratified_indices(ds.y_train[keep], min(n, len(keep)), seed=seed)]
    return Calibration(ds.x_train[idx], idx, indices_hash(idx))
