"""The one preprocessing type, and the one place that decides it.

`Preprocessing` turns a stored image (uint8 0..255, or float 0..1) into the model's input: resize to
(height, width), grayscale or RGB, scale (unit 0..1, symmetric -1..1, raw 0..255, imagenet mean/std),
then the model's own input rank: (H, W, C) as decoded, (H, W) for a grayscale model without a channel
axis, or a flat (H*W*C,) vector.

`decide(...)` is where a run's preprocessing comes from, for every command: an explicit `--scale` wins;
otherwise a `Rescaling`/`Normalization` layer at the model's input (also inside a nested model) means the
model expects raw 0..255 pixels; otherwise 0..1. The result records how it was decided (`detected_by`).
Knows nothing about artifact formats; reads a Keras model only through its layers' public attributes.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

from exporter.errors import DataError, UsageError

log = logging.getLogger(__name__)

SCALES = ("unit", "symmetric", "raw", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCALE_RANGES = {"unit": [0.0, 1.0], "symmetric": [-1.0, 1.0], "raw": [0.0, 255.0], "imagenet": None}
SCALE_HELP = "unit (0..1), symmetric (-1..1), raw (0..255) or imagenet (mean/std)"
FORMULAS = {"unit": "pixel / 255", "symmetric": "pixel / 127.5 - 1", "raw": "pixel",
            "imagenet": "(pixel / 255 - mean) / std"}


@dataclass(frozen=True)
class Preprocessing:
    """What turns a stored image into the model's input. Decided once (at train or import), recorded in
    the run's manifest, used by calibration, validate, bench and predict.

    input_shape: the model's own per-image input shape when it is not (height, width, channels):
    (height, width) or (height * width * channels,). None: the decoded (H, W, C) image is the input."""

    height: int
    width: int
    channels: int
    scale: str = "unit"
    input_shape: tuple | None = None
    detected_by: str = ""

    def __post_init__(self):
        if self.scale not in SCALES:
            raise UsageError(f"unknown --scale '{self.scale}'", hint=f"choose one of: {', '.join(SCALES)}")
        if self.channels not in (1, 3):
            raise UsageError(f"images need 1 (grayscale) or 3 (RGB) channels, the model takes {self.channels}")
        if self.height <= 0 or self.width <= 0:
            raise UsageError(f"image size must be positive, got {self.height}x{self.width}")
        if self.scale == "imagenet" and self.channels != 3:
            raise UsageError("--scale imagenet needs an RGB (3-channel) model")
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
            if math.prod(self.input_shape) != self.height * self.width * self.channels:
                raise UsageError(f"model input {self.input_shape} does not hold a {self.height}x{self.width}x"
                                 f"{self.channels} image")

    @property
    def shape(self) -> tuple[int, int, int]:
        """One decoded image: (height, width, channels)."""
        return (self.height, self.width, self.channels)

    @property
    def model_shape(self) -> tuple[int, ...]:
        """One image as the model takes it."""
        return self.input_shape or self.shape

    @property
    def layout(self) -> str:
        if self.input_shape is None:
            return "NHWC"
        return "NHW" if len(self.input_shape) == 2 else "flat (N, H*W*C)"

    @property
    def mean(self):
        return list(IMAGENET_MEAN) if self.scale == "imagenet" else None

    @property
    def std(self):
        return list(IMAGENET_STD) if self.scale == "imagenet" else None

    @property
    def is_identity(self) -> bool:
        """True when 0..1 (H, W, C) images are already the model's input (the built-ins as loaded)."""
        return self.scale == "unit" and self.input_shape is None

    def to_dict(self) -> dict:
        return {"size": [self.height, self.width], "channels": self.channels,
                "color": "rgb" if self.channels == 3 else "grayscale", "layout": self.layout,
                "input_shape": list(self.model_shape), "dtype": "float32", "resize": "bilinear",
                "scale": self.scale, "input_range": SCALE_RANGES[self.scale], "mean": self.mean, "std": self.std,
                "formula": FORMULAS[self.scale], **({"detected_by": self.detected_by} if self.detected_by else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        try:
            hwc = (int(d["size"][0]), int(d["size"][1]), int(d["channels"]))
            shape = tuple(int(v) for v in d.get("input_shape") or hwc)
            return cls(*hwc, str(d.get("scale", "unit")), None if shape == hwc else shape, str(d.get("detected_by", "")))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"the run's preprocessing record is malformed ({exc})",
                            hint="re-create the run with `resexport convert --model FILE --data ...`") from exc

    def key(self) -> str:
        """Identity of what the model is fed (how it was decided is not part of it)."""
        d = asdict(self)
        d.pop("detected_by")
        return json.dumps(d, sort_keys=True)

    def scale_unit(self, u: np.ndarray) -> np.ndarray:
        """float32 (N, H, W, C) images in 0..1 -> the model's input (range and rank)."""
        u = np.asarray(u, dtype=np.float32)
        if self.scale == "symmetric":
            u = u * np.float32(2.0) - np.float32(1.0)
        elif self.scale == "raw":
            u = u * np.float32(255.0)
        elif self.scale == "imagenet":
            u = (u - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        return u.reshape(len(u), *self.input_shape) if self.input_shape is not None else u

    def from_pixels(self, x: np.ndarray) -> np.ndarray:
        """uint8 (0..255) or float (0..1) (N, H, W, C) images already at the model's size -> model input."""
        u = x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32)
        return self.scale_unit(u)


# ------------------------------------------------------------------------------ deciding it

def image_geometry(model_input, data_shape, where) -> tuple[tuple[int, int, int], tuple | None, str]:
    """((H, W, C), the model's own shape if not HWC, how) for a model input shape (one image, no batch),
    given the data's native (H, W, C) (needed only for a flat input)."""
    shape = tuple(model_input)
    if any(d is None for d in shape):
        raise UsageError(f"{where}: the model's input shape {shape} is not fixed",
                         hint="export the model with a fixed input size (e.g. keras.Input((224, 224, 3)))")
    shape = tuple(int(d) for d in shape)
    if len(shape) == 3 and shape[-1] in (1, 3):
        return shape, None, "(height, width, channels) input"
    if len(shape) == 2:
        return (shape[0], shape[1], 1), shape, "(height, width) input: grayscale without a channel axis"
    if len(shape) == 1 and data_shape is not None:
        h, w, c = (tuple(data_shape) + (1,))[:3] if len(data_shape) == 2 else tuple(data_shape)
        if h * w * c == shape[0]:
            return (h, w, c), shape, f"flat input of {shape[0]} = {h}x{w}x{c}, the data's image size"
        raise UsageError(f"{where}: the model takes flat vectors of {shape[0]} values but the data's images are "
                         f"{h}x{w}x{c} = {h * w * c}", hint="pass data whose images have that many pixels")
    raise UsageError(f"{where}: the model's input shape {shape} is not an image: expected (height, width, "
                     "channels) with 1 or 3 channels, (height, width), or a flat (height*width*channels,) vector")


def _walk(model):
    for layer in getattr(model, "layers", None) or []:
        yield layer
        yield from _walk(layer)


# Layers that only move or copy pixels (or are identity in inference) sit before the scaling layer.
_PASSIVE = {"InputLayer", "Resizing", "Reshape", "Flatten", "CenterCrop", "Cropping2D", "ZeroPadding2D",
            "Permute", "Identity", "Dropout", "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
            "RandomCrop", "RandomContrast", "RandomBrightness", "GaussianNoise", "Sequential", "Functional",
            "Model"}


def input_scaling_layer(model):
    """(layer, the scale its input is in) for a Rescaling/Normalization layer at the model's input, also
    inside a nested model; (None, None) if the first layer that computes anything is something else."""
    for layer in _walk(model):
        kind = type(layer).__name__
        if kind == "Rescaling":
            factor = np.max(np.abs(np.asarray(layer.scale, dtype=np.float64)))
            return layer, ("raw" if factor < 0.5 else "unit")  # 1/255, 1/127.5: it expects 0..255 pixels
        if kind == "Normalization":
            mean = getattr(layer, "mean", None)
            if mean is None:
                return None, None
            return layer, ("raw" if float(np.max(np.asarray(mean))) > 2.0 else "unit")
        if kind not in _PASSIVE and getattr(layer, "layers", None) is None:
            return None, None
    return None, None


def decide(model_input, *, scale: str | None, model=None, data_shape=None, where="the model") -> Preprocessing:
    """The preprocessing a model needs, decided here and nowhere else.

    model_input: the model's per-image input shape (None for a subclassed model: then the data's image
    shape is used). scale: an explicit --scale (wins; a warning if the model scales its input itself).
    model: a Keras model to read a Rescaling/Normalization input layer from. data_shape: the data's native
    (H, W, C), for flat inputs and models that declare no input."""
    if model_input is None:
        if data_shape is None:
            raise UsageError(f"{where}: the model declares no input shape", hint="pass --data so the image size is known")
        model_input = tuple(data_shape)
    hwc, own_shape, geometry = image_geometry(model_input, data_shape, where)
    layer, expects = input_scaling_layer(model) if model is not None else (None, None)
    if scale is not None:
        if layer is not None and scale != expects:
            log.warning("%s has a %s layer ('%s') at its input that expects %s pixels, and --scale %s scales them "
                        "too: they are scaled twice (pass --scale %s, or leave --scale out)", where,
                        type(layer).__name__, layer.name, "0..255" if expects == "raw" else "0..1", scale, expects)
        how = f"--scale {scale}"
    elif layer is not None:
        scale = expects
        how = (f"{type(layer).__name__} layer '{layer.name}' at the model's input expects "
               f"{'raw 0..255' if expects == 'raw' else '0..1'} pixels")
    else:
        scale = "unit"
        how = "default 0..1 (no Rescaling/Normalization layer at the model's input)"
    return Preprocessing(*hwc, scale, own_shape, f"{how}; {geometry}")
