"""The Runner interface: what validate and bench see of any artifact.

    runner = load_runner(path, device="cpu", threads=None)
    probs = runner.predict(x)        # x: float32 NHWC in 0..1, any batch -> float32 probabilities
    runner.info                      # engine, device, provider actually used, precision, quant params
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from exporter.errors import InputError, ModelFileError

MAGIC = {  # what the first bytes of each family's files look like
    "tflite": lambda b: len(b) >= 8 and b[4:8] == b"TFL3",
    "keras": lambda b: b[:4] == b"PK\x03\x04" or b[:8] == b"\x89HDF\r\n\x1a\n",
    "onnx": lambda b: len(b) > 0 and b[:1] in (b"\x08", b"\x0a", b"\x12", b"\x1a", b"\x22", b"\x3a", b"\x42"),
}


def _looks_like_onnx(b: bytes) -> bool:
    """Stricter than MAGIC['onnx'] (which only rules files out): a ModelProto begins with ir_version
    (field 1, a small varint) followed by another top-level field. Used only to name a file's real format."""
    return len(b) >= 3 and b[0] == 0x08 and 0 < b[1] < 0x80 and b[2] in (0x12, 0x1a, 0x22, 0x28, 0x32, 0x3a, 0x42)


FAMILY_BY_MAGIC = (("tflite", MAGIC["tflite"], "a TFLite flatbuffer"),
                   ("keras", MAGIC["keras"], "a Keras archive or HDF5 file"),
                   ("onnx", _looks_like_onnx, "an ONNX model"))


def check_file(path: Path, family: str) -> None:
    """Refuse empty files and files whose content contradicts their suffix, naming both."""
    path = Path(path)
    artifact = family in ("tflite", "onnx")  # convert can re-create these; a reference model it cannot
    if not path.exists():
        raise ModelFileError(f"{path} does not exist",
                             hint="re-create it with `resexport convert`" if artifact else "restore the model file")
    if path.is_dir():
        return
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes)", hint="re-create it with `resexport convert --force`"
                             if artifact else "restore the model file, or re-save it from Keras")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if MAGIC[family](head):
        return
    for other, sniff, what in FAMILY_BY_MAGIC:
        if other != family and sniff(head):
            raise ModelFileError(f"{path}: the suffix says {family} but the content is {what}",
                                 hint="rename the file to its real format")
    raise ModelFileError(f"{path} is not a valid {family} file (unrecognised header {head[:8].hex()})",
                         hint="the file is corrupt or truncated; re-create it")


def quantize(x: np.ndarray, q: dict, dtype) -> np.ndarray:
    """Float inputs -> an integer input tensor with the file's own scale and zero point (as an app does)."""
    info = np.iinfo(dtype)
    return np.clip(np.round(x / q["scale"] + q["zero_point"]), info.min, info.max).astype(dtype)


def median_ops(ops: dict) -> list[dict]:
    """Per-op profile rows with their timed calls in "durations" (microseconds) -> "calls" and "us" (the median
    call times the calls), so one pre-empted call on a busy machine does not count."""
    for op in ops.values():
        durations = op.pop("durations")
        op["calls"] = len(durations)
        op["us"] = float(np.median(durations)) * len(durations)
    return list(ops.values())


def dequantize(y: np.ndarray, q: dict) -> np.ndarray:
    return (y.astype(np.float32) - q["zero_point"]) * np.float32(q["scale"])


class Runner(abc.ABC):
    """One loaded artifact. Subclasses implement `load` and `_predict` (one batch)."""

    engine: str = "?"
    rgb_adapter: bool = False  # the file takes RGB and makes it gray inside (export/tflite_app.py): a gray
    #                            image is fed with its channel repeated, as an app's RGB image of it is

    def __init__(self, path: Path, *, device: str, info: dict):
        self.path = Path(path)
        self.device = device
        self.info = {"engine": self.engine, "device": device, "path": str(path), **info}

    @classmethod
    @abc.abstractmethod
    def load(cls, path: Path, *, device: str = "cpu", threads: int | None = None, **options) -> "Runner":
        ...

    @abc.abstractmethod
    def _predict(self, x: np.ndarray) -> np.ndarray:
        """One batch: float32 NHWC in 0..1 -> float32 (batch, classes)."""

    @property
    @abc.abstractmethod
    def input_shape(self) -> tuple:
        """One image's shape (H, W, C), as the artifact declares it."""

    @property
    @abc.abstractmethod
    def num_outputs(self) -> int | None:
        """Classes the artifact outputs, if it declares them."""

    def check_fits(self, image_shape, num_classes: int | None = None) -> None:
        """Refuse (InputError, naming the file) an artifact whose declared input shape or class count
        does not match the data it is about to see. Undeclared dimensions are not checked."""
        image_shape = tuple(image_shape)
        if self.rgb_adapter and image_shape[-1:] == (1,):
            image_shape = (*image_shape[:-1], 3)
        declared = tuple(int(d) for d in self.input_shape if d is not None) if self.input_shape else None
        if declared and declared != tuple(image_shape):
            raise InputError(f"{self.path}: the model takes images of shape {declared} but the dataset has "
                             f"{tuple(image_shape)}", hint="pass the matching --dataset")
        if num_classes is not None and self.num_outputs is not None and self.num_outputs != num_classes:
            raise InputError(f"{self.path}: the model outputs {self.num_outputs} values but the dataset has "
                             f"{num_classes} classes: it is not a classifier over this dataset's classes",
                             hint="pass the matching --dataset")

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.rgb_adapter and x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        y = self._predict(x)
        return np.asarray(y, dtype=np.float32).reshape(len(x), -1)

    def predict_batched(self, x: np.ndarray, batch_size: int = 256, task=None) -> np.ndarray:
        outs = []
        for i in range(0, len(x), batch_size):
            outs.append(self.predict(x[i: i + batch_size]))
            if task is not None:
                task.advance(min(batch_size, len(x) - i))
        return np.concatenate(outs) if outs else np.zeros((0, self.num_outputs or 0), np.float32)

    def profile(self, x: np.ndarray, runs: int) -> dict:
        """Where the time of `runs` calls on the batch `x` goes, op by op, as this runtime can tell:
        {"available": True, "timed": bool, "ops": [{"node", "op_type", "us" (total over the timed calls),
        "calls", optional "layer", "kernel", "runs_in"}], "shows": str, "cannot_show": str}; a runtime that
        cannot tell returns {"available": False, "reason": str}. exporter.profile arranges it (shares, top ops)."""
        return {"available": False, "reason": f"{self.engine} offers no per-op timing to resexport"}

    def io_details(self) -> dict:
        """Input/output names, shapes, dtypes, quantisation: recorded in the manifest."""
        return {}

    def close(self) -> None:
        pass
