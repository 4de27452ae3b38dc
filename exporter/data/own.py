"""The user's own data: image folders and .npz files, read lazily, and the preprocessing spec.

Knows nothing about models or artifact formats. A user's test set is a `LazyImages`: an
array-like with `len()`, `.shape` and `x[i:j]` / `x[index_array]`, each returning decoded,
preprocessed float32 NHWC images for just those items, so validation and benchmarking stream
through a test set of any size in batches and never hold all of it as float32.

Where the pixels come from:
  * an image folder (one sub-folder per class, sorted names = class order), with `train/` and
    `test/` (or `val/`) inside, or one folder split by `test_split` (stratified, seeded);
    PNG/JPEG/BMP decoded by Pillow, each file's bytes hashed once when the folder is opened;
  * an .npz with x_test, y_test (and optionally x_train, y_train, class_names), NHWC, uint8
    (0..255) or float (taken as 0..1). Members stored uncompressed (np.savez) are read row by
    row from their offset in the file, so a large x_test is never loaded whole; compressed
    members (np.savez_compressed) cannot be read that way and are loaded whole.

Preprocessing (`Preprocessing`): resize to (height, width) with bilinear filtering, convert to
grayscale or RGB by channel count, then scale: unit 0..1, symmetric -1..1, raw 0..255, imagenet
(0..1 RGB minus the ImageNet mean, divided by its std).
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from exporter.data.preprocessing import Preprocessing
from exporter.errors import DataError, UsageError

log = logging.getLogger(__name__)

TEST_FOLDERS = ("test", "val", "validation")


# ------------------------------------------------------------------------------ decoding

def decode_image(data: bytes, name: str, pp: Preprocessing) -> np.ndarray:
    """Encoded bytes (PNG/JPEG/BMP/... anything Pillow reads) -> uint8 HWC at pp's size and colour."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = im.convert("L" if pp.channels == 1 else "RGB")
            if im.size != (pp.width, pp.height):
                im = im.resize((pp.width, pp.height), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError as exc:
        raise DataError(f"{name} is not an image Pillow can read", hint="remove it from the folder") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{name} is unreadable or truncated ({' '.join(str(exc).split())[:120]})",
                        hint="re-export the image or remove it") from exc
    return arr.reshape(pp.height, pp.width, pp.channels)


def _resize_array(img: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """One HWC image from an array (uint8 or float 0..1) -> pp's size and colour, same dtype family."""
    from PIL import Image

    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] != pp.channels:
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        elif img.shape[-1] == 3 and pp.channels == 1:  # ITU-R 601-2 luma, as Pillow's convert("L")
            img = (img.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32))[..., None]
            img = img.astype(np.uint8) if img.dtype != np.float32 else img
        else:
            raise DataError(f"images with {img.shape[-1]} channels cannot be fed to a {pp.channels}-channel model")
    if img.shape[:2] == (pp.height, pp.width):
        return img
    is_uint8 = img.dtype == np.uint8
    chans = []
    for c in range(img.shape[-1]):
        mode_img = Image.fromarray(img[..., c].astype(np.float32), mode="F")
        chans.append(np.asarray(mode_img.resize((pp.width, pp.height), Image.BILINEAR), np.float32))
    out = np.stack(chans, axis=-1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8) if is_uint8 else out


# ------------------------------------------------------------------------------ item sources

class ItemSource(Protocol):
    """What every source of images implements (FileItems, ArrayItems, a _Subset of one, a Concat of
    several): LazyImages reads any of them the same way."""

    def __len__(self) -> int: ...

    def item_hashes(self, idx: np.ndarray) -> list[str]: ...  # sha256 of each item's stored content

    def content_hash(self) -> str: ...                         # identity of all items, in order

    def load(self, idx: np.ndarray, pp: Preprocessing) -> np.ndarray: ...  # decoded, preprocessed batch


