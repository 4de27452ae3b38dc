"""Shared by the benchmark scripts: where results go, and the machine they ran on."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUN = ROOT / "artifacts" / "benchmarks-pipeline"   # the run every script measures
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def machine() -> dict:
    from exporter.bench import environment

    return environment("cpu")


def save(name: str, doc: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown)


def need_run() -> Path:
    if not (RUN / "manifest.json").is_file():
        sys.exit(f"{RUN} missing: run benchmarks/pipeline_default.py first")
    return RUN


def model_flops(model) -> int:
    """Multiply-adds x 2 of every Conv2D and Dense, from the layers' output shapes."""
    import keras

    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            flops += 2 * h * w * c_out * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return int(flops)


def fmnist_rgb32_npz(path: Path, *, train_limit: int | None = None, test_limit: int | None = None) -> Path:
    """Real Fashion-MNIST as an RGB user's .npz (made once at `path`): 32x32 (zero-padded), grey
    replicated to three channels, uint8 0..255, stratified subsets when limits are given."""
    import numpy as np

    from exporter import data

    if path.is_file():
        return path
    ds = data.subset(data.load_dataset("fashion_mnist"), train_limit=train_limit, test_limit=test_limit)

    def rgb32(x):
        x = np.asarray(x, dtype=np.float32)
        x = np.round(x * 255).clip(0, 255).astype(np.uint8) if x.max() <= 1.0 else x.astype(np.uint8)
        return np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)

    np.savez(path, x_train=rgb32(ds.x_train), y_train=np.asarray(ds.y_train), x_test=rgb32(ds.x_test),
             y_test=np.asarray(ds.y_test), class_names=np.asarray(ds.class_names))
    return path


USER_MODELS = ("mobilenetv2", "efficientnetb0")


def _bn_momentum(model, momentum: float) -> None:
    for layer in model._flatten_layers():
        if type(layer).__name__ == "BatchNormalization":
            layer.momentum = momentum


def user_model(name: str, folder) -> tuple:
    """(model file, extra rx.convert options) of a keras.applications model trained as a user would (recipes in
    int8_fidelity.py's docstring); trained only if the file is missing."""
    import keras
    import numpy as np

    from exporter import data

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.keras"
    keras.utils.set_random_seed(0)
    if name == "mobilenetv2":
        extra = {}
        ds = data.subset(data.load_dataset("fashion_mnist"), train_limit=12000)
        x, y, epochs = np.asarray(ds.x_train, np.float32), np.asarray(ds.y_train), 3
        inp = keras.Input((28, 28, 1), name="image")
        h = keras.layers.Resizing(32, 32)(inp)
        h = keras.applications.MobileNetV2(input_shape=(32, 32, 1), alpha=0.35, include_top=False, weights=None,
                                           pooling="avg")(h)
        model = keras.Model(inp, keras.layers.Dense(10, name="logits")(h), name="mobilenetv2_user")
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        npz = fmnist_rgb32_npz(folder / "fmnist32rgb.npz", train_limit=30000)
        extra = {"data": str(npz)}
        with np.load(npz) as f:
            x, y, epochs = f["x_train"][:20000].astype(np.float32), f["y_train"][:20000], 4
        backbone = keras.applications.EfficientNetB0(input_shape=(32, 32, 3), include_top=False, weights=None,
                                                     pooling="avg")
        norm = next(layer for layer in backbone.layers if type(layer).__name__ == "Normalization")
        norm.adapt(x[:5000] / 255.0)  # it sits after Rescaling(1/255)
        inp = keras.Input((32, 32, 3), name="image")
        model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(backbone(inp)), name="efficientnetb0_user")
        loss = keras.losses.SparseCategoricalCrossentropy()
    if not path.is_file():
        _bn_momentum(model, 0.9)
        model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
        model.fit(x, y, batch_size=64, epochs=epochs, verbose=2)
        model.save(path)
    return path, extra
