"""Validation: one loop over any runners against the reference runner, on the full test set.

It never asks which format it is checking: every artifact is a Runner, gates come from the
formats table (or the caller's overrides)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from exporter import data as data_mod
from exporter import formats
from exporter import manifest as mf
from exporter.errors import ModelFileError, UsageError
from exporter.export.source import check_input_matches
from exporter.fsutil import sha256_file, write_json_atomic
from exporter.progress import NULL, Progress
from exporter.runtimes import Runner, load_runner

log = logging.getLogger(__name__)

VALIDATION_FILE = "validation.json"
REFERENCE_CACHE = "reference_outputs.npz"


def _test_set_hash(x: np.ndarray, y: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes()).hexdigest()[:16]


def reference_outputs(run: Path, man: dict, dataset, *, batch_size, threads, unsafe, progress):
    """The reference model's outputs on the test set, and a description of where they came from.

    Computed with the reference runner and cached in the run (keyed by the model's sha256 and the
    test set's hash). Where the reference cannot be run (an edge box with no Keras/TensorFlow),
    the cache is used instead, if it matches."""
    from exporter.errors import MissingRuntimeError
    from exporter.fsutil import atomic_path, sha256_path

    ref_kind = man["model"].get("format", "keras")
    ref_path = run / man["model"]["file"]
    model_sha = sha256_path(ref_path) if ref_path.exists() else man["model"].get("sha256")
    data_hash = _test_set_hash(dataset.x_test, dataset.y_test)
    try:
        runner = load_runner(ref_path, kind=ref_kind, threads=threads, unsafe=unsafe)
    except MissingRuntimeError as exc:
        cache = run / REFERENCE_CACHE
        if cache.is_file():
            with np.load(cache) as npz:
                if str(npz["model_sha256"]) == model_sha and str(npz["test_hash"]) == data_hash:
                    log.info("reference runtime missing (%s); using cached reference outputs", exc.message)
                    return npz["outputs"], {"kind": ref_kind, "file": man["model"]["file"], "source": "cache",
                                            "seconds": None, "runner": {"engine": "cached outputs", "device": "-"}}
        raise MissingRuntimeError(f"{exc.message}; and no matching cached reference outputs in {run}",
                                  hint=f"validate once where Keras runs (it caches {REFERENCE_CACHE}), or "
                                       f"{exc.hint}") from exc
    check_input_matches(ref_path, runner.input_shape, dataset.input_shape,
                        classes=dataset.num_classes, model_classes=runner.num_outputs)
    ref, seconds = run_runner(runner, dataset.x_test, batch_size, progress, f"reference ({ref_kind})")
    if not np.all(np.isfinite(ref)):
        raise ModelFileError(f"{ref_path}: the reference model outputs NaN or Inf",
                             hint="the model is broken (diverged training?); retrain it")
    with atomic_path(run / REFERENCE_CACHE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, outputs=ref, model_sha256=model_sha, test_hash=data_hash)
    return ref, {"kind": ref_kind, "file": man["model"]["file"], "source": "computed",
                 "seconds": round(seconds, 2), "runner": runner.info}


NEAR_TIE_MARGIN = 0.05  # reference top-1 minus top-2 probability


def compare(ref: np.ndarray, out: np.ndarray, labels: np.ndarray, class_names) -> dict:
    """Metrics of one artifact's outputs against the reference's, both (N, classes)."""
    finite = bool(np.all(np.isfinite(out)))
    pred, ref_pred = out.argmax(1), ref.argmax(1)
    diff = np.abs(out - ref) if finite else np.full_like(out, np.inf)
    per_class, moved = [], []
    for c, name in enumerate(class_names):
        mask = labels == c
        if not mask.any():
            continue
        acc, ref_acc = float((pred[mask] == c).mean()), float((ref_pred[mask] == c).mean())
        per_class.append({"class": name, "accuracy": acc, "change_points": 100 * (acc - ref_acc)})
    moved = sorted(per_class, key=lambda r: -abs(r["change_points"]))[:3]
    # Near-ties: images where the reference itself barely prefers its top class. A low-confidence
    # model loses agreement there first (even fp16 flips them); agreement on the rest tells a
    # broken artifact from a fragile model. Reported, never used by a gate.
    top2 = np.sort(ref, axis=1)[:, -2:]
    confident = (top2[:, -1] - top2[:, 0]) >= NEAR_TIE_MARGIN if ref.shape[1] > 1 else np.ones(len(ref), bool)
    return {
        "accuracy": float((pred == labels).mean()),
        "agreement": float(100 * (pred == ref_pred).mean()),
        "near_ties_percent": float(100 * (1 - confident.mean())) if len(ref) else 0.0,
        "agreement_without_near_ties": float(100 * (pred == ref_pred)[confident].mean()) if confident.any() else None,
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "finite": finite,
        "per_class": per_class,
        "moved_most": [{"class": r["class"], "change_points": r["change_points"]} for r in moved
                       if r["change_points"] != 0],
    }


def check_gates(metrics: dict, gates: formats.Gates) -> list[str]:
    failures = []
    if not metrics["finite"]:
        failures.append("outputs contain NaN or Inf")
        return failures
    if gates.min_agreement is not None and metrics["agreement"] < gates.min_agreement:
        rest = metrics.get("agreement_without_near_ties")
        note = (f" ({rest:.2f}% without the {metrics['near_ties_percent']:.1f}% near-ties, where the reference's top two "
                f"classes are < {NEAR_TIE_MARGIN} apart)") if rest is not None and metrics["near_ties_percent"] > 0 else ""
        failures.append(f"agreement {metrics['agreement']:.2f}% < {gates.min_agreement}%{note}")
    if gates.max_drop is not None and -metrics["change_points"] > gates.max_drop:
        failures.append(f"accuracy drop {-metrics['change_points']:.2f} pt > {gates.max_drop} pt")
    if gates.max_abs_diff is not None and metrics["max_abs_diff"] > gates.max_abs_diff:
        failures.append(f"max |diff| {metrics['max_abs_diff']:.2e} > {gates.max_abs_diff:.0e}")
    return failures


def run_runner(runner: Runner, x: np.ndarray, batch_size: int, progress: Progress, label: str) -> tuple[np.ndarray, float]:
    with progress.task(label, total=len(x)) as task:
        start = time.perf_counter()
        out = runner.predict_batched(x, batch_size, task)
    return out, time.perf_counter() - start


def validate(*, run: Path, dataset: data_mod.Dataset, kinds: list[str] | None = None,
             overrides: dict | None = None, batch_size: int = 256, threads: int | None = None,
             unsafe: bool = False, progress: Progress = NULL, runners: dict[str, Runner] | None = None) -> dict:
    """Validate the run's artifacts (all, or `kinds`) against its reference model on `dataset`'s test
    split. Writes validation.json into the run and returns the same report. `runners` lets a caller
    substitute loaded runners by kind (tests use it to inject a deliberately broken one)."""
    man = mf.read_manifest(run)
    available = list(man["artifacts"])
    kinds = kinds or available
    if not kinds:
        raise UsageError(f"{run} has no exported artifacts to validate",
                         hint="run `resexport convert` first")
    missing = [k for k in kinds if k not in available]
    if missing:
        raise UsageError(f"{run} has no artifact {', '.join(missing)}",
                         hint=f"available: {', '.join(available) or 'none'}")
    if batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    x, y = dataset.x_test, dataset.y_test
    ref, ref_info = reference_outputs(run, man, dataset, batch_size=batch_size, threads=threads, unsafe=unsafe,
                                      progress=progress)
    ref_acc = float((ref.argmax(1) == y).mean())
    results = []
    for name in kinds:
        kind = formats.get(name)
        entry = man["artifacts"][name]
        runner = (runners or {}).get(name) or load_runner(run / entry["file"], kind=name, threads=threads)
        check_input_matches(run / entry["file"], runner.input_shape, dataset.input_shape,
                            classes=dataset.num_classes, model_classes=runner.num_outputs)
        out, seconds = run_runner(runner, x, batch_size, progress, name)
        metrics = compare(ref, out, y, dataset.class_names)
        metrics["change_points"] = 100 * (metrics["accuracy"] - ref_acc)
        gates = kind.gates.override(**(overrides or {}))
        failures = check_gates(metrics, gates)
        unchanged = sha256_file(run / entry["file"]) == entry.get("sha256")
        if not unchanged:
            log.warning("%s changed since it was converted (sha256 differs from the manifest)", entry["file"])
        results.append({"kind": name, "file": entry["file"], "bytes": entry.get("bytes"), **metrics,
                        "matches_manifest_sha256": unchanged,
                        "gates": asdict(gates), "passed": not failures, "failures": failures,
                        **({"hint": f"run `resexport inspect --artifact {name}` to see which layers lose most"}
                           if failures and kind.needs_calibration else {}),
                        "seconds": round(seconds, 2), "runner": runner.info})
        runner.close()
    report = {
        "run": str(run), "created": mf.now_iso(),
        "dataset": {**dataset.describe(), "split": "test", "samples": int(len(y))},
        "reference": {**ref_info, "accuracy": ref_acc},
        "artifacts": results,
        "passed": all(r["passed"] for r in results),
    }
    write_json_atomic(run / VALIDATION_FILE, report)
    return report


def failure_summary(report: dict) -> str:
    return "; ".join(f"{r['kind']}: {', '.join(r['failures'])}" + (f" ({r['hint']})" if r.get("hint") else "")
                     for r in report["artifacts"] if not r["passed"])