class FileItems:
    """Image files, hashed and header-checked once when opened; decoded on demand."""

    def __init__(self, paths: list[Path], root: Path):
        from PIL import Image, UnidentifiedImageError

        self.paths = paths
        self.hashes: list[str] = []
        self.sizes: dict[tuple[int, int], str] = {}
        for p in paths:
            try:
                raw = p.read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read {p}: {exc.strerror or exc}") from exc
            self.hashes.append(hashlib.sha256(raw).hexdigest())
            try:
                with Image.open(io.BytesIO(raw)) as im:
                    self.sizes.setdefault(im.size, str(p))
                    fmt = im.format
                    im.verify()  # PNG: every chunk's CRC, so a cut-off file is caught now, not mid-validation
                if fmt == "JPEG" and raw.rstrip(b"\0")[-2:] != b"\xff\xd9":
                    raise OSError("JPEG data ends before its end-of-image marker")
            except UnidentifiedImageError:
                raise DataError(f"{p} is not an image (Pillow cannot identify it)",
                                hint="class folders must hold only PNG/JPEG/BMP images; remove it") from None
            except (OSError, SyntaxError, ValueError) as exc:
                raise DataError(f"{p} is unreadable or truncated ({' '.join(str(exc).split())[:120]})",
                                hint="re-export the image or remove it") from exc
        self.root = root

    def __len__(self):
        return len(self.paths)

    def item_hashes(self, idx: np.ndarray) -> list[str]:
        return [self.hashes[i] for i in idx]

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for h in self.hashes:
            digest.update(bytes.fromhex(h))
        return digest.hexdigest()

    def load(self, idx: np.ndarray, pp: Preprocessing) -> np.ndarray:
        pixels = np.empty((len(idx), *pp.shape), np.uint8)
        for j, i in enumerate(idx):
            p = self.paths[int(i)]
            try:
                raw = p.read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read {p}: {exc.strerror or exc}") from exc
            pixels[j] = decode_image(raw, str(p), pp)
        return pp.from_pixels(pixels)

    def describe_sizes(self) -> list[list[int]]:
        return [[h, w] for (w, h) in sorted(self.sizes)]


class NpyMember:
    """One array stored uncompressed in an .npz, read row by row from its offset (no mmap, so
    nothing stays resident)."""

    def __init__(self, path: Path, offset: int, shape: tuple, dtype: np.dtype):
        self.path, self.offset, self.shape, self.dtype = path, offset, tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.ndim = len(self.shape)

    def __len__(self):
        return self.shape[0]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        if not len(idx):
            return out
        with open(self.path, "rb") as fh:
            contiguous = bool(np.all(np.diff(idx) == 1))
            if contiguous:
                fh.seek(self.offset + int(idx[0]) * self.row_bytes)
                buf = fh.read(len(idx) * self.row_bytes)
                if len(buf) != len(idx) * self.row_bytes:
                    raise DataError(f"{self.path} is truncated", hint="write the .npz again")
                out[...] = np.frombuffer(buf, self.dtype).reshape(out.shape)
            else:
                for j, i in enumerate(idx):
                    fh.seek(self.offset + int(i) * self.row_bytes)
                    buf = fh.read(self.row_bytes)
                    if len(buf) != self.row_bytes:
                        raise DataError(f"{self.path} is truncated", hint="write the .npz again")
                    out[j] = np.frombuffer(buf, self.dtype).reshape(self.shape[1:])
        return out


class ArrayItems:
    """Images in an array (in memory, or an NpyMember read lazily)."""

    CHUNK = 512

    def __init__(self, array, name: str):
        self.array, self.name = array, name
        self._hashes: list[str] | None = None

    def __len__(self):
        return len(self.array)

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        if isinstance(self.array, NpyMember):
            return self.array.rows(idx)
        return np.asarray(self.array[np.asarray(idx, dtype=np.int64)])

    def _chunks(self):
        for i in range(0, len(self), self.CHUNK):
            yield self._rows(np.arange(i, min(i + self.CHUNK, len(self))))

    def content_hash(self) -> str:
        digest = hashlib.sha256(f"{self.array.dtype.str}{tuple(self.array.shape)}".encode())
        for rows in self._chunks():
            digest.update(np.ascontiguousarray(rows).tobytes())
        return digest.hexdigest()

    def item_hashes(self, idx: np.ndarray) -> list[str]:
        if self._hashes is None:
            self._hashes = [hashlib.sha256(np.ascontiguousarray(r).tobytes()).hexdigest()
                            for rows in self._chunks() for r in rows]
        return [self._hashes[i] for i in idx]

    def load(self, idx: np.ndarray, pp: Preprocessing) -> np.ndarray:
        rows = self._rows(idx)
        if rows.ndim == 3:
            rows = rows[..., None]
        if tuple(rows.shape[1:]) != pp.shape:
            rows = np.stack([_resize_array(r, pp) for r in rows]) if len(rows) else \
                np.empty((0, *pp.shape), rows.dtype)
        return pp.from_pixels(rows)

    def image_shape(self) -> tuple:
        shape = tuple(self.array.shape[1:])
        return shape + (1,) if len(shape) == 2 else shape


