"""Data: one `Dataset` type with two kinds of source, and one preprocessing type.

- `datasets`: the `Dataset`, the built-in datasets (Fashion-MNIST, MNIST: IDX; CIFAR-10: python
  batches; local-first, then the keras.datasets download), subsets, calibration and held-out splits,
  the content hash;
- `own`: the user's image folders and `.npz` files, read lazily in batches (`LazyImages`);
- `preprocessing`: `Preprocessing` (size, colour, scale, the model's input rank) and `decide`, the one
  place that derives it from a model;
- `select`: which data a command works on (`--data NAME|FOLDER|FILE.npz`), opened once.

Knows nothing about artifact formats.
"""

from exporter.data.datasets import (CIFAR10_CLASSES, CIFAR_TEST_BATCH, CIFAR_TRAIN_BATCHES, DATASETS,
                                    FASHION_CLASSES, IDX_FILES, MIN_CALIBRATION, MNIST_CLASSES, Calibration,
                                    Dataset, Images, calibration_set, candidate_dirs, holdout_set, indices_hash,
                                    open_images,
                                    is_builtin_name, load_dataset, open_own, parse_cifar_batch, parse_idx,
                                    read_idx_gz, scaled_builtin, stratified_indices, subset)
from exporter.data.preprocessing import SCALE_HELP, SCALES, Preprocessing, decide

__all__ = ["CIFAR10_CLASSES", "CIFAR_TEST_BATCH", "CIFAR_TRAIN_BATCHES", "DATASETS", "FASHION_CLASSES",
           "IDX_FILES", "Images", "MIN_CALIBRATION", "MNIST_CLASSES", "Calibration", "Dataset", "Preprocessing", "SCALES",
           "SCALE_HELP", "calibration_set", "candidate_dirs", "decide", "holdout_set", "indices_hash",
           "is_builtin_name", "load_dataset", "open_images", "open_own", "parse_cifar_batch", "parse_idx", "read_idx_gz",
           "scaled_builtin", "stratified_indices", "subset"]
