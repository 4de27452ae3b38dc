"""How an int8 choice is judged before the test set sees it: the artifact's outputs on a held-out
slice of the TRAINING split against a reference's, through validate's own `compare` and
`check_gates` (the only gate logic), applied to confidence BOUNDS instead of the point estimates:

- agreement: the lower end of the Wilson interval (one-sided 97.5% with the default z);
- accuracy drop: the upper end of a paired normal bound on (reference right, artifact wrong) minus
  (reference wrong, artifact right) over n, the same two predictions on the same images;
- when the slice may contain images the model was trained on (it was trained on the whole
  training split, or it was imported and its training images are unknown), both bounds are moved
  by SEEN_MARGIN points against the artifact: training images are easier for the model, so
  agreement and drop measured on them are optimistic.

A choice passes only if the bounds pass the kind's gates; the verdict records the bounds, n, the
confidence and the margin ("how sure").
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from exporter import formats
from exporter.stats import wilson_interval
from exporter.validate import check_gates, compare

Z = 1.959964            # two-sided 95% = one-sided 97.5%
SEEN_MARGIN = 0.25      # points, when the hold-out images may have been trained on
DEFAULT_HOLDOUT = 5000  # images: Wilson half-width ~0.4 pt at 97% agreement


def paired_drop_bound(ref_pred: np.ndarray, out_pred: np.ndarray, labels: np.ndarray, z: float = Z) -> tuple[float, float]:
    """(drop, upper bound) in points: reference accuracy minus artifact accuracy on the same images."""
    n = len(labels)
    if n == 0:
        return 0.0, float("inf")
    ref_ok, out_ok = ref_pred == labels, out_pred == labels
    b = int((ref_ok & ~out_ok).sum())
    c = int((~ref_ok & out_ok).sum())
    d = (b - c) / n
    var = max((b + c) / n - d * d, 0.0) / n
    half = z * math.sqrt(var + 1.0 / (n * n))  # the 1/n^2 keeps the bound above the estimate when b = c = 0
    return 100 * d, 100 * (d + half)


def judge(ref: np.ndarray, out: np.ndarray, labels: np.ndarray, class_names, gates: formats.Gates, *,
          convention: str = "probabilities", seen: bool | None = False, z: float = Z) -> dict:
    """The verdict on one artifact's hold-out outputs against `ref` under `gates` (bounded)."""
    m = compare(ref, out, labels, class_names, convention)
    n = len(labels)
    ref_pred, out_pred = ref.argmax(1), out.argmax(1)
    m["change_points"] = 100 * (float((out_pred == labels).mean()) - float((ref_pred == labels).mean()))
    agree_n = int((ref_pred == out_pred).sum())
    lo = 100 * wilson_interval(agree_n, n, z)[0]
    drop, drop_hi = paired_drop_bound(ref_pred, out_pred, labels, z)
    margin = SEEN_MARGIN if seen in (True, None) else 0.0
    bounded = {**m, "agreement": lo - margin, "change_points": -(drop_hi + margin)}
    bounded.pop("agreement_without_near_ties", None)
    failures = check_gates(bounded, replace(gates, max_abs_diff=None))
    return {"n": n, "agreement": round(m["agreement"], 3), "agreement_lower_bound": round(lo - margin, 3),
            "drop_points": round(drop, 3), "drop_upper_bound": round(drop_hi + margin, 3),
            "finite": m["finite"], "confidence": f"one-sided {100 * (1 - (1 - math.erf(z / math.sqrt(2))) / 2):.1f}%",
            "seen_in_training": seen, "seen_margin_points": margin,
            "gates": {"min_agreement": gates.min_agreement, "max_drop": gates.max_drop},
            "passed": not failures, "failures": failures}