# ------------------------------------------------------------------------------ the array-like

class LazyImages:
    """A read-only array-like over some items of a source: len(), .shape, .dtype, and indexing by
    slice, integer, or integer array, each decoding and preprocessing only what it returns.
    `take(indices)` is a lazy sub-view (stratified samples keep streaming)."""

    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(self, items, indices, pp: Preprocessing):
        self.items = items
        self.indices = np.asarray(indices, dtype=np.int64)
        self.pp = pp

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> tuple:
        return (len(self), *self.pp.model_shape)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.items.load(self.indices[[int(key)]], self.pp)[0]
        if isinstance(key, slice):
            return self.items.load(self.indices[key], self.pp)
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        return self.items.load(self.indices[key.astype(np.int64)], self.pp)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else out

    def take(self, indices) -> "LazyImages":
        return LazyImages(self.items, self.indices[np.asarray(indices, dtype=np.int64)], self.pp)

    def with_preprocessing(self, pp: Preprocessing) -> "LazyImages":
        return LazyImages(self.items, self.indices, pp)

    def item_hashes(self) -> list[str]:
        return self.items.item_hashes(self.indices)

    def content_hash(self) -> str:
        """Identity of exactly these items (by content, in this order)."""
        if len(self.indices) == len(self.items) and np.array_equal(self.indices, np.arange(len(self.items))):
            return self.items.content_hash()
        digest = hashlib.sha256()
        for h in self.item_hashes():
            digest.update(bytes.fromhex(h))
        return digest.hexdigest()


# ------------------------------------------------------------------------------ opening sources

@dataclass
class Split:
    items: object      # FileItems | ArrayItems
    labels: np.ndarray


@dataclass
class Source:
    """An opened dataset before preprocessing: splits of items + labels, class names, where from."""
    kind: str                       # folder | npz
    path: Path
    class_names: tuple[str, ...]
    test: Split
    train: Split | None
    origin: dict
    native_shape: tuple | None      # (H, W, C) of the first image, for training without a model

    def warn_mixed_sizes(self, pp: Preprocessing) -> None:
        sizes = {}
        for split in (self.test, self.train):
            if split is not None:
                sizes.update(getattr(split.items, "sizes", {}))
        key = (str(Path(self.path).resolve()), pp.key())
        if len(sizes) > 1 and key not in _WARNED:  # once per process, however often the data is opened
            _WARNED.add(key)
            shown = ", ".join(f"{w}x{h}" for (w, h) in sorted(sizes)[:3])
            log.warning("%s: images come in %d sizes (%s%s); every image is resized to %dx%d", self.path,
                        len(sizes), shown, ", ..." if len(sizes) > 3 else "", pp.width, pp.height)


_WARNED: set = set()


def _is_hidden(p) -> bool:
    return (p if isinstance(p, str) else p.name).startswith((".", "_"))


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and not _is_hidden(d)), key=lambda d: d.name)


def _scan_classes(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[Path], np.ndarray]:
    dirs = _class_dirs(folder)
    if not dirs:
        raise DataError(f"{folder} has no class sub-folders",
                        hint="put each class's images in its own sub-folder (e.g. cats/, dogs/)")
    names = [d.name for d in dirs]
    if classes is not None:
        missing = [n for n in names if n not in classes]
        if missing:
            raise DataError(f"{folder}: class '{missing[0]}' has no folder in the training split "
                            f"(training classes: {', '.join(classes)})",
                            hint="add its training images, or remove it from the test split")
    else:
        classes = names
    paths, labels = [], []
    for d in dirs:
        files = sorted(f for f in d.rglob("*") if f.is_file() and not any(_is_hidden(q) for q in f.relative_to(d).parts))
        if not files:
            raise DataError(f"class folder {d} is empty", hint="add images to it or remove the folder")
        paths.extend(files)
        labels.extend([classes.index(d.name)] * len(files))
    return classes, paths, np.asarray(labels, dtype=np.int64)


