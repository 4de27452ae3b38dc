"""Classifiers the way users bring them, for issue 10's tests and benchmarks/user_models.py.

Each one is the kind of model a user arrives with (not one of the seed architectures): a
`Resizing` layer inside, the Keras image-classification tutorial's augmentation + `Rescaling` front
with a logits head, a `keras.applications` backbone nested in a functional model, a subclassed
model, and a legacy `.h5` written by tf_keras. All take 28x28x1 Fashion-MNIST images in 0..1.

Every model is trained briefly with BatchNormalization momentum 0.5, so its moving statistics are
far from their initial values and from any one batch's: a model traced in training mode then gives
visibly different outputs from its inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT_SHAPE = (28, 28, 1)
CLASSES = 10
TRAIN_IMAGES = 4000   # of the real training split, stratified
EPOCHS = 2


def _keras():
    import keras

    return keras


def resizing_softmax():
    """Resizing inside (which made Keras' model.export trace in training mode), softmax head."""
    keras = _keras()
    L = keras.layers
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = L.Resizing(32, 32)(inputs)
    x = L.Conv2D(16, 3, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(32, 3, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(CLASSES, activation="softmax")(x), name="resizing_softmax")


def tutorial_augment_logits():
    """The Keras image-classification tutorial's pattern: RandomFlip + RandomRotation + Rescaling
    at the front, a Dense head without activation (logits, trained with from_logits=True)."""
    keras = _keras()
    L = keras.layers
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = L.RandomFlip("horizontal", seed=1)(inputs)
    x = L.RandomRotation(0.1, seed=2)(x)
    x = L.Rescaling(2.0, offset=-1.0)(x)
    x = L.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = L.BatchNormalization()(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = L.BatchNormalization()(x)
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(CLASSES)(x), name="tutorial_augment_logits")


def applications_backbone():
    """A keras.applications backbone (MobileNetV2, weights=None) nested in a functional model,
    behind Resizing and a 1x1 conv that makes three channels."""
    keras = _keras()
    L = keras.layers
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False,
                                              weights=None, pooling="avg")
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = L.Resizing(32, 32)(inputs)
    x = L.Conv2D(3, 1)(x)
    x = backbone(x)
    return keras.Model(inputs, L.Dense(CLASSES, activation="softmax")(x), name="applications_backbone")


def subclassed():
    """A subclassed keras.Model (its final softmax is inside call(), so only the values tell)."""
    return _Subclassed()


def _subclassed_class():
    keras = _keras()

    @keras.saving.register_keras_serializable(package="resexport_tests")
    class SubclassedNet(keras.Model):
        def __init__(self, classes=CLASSES, **kwargs):
            super().__init__(**kwargs)
            L = keras.layers
            self.classes = classes
            self.conv1 = L.Conv2D(16, 3, padding="same")
            self.bn1 = L.BatchNormalization()
            self.pool = L.MaxPooling2D()
            self.conv2 = L.Conv2D(32, 3, padding="same")
            self.bn2 = L.BatchNormalization()
            self.flatten = L.Flatten()
            self.head = L.Dense(classes)

        def call(self, x, training=None):
            x = keras.ops.relu(self.bn1(self.conv1(x), training=training))
            x = self.pool(x)
            x = self.pool(keras.ops.relu(self.bn2(self.conv2(x), training=training)))
            return keras.ops.softmax(self.head(self.flatten(x)))

        def get_config(self):
            return {**super().get_config(), "classes": self.classes}

    return SubclassedNet


_SUBCLASS = None


def _Subclassed():
    global _SUBCLASS
    if _SUBCLASS is None:
        _SUBCLASS = _subclassed_class()
    model = _SUBCLASS(name="subclassed")
    model.build((None, *INPUT_SHAPE))
    return model


BUILDERS = {
    "resizing_softmax": resizing_softmax,
    "tutorial_augment_logits": tutorial_augment_logits,
    "applications_backbone": applications_backbone,
    "subclassed": subclassed,
}
ALL = (*BUILDERS, "legacy_h5")


def _set_bn_momentum(model, momentum: float) -> None:
    keras = _keras()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "user_models"


def committed(name: str) -> Path:
    """The committed trained file of `name` (tests/fixtures/make_fixtures.py): the same weights on
    every machine. A subclassed model's class is registered first, as a user's code would."""
    if name == "subclassed":
        _Subclassed()
    return FIXTURES / ("legacy.h5" if name == "legacy_h5" else f"{name}.keras")


def make(name: str, folder: Path, x_train: np.ndarray, y_train: np.ndarray, *, epochs: int = EPOCHS,
         seed: int = 0, include_optimizer: bool = True) -> Path:
    """Build and briefly train `name`, save it as its users would (.keras, or .h5 by tf_keras), return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "legacy_h5":
        return _make_legacy_h5(folder / "legacy.h5", x_train, y_train, epochs=epochs, seed=seed,
                               include_optimizer=include_optimizer)
    keras = _keras()
    keras.utils.set_random_seed(seed)
    model = BUILDERS[name]()
    _set_bn_momentum(model, 0.5)
    logits = name == "tutorial_augment_logits"
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=logits), metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0, shuffle=True)
    path = folder / f"{name}.keras"
    if not include_optimizer:  # .keras has no include_optimizer: save an uncompiled twin with the same weights
        twin = BUILDERS[name]()
        twin(np.zeros((1, *INPUT_SHAPE), np.float32))  # a subclassed model makes its weights on the first call
        _set_bn_momentum(twin, 0.5)
        twin.set_weights(model.get_weights())
        model = twin
    model.save(path)
    return path


def _make_legacy_h5(path: Path, x_train, y_train, *, epochs: int, seed: int, include_optimizer: bool = True) -> Path:
    """A Sequential model written by tf_keras (Keras 2) as legacy HDF5."""
    import tf_keras

    tf_keras.utils.set_random_seed(seed)
    L = tf_keras.layers
    model = tf_keras.Sequential([
        L.InputLayer(INPUT_SHAPE),
        L.Conv2D(16, 3, padding="same"),
        L.BatchNormalization(momentum=0.5),
        L.Activation("relu"),
        L.MaxPooling2D(),
        L.Conv2D(32, 3, padding="same"),
        L.BatchNormalization(momentum=0.5),
        L.Activation("relu"),
        L.MaxPooling2D(),
        L.Flatten(),
        L.Dense(CLASSES, activation="softmax"),
    ])
    model.compile(optimizer=tf_keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)
    model.save(str(path), save_format="h5", include_optimizer=include_optimizer)
    return path


def inference(path: Path, x: np.ndarray, *, batch: int) -> np.ndarray:
    """What the model computes at inference: model(x, training=False), `batch` images per call."""
    keras = _keras()
    model = keras.saving.load_model(path, compile=False)
    return np.concatenate([keras.ops.convert_to_numpy(model(x[i: i + batch], training=False))
                           for i in range(0, len(x), batch)])
