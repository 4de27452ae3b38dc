"""Datasets: local-first loading, parsers for the real file formats, the calibration split.

Knows nothing about models or artifact formats. All images come out as float32 NHWC in 0..1,
labels as int64, exactly as the seeds prepare them (pixels / 255).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from exporter.data.preprocessing import Preprocessing
from exporter.errors import DataError, UsageError
from exporter.data import own as owndata

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
    origin: dict = field(default_factory=dict)          # the user's own data: kind, path, split; {} for built-ins
    preprocessing: Preprocessing | None = None           # how x_* were made from the stored pixels

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_test.shape[1:])

    @property
    def is_builtin(self) -> bool:
        return not self.origin

    @cached_property
    def content_hash(self) -> str:
        """The identity of the images as fed (16 hex digits), one formula for every source: every image's
        content (file bytes, or array rows as stored) and label in both splits, the class names, the
        preprocessing and the subset taken."""
        digest = hashlib.sha256()
        for part in (self.x_test, self.x_train):
            digest.update((part.content_hash() if _is_lazy(part) else
                           hashlib.sha256(np.ascontiguousarray(part).tobytes()).hexdigest()).encode())
        for part in (self.y_test, self.y_train):
            digest.update(np.ascontiguousarray(part, dtype="<i8").tobytes())
        digest.update(json.dumps([list(self.class_names), self.preprocessing.key() if self.preprocessing else None,
                                  self.subset], sort_keys=True).encode())
        return digest.hexdigest()[:16]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "train": int(len(self.y_train)),
                "test": int(len(self.y_test)), "input_shape": list(self.input_shape),
                "class_names": list(self.class_names), **({"subset": self.subset} if self.subset else {}),
                **({"origin": self.origin, "content_hash": self.content_hash} if self.origin else {})}


def _is_lazy(x) -> bool:
    return hasattr(x, "take") and hasattr(x, "item_hashes")


def _take(x, idx):
    return x.take(idx) if _is_lazy(x) else x[idx]


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
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                # protocol 5 (out-of-band buffers, what numpy >= 1.16 uses for pickle.dumps(protocol=5))
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

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
    pp = Preprocessing(*image_shape, "unit", detected_by=f"built-in {name}: pixel / 255 at its own size")
    return Dataset(name, _to_unit_float(x_train), y_train, _to_unit_float(x_test), y_test,
                   tuple(class_names), source, preprocessing=pp)


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
        x_train, y_train = _take(x_train, idx), y_train[idx]
        info["train"] = {"count": int(train_limit), "indices_sha256": indices_hash(idx)}
    if test_limit and test_limit < len(y_test):
        idx = stratified_indices(y_test, test_limit, seed=2)
        x_test, y_test = _take(x_test, idx), y_test[idx]
        info["test"] = {"count": int(test_limit), "indices_sha256": indices_hash(idx)}
    return Dataset(ds.name, x_train, y_train, x_test, y_test, ds.class_names, ds.source, info, ds.origin,
                   ds.preprocessing)


MIN_CALIBRATION = 10


@dataclass(frozen=True)
class Calibration:
    x: np.ndarray
    indices: np.ndarray
    hash: str
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"split": "train", "count": int(len(self.indices)), "indices_sha256": self.hash, **self.extra}


def calibration_set(ds: Dataset, n: int, *, seed: int = 0) -> Calibration:
    """A stratified calibration subset drawn from the TRAINING split only (for the user's own data:
    its train split, or the --calib-data images standing in for it), so it is disjoint from the test
    set that validation uses by construction; for the user's data that is also checked by the
    content hash of every image (an image in both is refused). With fewer training images than n,
    all of them are used."""
    if n < MIN_CALIBRATION:
        raise UsageError(f"--calib-samples {n} is too few for int8 calibration",
                         hint=f"use at least {MIN_CALIBRATION}")
    if len(ds.y_train) == 0:
        raise UsageError(f"{ds.name} has no training images to calibrate int8 on",
                         hint="pass --calib-data PATH (an image folder or .npz), use a folder with train/ and "
                              "test/, or --test-split F; or leave int8 out (--quantize none|float16|dynamic)")
    if n > len(ds.y_train) and not ds.is_builtin:
        if len(ds.y_train) < MIN_CALIBRATION:
            raise UsageError(f"only {len(ds.y_train)} calibration images in {ds.name}, int8 needs at least "
                             f"{MIN_CALIBRATION}", hint="add training images or pass a larger --calib-data")
        log.info("calibrating on all %d training images (fewer than %d)", len(ds.y_train), n)
        n = len(ds.y_train)
    idx = stratified_indices(ds.y_train, n, seed=seed)
    if ds.is_builtin:
        return Calibration(ds.x_train[idx], idx, indices_hash(idx))
    sample = _take(ds.x_train, idx)
    if _is_lazy(sample) and _is_lazy(ds.x_test):
        test_hashes = set(ds.x_test.item_hashes())
        overlap = [i for i, h in zip(idx, sample.item_hashes()) if h in test_hashes]
        if overlap:
            where = ds.origin.get("calib_data") or ds.origin.get("path")
            raise UsageError(f"{len(overlap)} of the {len(idx)} calibration images (from {where}) are also test "
                             "images (identical content): calibrating on test images would flatter int8",
                             hint="remove the duplicates, or pass --calib-data with images that are not in the test set")
    digest = hashlib.sha256(np.asarray(idx, dtype="<i8").tobytes() + ds.content_hash.encode())
    split = "calib-data" if ds.origin.get("calib_data") else "train"
    return Calibration(np.asarray(sample[:], dtype=np.float32), idx, digest.hexdigest()[:16],
                       {"split": split, "dataset_content_hash": ds.content_hash,
                        **({"source": ds.origin["calib_data"]} if ds.origin.get("calib_data") else {})})


# ------------------------------------------------------------------------------ the user's own data

def is_builtin_name(spec: str) -> bool:
    return str(spec) in DATASETS


def open_own(spec, pp, *, test_split: float | None = None, seed: int = 0, calib_data=None,
             source=None) -> Dataset:
    """The user's image folder or .npz as a Dataset whose x_train/x_test are lazy array-likes
    (exporter.data.own.LazyImages) decoding and preprocessing with `pp` in batches. With calib_data
    (a folder or .npz), its images stand in for the training split, for int8 calibration only."""
    src = source or owndata.open_source(Path(spec), test_split=test_split, seed=seed)
    src.warn_mixed_sizes(pp)
    x_test = owndata.LazyImages(src.test.items, np.arange(len(src.test.labels)), pp)
    origin = dict(src.origin)
    if calib_data is not None:
        if src.train is not None:
            raise UsageError(f"--calib-data: {spec} has its own training split, which calibration uses",
                             hint="drop --calib-data")
        cal = owndata.open_source(Path(calib_data))
        cal.warn_mixed_sizes(pp)
        names = set(src.class_names)
        bad = [c for c in cal.class_names if c not in names] if cal.kind == "folder" else []
        if bad:
            raise DataError(f"--calib-data {calib_data}: class '{bad[0]}' is not one of {spec}'s classes",
                            hint="use the same class folder names")
        parts = [s for s in (cal.train, cal.test) if s is not None]
        train_items = parts[0].items if len(parts) == 1 else owndata.Concat([p.items for p in parts])
        labels = np.concatenate([p.labels for p in parts])
        if cal.kind == "folder":  # map the calibration folder's class order onto the test set's
            labels = np.asarray([src.class_names.index(cal.class_names[i]) for i in labels], np.int64)
        train = owndata.Split(train_items, labels)
        origin["calib_data"] = str(Path(calib_data).resolve())
    else:
        train = src.train
    if train is not None:
        x_train, y_train = owndata.LazyImages(train.items, np.arange(len(train.labels)), pp), train.labels
    else:
        x_train, y_train = owndata.LazyImages(src.test.items, np.zeros(0, np.int64), pp), np.zeros(0, np.int64)
    name = (Path(spec).stem if Path(spec).suffix.lower() == ".npz" else Path(spec).name) or str(spec)
    return Dataset(name, x_train, y_train, x_test, src.test.labels, src.class_names, str(origin["path"]),
                   {}, origin, pp)


def scaled_builtin(ds: Dataset, pp) -> Dataset:
    """A built-in dataset (float 0..1 arrays at its own size) fed as `pp` decides (scale, input rank)."""
    if pp is None:
        return ds
    if pp.is_identity and tuple(pp.shape) == tuple(ds.input_shape):
        return replace(ds, preprocessing=pp)
    if tuple(pp.shape) != tuple(ds.input_shape):  # built-ins are not resized: the model's own check
        return ds                                 # (Runner.check_fits) refuses the pair, naming the model file
    return Dataset(ds.name, pp.scale_unit(ds.x_train), ds.y_train, pp.scale_unit(ds.x_test), ds.y_test,
                   ds.class_names, ds.source, ds.subset, {}, pp)


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


@dataclass(frozen=True)
class Images:
    """Images to fine-tune on (QAT's --qat-data): a lazy array-like, labels when the source has them."""
    x: object                      # exporter.data.own.LazyImages
    labels: np.ndarray | None
    origin: dict

    def describe(self) -> dict:
        return {**self.origin, "count": int(len(self.x)), "labelled": self.labels is not None}


def open_images(spec, pp, *, exclude_like: Dataset | None = None) -> Images:
    """An image folder (any layout, labels not read) or an .npz (x / x_train, labels y / y_train if
    present) as lazy images preprocessed with `pp`. With `exclude_like` (the run's dataset), images
    whose content is also one of its TEST images are left out (fine-tuning on them would flatter
    validation); how many is recorded."""
    items, labels, origin = owndata.open_images(Path(spec))
    keep = np.arange(len(items))
    x = owndata.LazyImages(items, keep, pp)
    test = getattr(exclude_like, "x_test", None)
    if test is not None and _is_lazy(test):
        test_hashes = set(test.item_hashes())
        same = np.asarray([h in test_hashes for h in x.item_hashes()], bool)
        if same.any():
            origin = {**origin, "left_out_as_test_images": int(same.sum())}
            keep = keep[~same]
            if not len(keep):
                raise UsageError(f"--qat-data {spec}: every image is also a test image",
                                 hint="fine-tune on images that are not in the test set")
            x = x.take(np.flatnonzero(~same))
            labels = None if labels is None else labels[~same]
    return Images(x, labels, {**origin, "content_hash": x.content_hash()})