def split_indices(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split: round(fraction * n_c) of each class (at least 1 of a class with
    two or more) go to test. Returns (train, test) index arrays, sorted."""
    if not 0 < fraction < 1:
        raise UsageError(f"--test-split must be between 0 and 1 (exclusive), got {fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(idx)))
        k = min(max(k, 1 if len(idx) >= 2 else 0), len(idx) - 1 if len(idx) >= 2 else len(idx))
        test.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(test, np.int64))


class _Subset:
    """Some items of a FileItems/ArrayItems, re-indexed from 0."""

    def __init__(self, items, idx):
        self.items, self.idx = items, np.asarray(idx, np.int64)
        self.sizes = getattr(items, "sizes", {})

    def __len__(self):
        return len(self.idx)

    def item_hashes(self, idx):
        return self.items.item_hashes(self.idx[np.asarray(idx, np.int64)])

    def content_hash(self):
        digest = hashlib.sha256()
        for h in self.items.item_hashes(self.idx):
            digest.update(bytes.fromhex(h))
        return digest.hexdigest()

    def load(self, idx, pp):
        return self.items.load(self.idx[np.asarray(idx, np.int64)], pp)


class Concat:
    """Several item sources as one (a calibration folder's train/ and test/ together)."""

    def __init__(self, parts):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self):
        return int(self.offsets[-1])

    def _split(self, idx):
        idx = np.asarray(idx, np.int64)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        return idx, which

    def item_hashes(self, idx):
        idx, which = self._split(idx)
        return [self.parts[w].item_hashes([i - self.offsets[w]])[0] for i, w in zip(idx, which)]

    def content_hash(self):
        return hashlib.sha256("".join(p.content_hash() for p in self.parts).encode()).hexdigest()

    def load(self, idx, pp):
        idx, which = self._split(idx)
        return np.concatenate([self.parts[w].load([i - self.offsets[w]], pp) for i, w in zip(idx, which)]) \
            if len(idx) else np.empty((0, *pp.model_shape), np.float32)


def open_folder(root: Path, *, test_split: float | None = None, seed: int = 0) -> Source:
    root = Path(root)
    sub = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    test_dir = next((sub[n] for n in TEST_FOLDERS if n in sub), None)
    origin = {"kind": "folder", "path": str(root.resolve())}
    if "train" in sub or test_dir is not None:
        if test_split is not None:
            raise UsageError(f"--test-split applies to a folder of class folders, but {root} already has "
                             f"{'train/ and ' if 'train' in sub else ''}{test_dir.name if test_dir else 'test'}/",
                             hint="drop --test-split")
        if test_dir is None:
            raise DataError(f"{root} has train/ but no test/ (or val/) folder",
                            hint="add test images in test/<class>/, or pass the class folders with --test-split")
        train = None
        classes = None
        if "train" in sub:
            classes, tr_paths, tr_labels = _scan_classes(sub["train"])
            train = Split(FileItems(tr_paths, sub["train"]), tr_labels)
        classes, te_paths, te_labels = _scan_classes(test_dir, classes)
        test = Split(FileItems(te_paths, test_dir), te_labels)
        origin["layout"] = f"{'train/ + ' if train else ''}{test_dir.name}/"
    else:
        classes, paths, labels = _scan_classes(root)
        items = FileItems(paths, root)
        if test_split is None:
            test, train = Split(items, labels), None
            origin["layout"] = "class folders (all test)"
        else:
            tr, te = split_indices(labels, test_split, seed)
            test, train = Split(_Subset(items, te), labels[te]), Split(_Subset(items, tr), labels[tr])
            origin.update(layout="class folders split", test_split=test_split, seed=seed)
    first = (train or test).items
    native = None
    sizes = getattr(first, "sizes", {})
    if sizes:
        from PIL import Image

        (w, h), path = next(iter(sizes.items()))
        with Image.open(path) as im:
            native = (h, w, 1 if im.mode in ("L", "1", "I", "F", "I;16") else 3)
    return Source("folder", root, tuple(classes), test, train, origin, native)


def _npz_members(path: Path) -> dict:
    """name -> NpyMember for uncompressed members (read lazily), else None (load whole)."""
    out = {}
    with open(path, "rb") as fh, zipfile.ZipFile(fh) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-4]
            if info.compress_type != zipfile.ZIP_STORED:
                out[name] = None
                continue
            fh.seek(info.header_offset)
            head = fh.read(30)
            if head[:4] != b"PK\x03\x04":
                out[name] = None
                continue
            n, m = struct.unpack("<HH", head[26:30])
            fh.seek(info.header_offset + 30 + n + m)
            version = np.lib.format.read_magic(fh)
            reader = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if reader is None:
                out[name] = None
                continue
            shape, fortran, dtype = reader(fh)
            if fortran or dtype.hasobject or not shape:
                out[name] = None
                continue
            out[name] = NpyMember(path, fh.tell(), shape, dtype)
    return out


