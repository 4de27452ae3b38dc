"""Model registry: name -> builder(input_shape, num_classes) -> keras.Model.

Pure Keras 3 (no TensorFlow import), so every model also builds and trains with KERAS_BACKEND=jax
or torch. Output convention, for every model: **class probabilities** (the last layer is a softmax,
as in seed 003); training uses sparse categorical cross-entropy on probabilities, validation
compares probabilities, agreement compares argmax.

Depth counting follows seed 003: the depth in a name is the number of 2x2 convolutions (the stem
plus every stage); the 1x1 projection shortcuts and the final Dense are not counted. The seed gives
12 = 1 + (2, 3, 3, 3) and 20 = 1 + (4, 5, 5, 5); we extend the pattern with 32 = 1 + (7, 8, 8, 8)
and 50 = 1 + (12, 12, 12, 13) (49 does not split as x, x+1, x+1, x+1, so the extra conv goes to
the last stage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from exporter.errors import UsageError, require

# through require: a missing backend (KERAS_BACKEND=jax without jax) is a one-line refusal, not a traceback
keras = require("keras", extra="full", purpose="Building a model")
layers = keras.layers

OUTPUT_CONVENTION = "probabilities"

SEED003_STAGES = {12: (2, 3, 3, 3), 20: (4, 5, 5, 5), 32: (7, 8, 8, 8), 50: (12, 12, 12, 13)}
SEED003_FILTERS = (32, 64, 128, 256)


# ------------------------------------------------------------------ seed 003 (Fashion-MNIST)

def _conv_bn(x, filters: int, name: str):
    x = layers.Conv2D(filters, (2, 2), activation="relu", padding="same", name=f"{name}_conv")(x)
    return layers.BatchNormalization(name=f"{name}_bn")(x)


def seed003_cnn(input_shape, num_classes: int, *, depth: int, residual: bool) -> keras.Model:
    """Seed 003's plain or residual CNN: stem conv, four stages of 2x2 conv+BN, MaxPool per stage,
    Dropout 0.5, Flatten, Dense softmax. Residual: stage 1 adds the stem output, stages 2-4 add a
    1x1 relu projection of the stage input, before each MaxPool."""
    stages = SEED003_STAGES[depth]
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn(inputs, SEED003_FILTERS[0], "stem")
    for s, (filters, n) in enumerate(zip(SEED003_FILTERS, stages), start=1):
        if residual:
            shortcut = x if s == 1 else layers.Conv2D(
                filters, (1, 1), activation="relu", padding="same", name=f"stage{s}_proj")(x)
        for i in range(n):
            x = _conv_bn(x, filters, f"stage{s}_{i + 1}")
        if residual:
            x = layers.add([x, shortcut], name=f"stage{s}_add")
        x = layers.MaxPooling2D((2, 2), name=f"stage{s}_pool")(x)
    x = layers.Dropout(0.5, name="dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    kind = "residual" if residual else "plain"
    return keras.Model(inputs, outputs, name=f"{kind}{depth}")


# ------------------------------------------------------------------ seed 000 (CIFAR-10 ResNet)

def basic_block(x, filters: int, strides: int, name: str, bn_momentum: float = 0.99):
    """Seed 000's ResBlock: Conv3x3(strides)-BN-ReLU-Conv3x3-BN, plus the input (or its 1x1 strided
    projection when strides != 1), then ReLU."""
    y = layers.Conv2D(filters, (3, 3), strides=strides, padding="same", name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, (3, 3), strides=1, padding="same", name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn2")(y)
    shortcut = x if strides == 1 else layers.Conv2D(
        filters, (1, 1), strides=strides, name=f"{name}_proj")(x)
    y = layers.add([y, shortcut], name=f"{name}_add")
    return layers.Activation("relu", name=f"{name}_out")(y)


def seed000_resnet(input_shape, num_classes: int, *, blocks: tuple[int, int, int, int],
                   widths=(64, 128, 256, 512), name: str = "resnet") -> keras.Model:
    """Seed 000: stem Conv3x3(64, 'valid') - BN - ReLU - MaxPool(2, stride 1, 'same'); four stages
    of basic blocks (strides 1, 2, 2, 2); global average pooling; Dense (+ softmax, our convention)."""
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(widths[0], (3, 3), strides=1, padding="valid", name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    x = layers.MaxPooling2D((2, 2), strides=1, padding="same", name="stem_pool")(x)
    for s, (filters, n, stride) in enumerate(zip(widths, blocks, (1, 2, 2, 2)), start=1):
        for b in range(n):
            x = basic_block(x, filters, stride if b == 0 else 1, f"stage{s}_block{b + 1}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


# ------------------------------------------------------------------ the CPU demo default

def resmini(input_shape, num_classes: int) -> keras.Model:
    """The default for the CPU demo: a 6-layer residual net (5 convs + Dense, counted like ResNet-18) built from seed 000's basic block at
    16/32 filters. Stem Conv3x3(16)-BN-ReLU, MaxPool to 14x14; a basic block (identity) at 16; a
    basic block with 1x1 projection at 32; MaxPool to 7x7; Dropout 0.3; Flatten; Dense softmax.
    Why: about 45 s an epoch on a 2-core CPU and >= 91% Fashion-MNIST test accuracy in 6 epochs,
    so the whole pipeline (train, 7 conversions, validation, benchmark) fits in ten minutes.
    BatchNorm momentum is 0.9 (Keras default 0.99): with a few hundred training steps the 0.99
    moving statistics still carry their initial values, which ruins inference-mode accuracy."""
    m = RESMINI_BN_MOMENTUM
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(16, (3, 3), padding="same", name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=m, name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    x = layers.MaxPooling2D((2, 2), name="stem_pool")(x)
    x = basic_block(x, 16, 1, "stage1_block1", bn_momentum=m)
    x = _projected_block(x, 32, "stage2_block1", bn_momentum=m)
    x = layers.MaxPooling2D((2, 2), name="stage2_pool")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="resmini")


RESMINI_BN_MOMENTUM = 0.9


def _projected_block(x, filters: int, name: str, bn_momentum: float):
    """A basic block that widens without striding: the shortcut is a 1x1 projection (stride 1)."""
    y = layers.Conv2D(filters, (3, 3), padding="same", name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, (3, 3), padding="same", name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn2")(y)
    shortcut = layers.Conv2D(filters, (1, 1), name=f"{name}_proj")(x)
    y = layers.add([y, shortcut], name=f"{name}_add")
    return layers.Activation("relu", name=f"{name}_out")(y)


# ------------------------------------------------------------------ registry

@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., keras.Model]
    depth: int          # counted as documented above (seed-003 convs, or ResNet weight layers)
    dataset: str        # the dataset it was designed for (the default for `train`)
    source: str
    description: str


def _register() -> dict[str, ModelSpec]:
    reg: dict[str, ModelSpec] = {}
    for depth in SEED003_STAGES:
        for residual in (False, True):
            kind = "residual" if residual else "plain"
            name = f"{kind}{depth}"
            reg[name] = ModelSpec(
                name, lambda s, c, d=depth, r=residual: seed003_cnn(s, c, depth=d, residual=r), depth,
                "fashion_mnist", "seed 003",
                f"{kind} {depth}-layer CNN, 2x2 convs, stages {SEED003_STAGES[depth]}")
    reg["resnet18"] = ModelSpec("resnet18", lambda s, c: seed000_resnet(s, c, blocks=(2, 2, 2, 2), name="resnet18"),
                                18, "cifar10", "seed 000", "ResNet-18, basic blocks (2, 2, 2, 2)")
    reg["resnet34"] = ModelSpec("resnet34", lambda s, c: seed000_resnet(s, c, blocks=(3, 4, 6, 3), name="resnet34"),
                                34, "cifar10", "seed 000", "ResNet-34, basic blocks (3, 4, 6, 3)")
    reg["resmini"] = ModelSpec("resmini", resmini, 6, "fashion_mnist", "ours (CPU default)",
                               "6-layer residual net, 16/32 filters: the fast CPU demo")
    return reg


MODELS: dict[str, ModelSpec] = _register()


def spec(name: str) -> ModelSpec:
    """The registry entry, or a UsageError listing the names there are."""
    if name not in MODELS:
        raise UsageError(f"unknown model '{name}'", hint=f"choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, input_shape, num_classes: int) -> keras.Model:
    return spec(name).build(tuple(input_shape), int(num_classes))


def count_depth(model: keras.Model) -> int:
    """Depth the seeds' way, read off a built model: for seed-003 nets the non-1x1 convolutions;
    for ResNets (and resmini) every conv but the 1x1 projections, plus the final Dense."""
    convs = [l for l in model.layers if isinstance(l, layers.Conv2D) and tuple(l.kernel_size) != (1, 1)]
    if model.name.startswith(("plain", "residual")):
        return len(convs)
    return len(convs) + sum(isinstance(l, layers.Dense) for l in model.layers)
