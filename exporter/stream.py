"""Streaming training input: batches decoded, preprocessed and augmented in worker threads while the
model trains, never the whole split in memory.

Engine: `keras.utils.PyDataset`, read by fit in order, with a pool of decoding threads that
prepare the next batches ahead (see Batches for why not Keras' own worker enqueuer). Chosen over tf.data because it is part of
Keras 3 itself and so runs on every backend (the JAX box that trains on GPUs has no TensorFlow,
and training must not need it), and over grain because it adds no dependency. The images come
from the dataset's own array-likes (`exporter.data.own.LazyImages` for image folders and .npz,
plain arrays for the built-ins): a batch is `x[indices]`, which decodes only those images.

Determinism (what makes resume and the multi-device comparison exact): the order of epoch `e` is
`permutation(rng(seed, e))` of the training indices, and the augmentation of batch `b` in epoch `e`
uses `rng(seed, e, b)`. Both are functions of the numbers, not of any state carried between
epochs, so a resumed run sees exactly the batches an uninterrupted one would, whatever the number
of workers and whichever worker decodes a batch first.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from exporter.errors import UsageError, require

ENGINE = "keras.utils.PyDataset"
AUGMENTATIONS = ("flip", "crop")


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order (positions 0..n-1) in which epoch `epoch` visits the training images."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def parse_augment(text: str | None) -> tuple[str, ...]:
    if not text or text.strip().lower() in ("", "none", "off"):
        return ()
    ops = tuple(dict.fromkeys(v.strip().lower() for v in text.split(",") if v.strip()))
    bad = [o for o in ops if o not in AUGMENTATIONS]
    if bad:
        raise UsageError(f"--augment: unknown augmentation '{bad[0]}'",
                         hint=f"choose from: {', '.join(AUGMENTATIONS)} (comma-separated)")
    return ops


def crop_padding(height: int) -> int:
    """Pixels of padding for the random crop: 1/8 of the side (4 for 32x32, 12 for 96x96)."""
    return max(1, height // 8)


def augment_batch(x: np.ndarray, ops, rng: np.random.Generator) -> np.ndarray:
    """Standard augmentation of a batch (N, H, W, C), in place of nothing: returns a new array.
    flip: each image mirrored left-right with probability 1/2. crop: each image reflect-padded by
    crop_padding(H) on every side and cropped back to H x W at a random offset."""
    out = np.array(x, dtype=np.float32, copy=True)
    n, h, w = out.shape[:3]
    if "flip" in ops:
        mask = rng.random(n) < 0.5
        out[mask] = out[mask, :, ::-1]
    if "crop" in ops:
        p = crop_padding(h)
        padded = np.pad(out, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
        offsets = rng.integers(0, 2 * p + 1, size=(n, 2))
        for i, (dy, dx) in enumerate(offsets):
            out[i] = padded[i, dy:dy + h, dx:dx + w]
    return out


def _py_dataset_base():
    return require("keras", extra="full", purpose="Training").utils.PyDataset


class Batches(_py_dataset_base()):
    """Batches of (x[positions], y[positions]) over `indices` (positions into x/y).

    shuffle: the order of epoch `self.epoch` is epoch_order(...); set `epoch` before each epoch
    (EpochSetter does it from fit's callbacks). drop_remainder: only full batches (needed when the
    batch is split across devices). max_batches: a cap on the batches of an epoch. shard=(i, k):
    this process's rows i::k of each global batch (several hosts each feed their part).
    """

    def __init__(self, x, y, indices, batch_size: int, *, seed: int = 0, shuffle: bool = False,
                 augment=(), drop_remainder: bool = False, max_batches: int | None = None,
                 shard: tuple[int, int] = (0, 1), epoch: int = 0, workers: int = 1, prefetch: int = 8):
        # Keras' own thread enqueuer (workers > 1) yields batches in an order that depends on timing
        # (after fit's first peek at a batch, an epoch can start at batch 1): seen here as a resumed
        # run differing from an uninterrupted one. So Keras reads this dataset in order on one
        # thread, and the parallel decoding is ours: `workers` threads prepare the next `prefetch`
        # batches of the current epoch while the model trains on this one.
        super().__init__(workers=1, use_multiprocessing=False)
        self.x, self.y = x, np.asarray(y)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size, self.seed, self.shuffle = int(batch_size), int(seed), bool(shuffle)
        self.augment = tuple(augment)
        self.drop_remainder, self.max_batches, self.shard = drop_remainder, max_batches, tuple(shard)
        self.epoch = int(epoch)
        self.threads, self.prefetch = max(1, int(workers)), max(1, int(prefetch))
        self._orders: dict[int, np.ndarray] = {}
        self._pending: dict = {}
        self._pool = None
        self._lock = threading.Lock()

    @property
    def num_batches(self) -> int:
        n = len(self.indices)
        full = n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)
        return min(full, self.max_batches) if self.max_batches else full

    def __len__(self) -> int:
        return self.num_batches

    def order(self, epoch: int | None = None) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        epoch = self.epoch if epoch is None else int(epoch)
        found = self._orders.get(epoch)
        if found is None:
            found = self.indices[epoch_order(len(self.indices), self.seed, epoch)]
            self._orders = {epoch: found}  # one assignment: safe with the prefetch threads
        return found

    def batch_positions(self, i: int, epoch: int | None = None) -> np.ndarray:
        pos = self.order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        k, n = self.shard
        return pos[k::n] if n > 1 else pos

    def load(self, epoch: int, i: int):
        """Batch `i` of epoch `epoch`: decoded, preprocessed, augmented."""
        pos = self.batch_positions(i, epoch)
        x = np.asarray(self.x[pos], dtype=np.float32)
        if self.augment:
            x = augment_batch(x, self.augment, np.random.default_rng([self.seed, epoch, int(i), 7]))
        return x, self.y[pos]

    def __getitem__(self, i):
        if not 0 <= i < self.num_batches:
            raise IndexError(i)
        e = self.epoch
        if self.threads == 1:
            return self.load(e, i)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="resexport-stream")
            mine = self._pending.pop((e, i), None)
            for key in [k for k in self._pending if k[0] != e or k[1] < i]:
                self._pending.pop(key).cancel()
            for j in range(i + 1, min(i + 1 + self.prefetch, self.num_batches)):
                if (e, j) not in self._pending:
                    self._pending[(e, j)] = self._pool.submit(self.load, e, j)
        return mine.result() if mine is not None else self.load(e, i)

    def close(self) -> None:
        """Stop the prefetch threads (the dataset still works afterwards, on demand)."""
        with self._lock:
            for fut in self._pending.values():
                fut.cancel()
            self._pending.clear()
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> dict:
        return {"engine": ENGINE, "threads": self.threads, "prefetch_batches": self.prefetch,
                "shuffle": self.shuffle,
                "order": "permutation of numpy default_rng([seed, epoch])" if self.shuffle else "stored order",
                "drop_remainder": self.drop_remainder, "batches_per_epoch": self.num_batches,
                **({"max_batches": self.max_batches} if self.max_batches else {})}


def epoch_setter(stream: Batches):
    """A fit callback that tells the stream which epoch begins (fit's own epoch number, so a run
    resumed at initial_epoch=E gets epoch E's order)."""
    import keras

    class EpochSetter(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            stream.epoch = int(epoch)

    return EpochSetter()