NPZ_HINT = "an .npz needs x_test (N,H,W,C images, uint8 or float 0..1), y_test (N integer labels), " \
           "optionally x_train, y_train and class_names"


def open_npz(path: Path) -> Source:
    path = Path(path)
    try:
        members = _npz_members(path)
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz ({' '.join(str(exc).split())[:150]})",
                        hint="write it with numpy.savez") from exc
    keys = set(npz.files)
    missing = [k for k in ("x_test", "y_test") if k not in keys]
    if ("x_train" in keys) != ("y_train" in keys):
        missing.append("y_train" if "x_train" in keys else "x_train")
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)} (has: {', '.join(sorted(keys)) or 'nothing'})",
                        hint=NPZ_HINT)

    def images(key):
        m = members.get(key)
        try:
            arr = m if m is not None else npz[key]
        except ValueError as exc:
            raise DataError(f"{path}: '{key}' cannot be read without pickle ({exc})", hint=NPZ_HINT) from exc
        if arr.dtype.kind not in "uif" or len(arr.shape) not in (3, 4) or (len(arr.shape) == 4 and arr.shape[-1] not in (1, 3)):
            raise DataError(f"{path}: '{key}' must be N,H,W,C images (C 1 or 3), uint8 or float; found "
                            f"{arr.dtype} {tuple(arr.shape)}", hint=NPZ_HINT)
        if arr.dtype.kind in "iu" and arr.dtype != np.uint8:
            raise DataError(f"{path}: integer images in '{key}' must be uint8 (0..255), found {arr.dtype}",
                            hint=NPZ_HINT)
        return arr

    def labels(key, n):
        y = np.asarray(npz[key])
        if y.dtype.kind not in "iu" or y.reshape(-1).shape[0] != n:
            raise DataError(f"{path}: '{key}' must be {n} integer labels, found {y.dtype} {y.shape}", hint=NPZ_HINT)
        return y.reshape(-1).astype(np.int64)

    x_test = images("x_test")
    y_test = labels("y_test", len(x_test))
    x_train = images("x_train") if "x_train" in keys else None
    y_train = labels("y_train", len(x_train)) if x_train is not None else None
    if len(y_test) == 0:
        raise DataError(f"{path}: x_test is empty", hint=NPZ_HINT)
    all_labels = np.concatenate([y_test] + ([y_train] if y_train is not None else []))
    if "class_names" in keys:
        class_names = tuple(str(c) for c in np.asarray(npz["class_names"]).reshape(-1))
    else:
        class_names = tuple(str(i) for i in range(int(all_labels.max()) + 1))
    if all_labels.min() < 0 or all_labels.max() >= len(class_names):
        raise DataError(f"{path}: labels out of range 0..{len(class_names) - 1} "
                        f"(found {int(all_labels.min())}..{int(all_labels.max())})",
                        hint="labels must index class_names" if "class_names" in keys else NPZ_HINT)
    if x_train is not None and tuple(x_train.shape[1:]) != tuple(x_test.shape[1:]):
        log.info("%s: x_train and x_test images differ in shape; both are resized to the model's", path)
    test_items = ArrayItems(x_test, f"{path}:x_test")
    train = Split(ArrayItems(x_train, f"{path}:x_train"), y_train) if x_train is not None else None
    lazy = {k: isinstance(members.get(k), NpyMember) for k in ("x_test", "x_train") if k in keys}
    origin = {"kind": "npz", "path": str(path.resolve()), "read_lazily": lazy}
    return Source("npz", path, class_names, Split(test_items, y_test), train, origin, test_items.image_shape())


