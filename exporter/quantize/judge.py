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

- and when it may contain such images and the reference's outputs on the deployment images are
  known (`difficulty`: the reference's top-2 margins on the test inputs, no labels), the hold-out is
  first reweighted to their difficulty: images are binned by the reference's top-2 margin (deciles
  of the target), agreement and drop are measured per bin and averaged with the target's weights,
  with the variance that weighting costs. Easy training images then cannot stand in for hard test
  images (measured: an imported EfficientNetB0's fallback passed the plain bounds on the hold-out
  and missed 97% agreement on the test set by 0.02 pt).

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
from exporter.outputs import to_probabilities

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


DIFFICULTY_BINS = 10


def top2_margin(outputs: np.ndarray, convention: str = "probabilities") -> np.ndarray:
    """Per image: the reference's top-1 minus top-2 probability (small = hard, a near-tie)."""
    p = np.sort(to_probabilities(outputs, convention), axis=1)
    return p[:, -1] - p[:, -2]


def difficulty_matched(ref_pred, out_pred, labels, ref_margin, target_margin, z: float = Z,
                       bins: int = DIFFICULTY_BINS) -> dict:
    """Agreement and drop (points) of the hold-out reweighted to the target's difficulty, with a
    lower bound on the agreement and an upper bound on the drop. Bins: deciles of the target's
    top-2 margins; a bin the hold-out leaves empty counts as all-disagreeing (nothing shown)."""
    edges = np.quantile(target_margin, np.linspace(0, 1, bins + 1)[1:-1])
    hold_bin, target_bin = np.searchsorted(edges, ref_margin), np.searchsorted(edges, target_margin)
    n = len(labels)
    agree = est_d = var_a = var_d = 0.0
    empty = 0
    for b in range(bins):
        w = float((target_bin == b).mean())
        sel = hold_bin == b
        nb = int(sel.sum())
        if w == 0:
            continue
        if nb == 0:
            empty += 1
            est_d += w
            continue
        same = int((ref_pred[sel] == out_pred[sel]).sum())
        p_tilde = (same + 1) / (nb + 2)  # keeps the variance above 0 when a bin agrees everywhere
        agree += w * same / nb
        var_a += w * w * p_tilde * (1 - p_tilde) / nb
        ref_ok, out_ok = ref_pred[sel] == labels[sel], out_pred[sel] == labels[sel]
        lose, gain = int((ref_ok & ~out_ok).sum()), int((~ref_ok & out_ok).sum())
        d = (lose - gain) / nb
        est_d += w * d
        var_d += w * w * max((lose + gain + 1) / nb - d * d, 0.0) / nb
    lo = agree - z * math.sqrt(var_a + 1.0 / (n * n))
    hi = est_d + z * math.sqrt(var_d + 1.0 / (n * n))
    return {"agreement": 100 * agree, "agreement_lower_bound": 100 * lo, "drop_points": 100 * est_d,
            "drop_upper_bound": 100 * hi, "bins": bins, "empty_bins": empty,
            "by": "the reference's top-2 margin; target: the reference on the deployment (test) inputs, no labels"}


def judge(ref: np.ndarray, out: np.ndarray, labels: np.ndarray, class_names, gates: formats.Gates, *,
          convention: str = "probabilities", seen: bool | None = False, z: float = Z,
          difficulty: np.ndarray | None = None) -> dict:
    """The verdict on one artifact's hold-out outputs against `ref` under `gates` (bounded).
    `difficulty`: the reference's top-2 margins on the deployment inputs; used when the hold-out may
    hold training images (`seen` true or unknown)."""
    m = compare(ref, out, labels, class_names, convention)
    n = len(labels)
    ref_pred, out_pred = ref.argmax(1), out.argmax(1)
    m["change_points"] = 100 * (float((out_pred == labels).mean()) - float((ref_pred == labels).mean()))
    agree_n = int((ref_pred == out_pred).sum())
    lo = 100 * wilson_interval(agree_n, n, z)[0]
    drop, drop_hi = paired_drop_bound(ref_pred, out_pred, labels, z)
    matched = None
    if seen in (True, None) and difficulty is not None and n:
        matched = difficulty_matched(ref_pred, out_pred, labels, top2_margin(ref, convention), difficulty, z)
        lo, drop_hi = min(lo, matched["agreement_lower_bound"]), max(drop_hi, matched["drop_upper_bound"])
    margin = SEEN_MARGIN if seen in (True, None) else 0.0
    bounded = {**m, "agreement": lo - margin, "change_points": -(drop_hi + margin)}
    bounded.pop("agreement_without_near_ties", None)
    failures = check_gates(bounded, replace(gates, max_abs_diff=None))
    return {"n": n, "agreement": round(m["agreement"], 3), "agreement_lower_bound": round(lo - margin, 3),
            "drop_points": round(drop, 3), "drop_upper_bound": round(drop_hi + margin, 3),
            "finite": m["finite"], "confidence": f"one-sided {100 * (1 - (1 - math.erf(z / math.sqrt(2))) / 2):.1f}%",
            "seen_in_training": seen, "seen_margin_points": margin,
            **({"difficulty_matched": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in matched.items()}}
               if matched else {}),
            "gates": {"min_agreement": gates.min_agreement, "max_drop": gates.max_drop},
            "passed": not failures, "failures": failures}
