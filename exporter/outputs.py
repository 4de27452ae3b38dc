"""What a classifier outputs: probabilities (a softmax or sigmoid last) or logits (anything else).

Gates compare outputs as probabilities, so one threshold means the same for both conventions: a
logits model's outputs (|logits| ~20) are put through a softmax before the differences are taken.
The convention is detected once, at train/convert/import, and recorded in the manifest
(`model.output`, `model.output_detected_by`)."""

from __future__ import annotations

import numpy as np

PROBABILITIES = "probabilities"
LOGITS = "logits"
CONVENTIONS = (PROBABILITIES, LOGITS)

_PROBABILITY_ACTIVATIONS = {"softmax", "sigmoid"}  # log_softmax: log-probabilities, softmax recovers them


def _final_layer(model):
    """The layer that produces the model's (first) output, looking inside nested models."""
    layer = model
    for _ in range(64):  # nesting depth guard
        inner = None
        outputs = getattr(layer, "outputs", None)
        if outputs:
            history = getattr(outputs[0], "_keras_history", None)
            inner = getattr(history, "operation", None) if history is not None else None
        elif getattr(layer, "layers", None) and type(layer).__name__ == "Sequential":
            inner = layer.layers[-1]
        if inner is None or inner is layer:
            return layer if layer is not model else None
        layer = inner
    return None


def _activation_name(layer) -> str | None:
    import keras

    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    name = getattr(act, "__name__", None) or type(act).__name__
    return name.lower()


def detect_from_model(model) -> tuple[str, str] | None:
    """(convention, how) from the final layer's activation, or None when it cannot be told (a
    subclassed model, a custom last layer): then the values decide."""
    try:
        layer = _final_layer(model)
    except Exception:  # noqa: BLE001  (an exotic graph: fall back to the values)
        return None
    if layer is None:
        return None
    name = _activation_name(layer)
    if name is None:
        return None
    how = f"final activation '{name}' of layer '{layer.name}'"
    if name in _PROBABILITY_ACTIVATIONS:
        return (PROBABILITIES, how)
    if name in ("linear", "log_softmax"):
        return (LOGITS, how)
    return None


def detect_from_values(outputs: np.ndarray) -> tuple[str, str]:
    """Probabilities if every row lies in [0, 1] and sums to 1 (within 1e-3); else logits."""
    y = np.asarray(outputs, dtype=np.float64)
    if y.size and np.all(np.isfinite(y)) and y.min() >= -1e-6 and y.max() <= 1 + 1e-6 \
            and np.allclose(y.sum(axis=-1), 1.0, atol=1e-3):
        return (PROBABILITIES, f"values: {len(y)} rows in [0, 1] summing to 1")
    return (LOGITS, f"values: {len(y)} rows not probability distributions")


def detect(model, sample_outputs: np.ndarray) -> tuple[str, str]:
    return detect_from_model(model) or detect_from_values(sample_outputs)


def to_probabilities(y: np.ndarray, convention: str) -> np.ndarray:
    """Outputs as probabilities: a stable softmax over the last axis for logits, as given otherwise."""
    y = np.asarray(y, dtype=np.float32)
    if convention != LOGITS:
        return y
    z = y.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