def open_source(path: Path, *, test_split: float | None = None, seed: int = 0) -> Source:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--data {path} does not exist",
                         hint="pass a built-in name, an image folder or an .npz file")
    if path.is_dir():
        return open_folder(path, test_split=test_split, seed=seed)
    if path.suffix.lower() != ".npz":
        raise UsageError(f"--data {path} is a file but not an .npz",
                         hint="pass an image folder (one sub-folder per class) or an .npz")
    if test_split is not None:
        src = open_npz(path)
        if src.train is not None:
            raise UsageError(f"--test-split: {path} already has x_train and x_test", hint="drop --test-split")
        tr, te = split_indices(src.test.labels, test_split, seed)
        items = src.test.items
        src.test, src.train = Split(_Subset(items, te), src.test.labels[te]), Split(_Subset(items, tr), src.test.labels[tr])
        src.origin.update(test_split=test_split, seed=seed)
        return src
    return open_npz(path)


# ------------------------------------------------------------------------------ images without labels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGES_NPZ_HINT = "an images-only .npz needs x (or x_train): N,H,W,C images, uint8 or float 0..1; y (or y_train) optional"


def open_images(path: Path) -> tuple[object, np.ndarray | None, dict]:
    """Images that may have no labels (QAT's --qat-data): (items, labels or None, origin).

    A folder: every image file under it, at any depth, in sorted path order (class sub-folders are
    allowed and their names ignored: no labels). An .npz: `x` (or `x_train`), with `y` (or
    `y_train`) as labels when present."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--qat-data {path} does not exist", hint="pass an image folder or an .npz file")
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                       and not any(_is_hidden(q) for q in f.relative_to(path).parts))
        if not files:
            raise DataError(f"--qat-data {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return FileItems(files, path), None, {"kind": "folder", "path": str(path.resolve()), "images": len(files)}
    if path.suffix.lower() != ".npz":
        raise UsageError(f"--qat-data {path} is a file but not an .npz", hint="pass an image folder or an .npz")
    try:
        members = _npz_members(path)
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz ({' '.join(str(exc).split())[:150]})",
                        hint="write it with numpy.savez") from exc
    key = next((k for k in ("x", "x_train") if k in npz.files), None)
    if key is None:
        raise DataError(f"{path} has no x or x_train (has: {', '.join(sorted(npz.files)) or 'nothing'})",
                        hint=IMAGES_NPZ_HINT)
    arr = members.get(key) if members.get(key) is not None else npz[key]
    if arr.dtype.kind not in "uif" or len(arr.shape) not in (3, 4) or (len(arr.shape) == 4 and arr.shape[-1] not in (1, 3)) \
            or (arr.dtype.kind in "iu" and arr.dtype != np.uint8) or not arr.shape[0]:
        raise DataError(f"{path}: '{key}' must be N,H,W,C images (C 1 or 3), uint8 or float; found "
                        f"{arr.dtype} {tuple(arr.shape)}", hint=IMAGES_NPZ_HINT)
    ykey = {"x": "y", "x_train": "y_train"}[key]
    labels = None
    if ykey in npz.files:
        y = np.asarray(npz[ykey])
        if y.dtype.kind not in "iu" or y.reshape(-1).shape[0] != arr.shape[0]:
            raise DataError(f"{path}: '{ykey}' must be {arr.shape[0]} integer labels, found {y.dtype} {y.shape}",
                            hint=IMAGES_NPZ_HINT)
        labels = y.reshape(-1).astype(np.int64)
    return ArrayItems(arr, f"{path}:{key}"), labels, {"kind": "npz", "path": str(path.resolve()), "member": key,
                                                     "images": int(arr.shape[0])}

