"""Writers of small, learnable image datasets (coloured shapes) and a tiny model of one's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("blue_square", "green_disc", "red_bar")
COLOURS = {"blue_square": (40, 60, 220), "green_disc": (40, 200, 60), "red_bar": (220, 40, 40)}


def shape_image(cls: str, rng, size=(64, 64)) -> np.ndarray:
    """uint8 HWC: a noisy grey background with one coloured shape at a random place."""
    h, w = size
    img = rng.integers(90, 150, (h, w, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
    r = max(4, min(h, w) // 5)
    if cls == "blue_square":
        mask = (abs(yy - cy) < r) & (abs(xx - cx) < r)
    elif cls == "green_disc":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    else:
        mask = (abs(yy - cy) < r // 3) & (abs(xx - cx) < 2 * r)
    img[mask] = np.asarray(COLOURS[cls], np.float32) + rng.normal(0, 10, (int(mask.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_folder(root: Path, per_class: int = 30, split=("train", "test"), test_fraction=0.34, seed=0,
                 size=(64, 64)) -> Path:
    """root/train/<class>/*.png|jpg and root/test/<class>/... (or flat class folders if split is None).
    Every third image is a JPEG, the rest PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls in CLASSES:
        n_test = int(round(per_class * test_fraction))
        for i in range(per_class):
            sub = (split[1] if i < n_test else split[0]) if split else ""
            folder = root / sub / cls if sub else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(shape_image(cls, rng, size))
            if i % 3 == 0:
                img.save(folder / f"{cls}_{i:03d}.jpg", quality=95)
            else:
                img.save(folder / f"{cls}_{i:03d}.png")
    return root


def arrays(per_class=30, seed=0, size=(64, 64)):
    rng = np.random.default_rng(seed)
    x, y = [], []
    for i in range(per_class):
        for c, cls in enumerate(CLASSES):
            x.append(shape_image(cls, rng, size))
            y.append(c)
    return np.stack(x), np.asarray(y, np.int64)


def write_npz(path: Path, per_class=30, seed=0, size=(64, 64)) -> Path:
    x, y = arrays(per_class, seed, size)
    n_test = len(y) // 3
    np.savez(path, x_train=x[n_test:], y_train=y[n_test:], x_test=x[:n_test], y_test=y[:n_test],
             class_names=np.asarray(CLASSES))
    return path


def train_tiny_model(path: Path, *, size=(64, 64), scale="unit", epochs=25, seed=0, logits=False,
                     rescaling=False) -> Path:
    """A small CNN of one's own (not from the registry), trained for a moment on fresh shape images."""
    import keras

    keras.utils.set_random_seed(seed)
    x, y = arrays(40, seed=seed + 100, size=size)
    u = x.astype(np.float32) / 255.0
    xin = {"unit": u, "symmetric": u * 2 - 1, "raw": x.astype(np.float32)}[scale]
    inputs = keras.Input((*size, 3), name="image")
    h = keras.layers.Rescaling(1 / 255.0)(inputs) if rescaling else inputs
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(h)
    h = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(len(CLASSES), activation=None if logits else "softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=logits), metrics=["accuracy"])
    model.fit(xin, y, epochs=epochs, batch_size=20, verbose=0)
    model.save(path)
    return path
