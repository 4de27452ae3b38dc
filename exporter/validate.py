"""Validation: one loop over any runners against the reference runner, on the full test set.

It never asks which format it is checking: every artifact is a Runner, gates come from the
formats table (or the caller's overrides).

Besides the test-set metrics, every runner (the reference included) goes through the
batch-invariance check: a fixed sample of test images run one at a time, in the validation batch,
and in that batch shuffled must give the same outputs. A model traced in training mode
(BatchNormalization on batch statistics, augmentation at inference) fails it at once, where the
test-set metrics at one batch size could look fine. Outputs are compared as probabilities (a
logits model's through a softmax), so one threshold means the same for both conventions."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from exporter import data as data_mod
from exporter import formats
from exporter import manifest as mf
from exporter import outputs as out_mod
from exporter.errors import InputError, MissingRuntimeError, ModelFileError, ResexportError, UsageError
from exporter.fsutil import atomic_path, sha256_file, sha256_path, write_json_atomic
from exporter.progress import NULL, Progress
from exporter.checks import REFERENCE_BATCH_TOLERANCE, batch_invariance, batch_problem
from exporter.run import VALIDATION_FILE, Run
from exporter.runtimes import Runner, load_runner
from exporter.stats import wilson_interval

log = logging.getLogger(__name__)

REFERENCE_CACHE = "reference_outputs.npz"


BATCH_SIZE = 256  # images per inference call (exporter.api.ValidateOptions.batch_size)


def reference_outputs(run: Run, dataset, *, batch_size, threads, unsafe, progress):
    """The reference model's outputs on the test set, and a description of where they came from
    (including its batch-invariance check).

    Computed with the reference runner and cached in the run (keyed by the model's sha256 and the
    test set's hash). Where the reference cannot be run (an edge box with no Keras/TensorFlow),
    the cache is used instead, if it matches. A reference whose outputs depend on the batch is bad
    input (InputError): nothing could be validated against it."""
    ref_kind, ref_path = run.model_format, run.model_path
    model_sha = sha256_path(ref_path) if ref_path.exists() else run.recorded_model_sha256
    data_hash = dataset.content_hash
    try:
        runner = load_runner(ref_path, kind=ref_kind, threads=threads, unsafe=unsafe)
    except MissingRuntimeError as exc:
        cache = run / REFERENCE_CACHE
        if cache.is_file():
            with np.load(cache) as npz:
                if str(npz["model_sha256"]) == model_sha and str(npz["test_hash"]) == data_hash:
                    log.info("reference runtime missing (%s); using cached reference outputs", exc.message)
                    batch = json.loads(str(npz["batch_invariance"])) if "batch_invariance" in npz else None
                    return npz["outputs"], {"kind": ref_kind, "file": run.model_file, "source": "cache",
                                            "seconds": None, "runner": {"engine": "cached outputs", "device": "-"},
                                            "batch_invariance": batch}
        raise MissingRuntimeError(f"{exc.message}; and no matching cached reference outputs in {run}",
                                  hint=f"validate once where Keras runs (it caches {REFERENCE_CACHE}), or "
                                       f"{exc.hint}") from exc
    runner.check_fits(dataset.input_shape, dataset.num_classes)
    ref, seconds = run_runner(runner, dataset.x_test, batch_size, progress, f"reference ({ref_kind})")
    if not np.all(np.isfinite(ref)):
        raise ModelFileError(f"{ref_path}: the reference model outputs NaN or Inf",
                             hint="the model is broken (diverged training?); retrain it")
    convention = output_convention(run, ref)
    batch = batch_invariance(runner, dataset, batch_size=batch_size, convention=convention,
                             tolerance=REFERENCE_BATCH_TOLERANCE)
    runner.close()
    if not batch["passed"]:
        raise InputError(f"{ref_path}: the reference model's {batch_problem(batch)}",
                         hint="it was probably exported or traced in training mode (e.g. Keras' model.export "
                              "of a model with Resizing or Random* layers); import the .keras model instead")
    with atomic_path(run / REFERENCE_CACHE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, outputs=ref, model_sha256=model_sha, test_hash=data_hash,
                     batch_invariance=json.dumps(batch))
    return ref, {"kind": ref_kind, "file": run.model_file, "source": "computed",
                 "seconds": round(seconds, 2), "runner": runner.info, "batch_invariance": batch}


def output_convention(run: Run, ref: np.ndarray) -> str:
    """The manifest's record of what the model outputs; for runs made before it was recorded, the
    reference's values decide."""
    convention = run.output
    if convention in out_mod.CONVENTIONS:
        return convention
    return out_mod.detect_from_values(ref[:256])[0]


# ------------------------------------------------------------------ what the reference can prove

def uninformative_reasons(ref_probs: np.ndarray, labels: np.ndarray, class_names, near_ties_percent: float) -> list[str]:
    """Why agreement with this reference would prove little: it predicts one class for most images,
    scores near chance, or is unsure of most images."""
    reasons = []
    n = len(ref_probs)
    if not n:
        return reasons
    pred = ref_probs.argmax(1)
    counts = np.bincount(pred, minlength=len(class_names))
    top = int(counts.argmax())
    if counts[top] > n / 2:
        name = class_names[top] if top < len(class_names) else str(top)
        reasons.append(f"the reference predicts '{name}' for {100 * counts[top] / n:.0f}% of the test images")
    chance = 100 / max(len(class_names), 1)
    acc = 100 * float((pred == labels).mean())
    if acc <= chance + 2:
        reasons.append(f"the reference scores {acc:.2f}%, within 2 points of chance ({chance:.1f}%)")
    if near_ties_percent > 50:
        reasons.append(f"{near_ties_percent:.0f}% of the test images are near-ties for the reference")
    return reasons


def _likely_causes(dataset) -> str:
    """What to check first when the reference itself scores near chance: the input it was fed."""
    pp = dataset.preprocessing
    fed = (f"it was fed {pp.height}x{pp.width} {'RGB' if pp.channels == 3 else 'grayscale'} images scaled "
           f"{pp.scale} ({pp.to_dict()['formula']}; {pp.detected_by or 'as recorded'})" if pp is not None
           else f"it was fed the built-in {dataset.name} images scaled 0..1")
    return (f"Check the input first: {fed}. Likely causes: the wrong input scale (pass --scale at convert "
            "--model: unit, symmetric, raw or imagenet), the wrong colour order, or class folders in another "
            "order than the model's outputs; only then train the model further.")


NEAR_TIE_MARGIN = 0.05  # reference top-1 minus top-2 probability


def compare(ref: np.ndarray, out: np.ndarray, labels: np.ndarray, class_names,
            convention: str = out_mod.PROBABILITIES) -> dict:
    """Metrics of one artifact's outputs against the reference's, both (N, classes) as the model
    outputs them. Differences are taken between probabilities (softmax of logits); the raw
    difference is reported beside them."""
    finite = bool(np.all(np.isfinite(out)))
    pred, ref_pred = out.argmax(1), ref.argmax(1)
    raw = np.abs(out - ref) if finite else np.full_like(out, np.inf)
    ref_p = out_mod.to_probabilities(ref, convention)
    diff = np.abs(out_mod.to_probabilities(out, convention) - ref_p) if finite else np.full_like(out, np.inf)
    ref = ref_p
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
        "raw_max_abs_diff": float(raw.max()) if raw.size else 0.0,
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
    # On a sample (--limit) the agreement gate applies to its 95% interval: fail only if even the upper bound misses.
    if gates.min_agreement is not None and metrics.get("agreement_ci95", [0, metrics["agreement"]])[1] < gates.min_agreement:
        rest = metrics.get("agreement_without_near_ties")
        note = (f" ({rest:.2f}% without the {metrics['near_ties_percent']:.1f}% near-ties, where the reference's top two "
                f"classes are < {NEAR_TIE_MARGIN} apart)") if rest is not None and metrics["near_ties_percent"] > 0 else ""
        ci = (f" (95% interval up to {metrics['agreement_ci95'][1]:.2f}% on this sample)"
              if "agreement_ci95" in metrics else "")
        failures.append(f"agreement {metrics['agreement']:.2f}%{ci} < {gates.min_agreement}%{note}")
    if gates.max_drop is not None and -metrics["change_points"] > gates.max_drop:
        failures.append(f"accuracy drop {-metrics['change_points']:.2f} pt > {gates.max_drop} pt")
    if gates.max_abs_diff is not None and metrics["max_abs_diff"] > gates.max_abs_diff:
        failures.append(f"max |diff| {metrics['max_abs_diff']:.2e} > {gates.max_abs_diff:.0e}")
    batch = metrics.get("batch_invariance")
    if batch is not None and not batch["passed"]:
        failures.append(batch_problem(batch))
    return failures


def run_runner(runner: Runner, x: np.ndarray, batch_size: int, progress: Progress, label: str) -> tuple[np.ndarray, float]:
    with progress.task(label, total=len(x)) as task:
        start = time.perf_counter()
        out = runner.predict_batched(x, batch_size, task)
    return out, time.perf_counter() - start


def validation_inputs(run: Run, dataset, kinds: list[str], batch_size: int, overrides: dict | None,
                      targets: list[tuple[str, str]] | None = None) -> dict:
    """What a validation depends on: the stage key's inputs (the reference model and every artifact
    by sha256, the test set by content, the gates and batch size)."""
    ref_path = run.model_path
    return {"model_sha256": sha256_path(ref_path) if ref_path.exists() else run.recorded_model_sha256,
            "artifacts": {k: _sha_or_none(run.artifact_path(k)) for k in kinds},
            "qat_models": {k: _sha_or_none(run / run.artifact(k)["qat"]["model_file"]) for k in kinds
                           if (run.artifact(k).get("qat") or {}).get("model_file")},
            "test_set": dataset.content_hash, "batch_size": batch_size,
            "overrides": {k: v for k, v in (overrides or {}).items() if v is not None},
            "gates": {k: asdict(formats.get(k).gates) for k in kinds},
            **({"runtimes": [formats.target_label(k, r) for k, r in targets]} if targets else {})}


def _sha_or_none(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def same_file(own: np.ndarray, other: np.ndarray, own_runtime: str, convention: str) -> dict:
    """One file on two runtimes: top-1 agreement (and without the own runtime's near-ties) and the largest
    difference of probabilities. Reported, not gated: the gates compare each runtime with the reference."""
    a, b = out_mod.to_probabilities(own, convention), out_mod.to_probabilities(other, convention)
    top2 = np.sort(a, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= NEAR_TIE_MARGIN
    same = a.argmax(1) == b.argmax(1)
    return {"runtime": own_runtime, "top1_agreement": round(100 * float(same.mean()), 4),
            "top1_agreement_without_near_ties": round(100 * float(same[clear].mean()), 4) if clear.any() else None,
            "max_abs_diff": float(np.abs(a - b).max()) if len(a) else 0.0}


@dataclass
class _Context:
    """What every target of one validation is checked against and with."""

    run: Run
    dataset: object
    ref: np.ndarray
    ref_acc: float
    convention: str
    batch_size: int
    threads: int | None
    overrides: dict
    runners: dict
    progress: Progress
    qat_refs: dict = field(default_factory=dict)
    own_outputs: dict = field(default_factory=dict)  # each kind's outputs on its family's own runtime


def _kinds_to_check(run: Run, kinds: list[str] | None) -> tuple[list[str], list[str]]:
    """The kinds to run (all of the run's, or those asked for), and those convert could not make (and has
    no older file of), which get a failed verdict with their reason."""
    available = list(run.artifacts)
    requested = bool(kinds)
    kinds = kinds or available
    if not kinds and not run.export_failures:
        raise UsageError(f"{run} has no exported artifacts to validate",
                         hint="run `resexport convert` first")
    failed_exports = [k for k in run.export_failures if k not in available]
    requested_failed = [k for k in (kinds if requested else failed_exports) if k in failed_exports]
    kinds = [k for k in kinds if k not in requested_failed]
    missing = [k for k in kinds if k not in available]
    if missing:
        raise UsageError(f"{run} has no artifact {', '.join(missing)}",
                         hint=f"available: {', '.join(available) or 'none'}")
    return kinds, requested_failed


def _check_target(ctx: _Context, name: str, runtime: str) -> dict:
    """One (kind, runtime): its metrics against the reference, gates and verdict; a file that cannot run is
    this target's failed verdict (unless the user changed the file: then it is their bad input)."""
    run, dataset, x, y = ctx.run, ctx.dataset, ctx.dataset.x_test, ctx.dataset.y_test
    kind, label = formats.get(name), formats.target_label(name, runtime)
    entry = run.artifact(name)
    gates = kind.gates.override(**ctx.overrides)
    try:
        runner = ctx.runners.get(label) or load_runner(run.artifact_path(name), kind=name, runtime=runtime,
                                                       threads=ctx.threads)
        runner.check_fits(dataset.input_shape, dataset.num_classes)
        out, seconds = run_runner(runner, x, ctx.batch_size, ctx.progress, label)
        metrics = compare(ctx.ref, out, y, dataset.class_names, ctx.convention)
        metrics["change_points"] = 100 * (metrics["accuracy"] - ctx.ref_acc)
        qat_ref, qat_problem = qat_reference(run, entry, x, ctx.batch_size, ctx.qat_refs)
        metrics.update(qat_metrics(run, entry, metrics, qat_ref, out, y, dataset.class_names, ctx.convention))
        if qat_problem and not retrained(entry):  # judged against the original: the fine-tuned model
            metrics["fine_tuned_unavailable"], qat_problem = qat_problem, None  # is only reported
        if dataset.subset.get("test"):
            metrics.update(sample_intervals(out, ctx.ref, y))
        metrics["batch_invariance"] = batch_invariance(runner, dataset, batch_size=ctx.batch_size,
                                                       convention=ctx.convention, tolerance=gates.max_batch_diff)
        if runtime == kind.runtime:
            ctx.own_outputs[name] = out
        elif name in ctx.own_outputs:  # the same file on another runtime (an SDK, OpenVINO): how alike they run
            metrics["same_file"] = same_file(ctx.own_outputs[name], out, kind.runtime, ctx.convention)
    except (MissingRuntimeError, UsageError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if runtime == kind.runtime and _sha_or_none(run.artifact_path(name)) != entry.get("sha256"):
            raise  # the file changed since we wrote it: the user's bad input, as before
        # the file is ours, exactly as convert wrote it, or a runtime beside its own cannot take it: this
        # target's failure, the others still get verdicts
        reason = exc.one_line() if isinstance(exc, ResexportError) else f"{type(exc).__name__}: {exc}"
        log.warning("%s could not run: %s", label, reason)
        return {**export_failure_result(name, " ".join(reason.split()), "could not run"),
                "target": label, "runtime": runtime,
                "file": entry["file"], "bytes": entry.get("bytes"), "gates": asdict(gates)}
    failures = check_gates(metrics, gates) + ([qat_problem] if qat_problem else [])
    if kind.needs_calibration:
        metrics["class_shift"] = class_shift(metrics)
    unchanged = sha256_file(run.artifact_path(name)) == entry.get("sha256")
    if not unchanged:
        log.warning("%s changed since it was converted (sha256 differs from the manifest)", entry["file"])
    runner.close()
    return {"kind": name, "target": label, "runtime": runtime, "file": entry["file"],
            "bytes": entry.get("bytes"), **metrics,
            "matches_manifest_sha256": unchanged,
            "gates": asdict(gates), "passed": not failures, "failures": failures,
            **({"hint": f"run `resexport inspect --artifact {name}` to see which layers lose most, or "
                       "`resexport convert --quantize int8 --int8 auto --force` for the cheapest remedy "
                       "that passes (ptq, qat, fallback)"}
               if failures and kind.needs_calibration else {}),
            "seconds": round(seconds, 2), "runner": runner.info}


def validate(*, run: Run | Path, dataset: data_mod.Dataset, kinds: list[str] | None = None,
             overrides: dict | None = None, batch_size: int = BATCH_SIZE, threads: int | None = None,
             unsafe: bool = False, progress: Progress = NULL, runners: dict[str, Runner] | None = None,
             reuse: bool = False, runtimes: list[str] | None = None) -> dict:
    """Validate the run's artifacts (all, or `kinds`) against its reference model on `dataset`'s test
    split, each on every runtime that reads it (or those of `runtimes`: formats.targets). Writes
    validation.json into the run and returns the same report: one row per (kind, runtime), its
    `target` the kind alone on the family's own runtime. `runners` lets a caller substitute loaded
    runners by target (tests use it to inject a deliberately broken one). With
    reuse=True, a validation.json made from the same inputs (its inputs_key) is returned as it is,
    marked "reused"."""
    run = Run.of(run)
    requested = bool(kinds)
    kinds, requested_failed = _kinds_to_check(run, kinds)
    if batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    targets = formats.targets(kinds, runtimes, explicit_kinds=requested)
    kinds = list(dict.fromkeys(k for k, _ in targets))
    inputs = validation_inputs(run, dataset, kinds, batch_size, overrides, targets)
    if requested_failed:
        inputs["export_failures"] = {k: run.export_failures[k] for k in requested_failed}
    key = mf.inputs_key(inputs)
    if reuse and not runners:
        stored = mf.read_json_if(run / VALIDATION_FILE)
        if stored is not None and stored.get("inputs_key") == key:
            return {**stored, "reused": True}
    y = dataset.y_test
    ref, ref_info = reference_outputs(run, dataset, batch_size=batch_size, threads=threads, unsafe=unsafe,
                                      progress=progress)
    convention = output_convention(run, ref)
    ref_acc = float((ref.argmax(1) == y).mean())
    ref_probs = out_mod.to_probabilities(ref, convention)
    ctx = _Context(run=run, dataset=dataset, ref=ref, ref_acc=ref_acc, convention=convention, batch_size=batch_size,
                   threads=threads, overrides=overrides or {}, runners=runners or {}, progress=progress)
    results = [export_failure_result(name, failure["reason"]) for name, failure in run.export_failures.items()
               if name in requested_failed]  # kinds convert could not make: failed verdicts
    results += [_check_target(ctx, name, runtime) for name, runtime in targets]
    near_ties = compare(ref, ref, y, dataset.class_names, convention)["near_ties_percent"]
    reasons = uninformative_reasons(ref_probs, y, dataset.class_names, near_ties)
    warnings = [class_shift_warning(r, run.model_file) for r in results if r.get("class_shift")]
    if reasons:
        warnings.append("this validation proves little: " + "; ".join(reasons)
                        + f" (agreement with such a reference carries little information). {_likely_causes(dataset)}")
    report = {
        "run": str(run), "created": mf.now_iso(), "inputs_key": key, "inputs": inputs,
        "dataset": {**dataset.describe(), "split": "test", "samples": int(len(y)), "content_hash": dataset.content_hash,
                    **({"sample": {**dataset.subset["test"], "intervals": "95% Wilson; the agreement gate fails only "
                                   "if the interval's upper bound is below it"}} if dataset.subset.get("test") else {})},
        "reference": {**ref_info, "accuracy": ref_acc, "output": convention,
                      "near_ties_percent": near_ties},
        "informative": not reasons, "uninformative_reasons": reasons, "warnings": warnings,
        "artifacts": results,
        "passed": all(r["passed"] for r in results),
    }
    write_json_atomic(run / VALIDATION_FILE, report)
    return report


CLASS_SHIFT_POINTS = 5.0  # a warning (not a gate) when an int8 file moves any class's accuracy by more than this,
# in points against the original: a file within the overall gates can still trade one class for another (issue 32:
# a fine-tuned file moved Pullover +27 pt and Coat -17 pt); 5 pt is several times the per-class shifts of PTQ files
# that pass their gates on the seed nets, yet far below the shifts of a retrained model


def class_shift(metrics: dict, threshold: float = CLASS_SHIFT_POINTS) -> dict | None:
    """The class whose accuracy moved most against the original (moved_most), if by more than `threshold`."""
    worst = (metrics.get("moved_most") or [None])[0]
    if worst is None or round(abs(worst["change_points"]), 6) <= threshold:  # exactly the threshold is no shift
        return None
    return {**worst, "threshold_points": threshold}


def class_shift_warning(row: dict, model_file: str) -> str:
    c = row["class_shift"]
    return (f"{row.get('target', row['kind'])}: class '{c['class']}' accuracy moved {c['change_points']:+.1f} pt against "
            f"your model {model_file} (more than {c['threshold_points']:g} pt); per class: validation.json")


def retrained(entry: dict) -> bool:
    """A QAT artifact fine-tuned on the labels (a retrained model, judged against it): --qat-loss labels, and every
    QAT file made before distillation (issue 32), whose record names no loss."""
    qat = entry.get("qat") or {}
    return bool(qat.get("model_file")) and qat.get("loss", "labels") == "labels"


def qat_metrics(run: Run, entry: dict, metrics: dict, qat_ref, out, y, class_names, convention) -> dict:
    """What a QAT artifact's row says besides its metrics against the original: the model it was fine-tuned
    into and its agreement with it (it proves the simulation), and which model the gates compared it with.
    Distilled: gated against the original (the metrics stay as computed). Labels (a retrained model): agreement
    and diffs against the fine-tuned model it became, the drop against the original (issue 20's two claims)."""
    qat = entry.get("qat") or {}
    name = qat.get("model_file")
    if not name:
        return {}
    own = compare(qat_ref, out, y, class_names, convention) if qat_ref is not None else None
    extra = {"fine_tuned_model": name, "qat_loss": qat.get("loss", "labels"),
             "agreement_with_original": metrics["agreement"],
             "agreement_with_fine_tuned": own["agreement"] if own else None}
    kept = (qat.get("selection") or {}).get("kept_step")
    if kept is not None:  # a distilled fine-tuning keeps its best checkpoint (exporter.quantize.qat)
        extra["qat_kept_step"] = [kept, qat.get("steps")]
    stem = (qat.get("float_stem") or {}).get("layers")
    if stem:  # the first layers kept float32 (exporter.quantize.qat.FLOAT_STEM_TRIGGER)
        extra["qat_float_stem"] = len(stem)
    if not retrained(entry):
        return {**extra, "agreement_reference": run.model_file}
    return {**extra, "agreement_reference": name,
            **({k: own[k] for k in ("agreement", "agreement_without_near_ties", "near_ties_percent", "max_abs_diff",
                                    "mean_abs_diff", "raw_max_abs_diff")} if own else {})}


def qat_reference(run: Run, entry: dict, x, batch_size: int, cache: dict) -> tuple[np.ndarray | None, str | None]:
    """(outputs, problem): the outputs of the fine-tuned model a QAT artifact was exported from (the manifest
    entry's qat.model_file), (None, None) for any other artifact. A QAT artifact whose fine-tuned model is
    missing, or is not the one it was exported from (sha256), cannot be judged: (None, the reason), which
    fails it."""
    qat = entry.get("qat") or {}
    name = qat.get("model_file")
    if not name:
        return None, None
    path = run / name
    if not path.is_file():
        return None, f"its fine-tuned model {name} is missing (re-convert with --int8 qat)"
    if qat.get("model_sha256") and sha256_file(path) != qat["model_sha256"]:
        return None, (f"{name} is not the fine-tuned model it was exported from (sha256 differs: a later QAT "
                      "replaced it); re-convert it with --int8 qat --force")
    if name not in cache:
        import keras

        import exporter.quantize.layers  # noqa: F401  registers the QAT layers (imports Keras: not at the top)

        model = keras.saving.load_model(run / name, compile=False)
        cache[name] = model.predict(x, batch_size=batch_size, verbose=0)
    return cache[name], None


def export_failure_result(kind: str, reason: str, what: str = "could not be made") -> dict:
    """The verdict of a kind that has no outputs to compare: it failed, with its reason."""
    return {"kind": kind, "file": formats.get(kind).filename, "bytes": None, "passed": False,
            "failures": [f"{what}: {reason}"], "error": {"stage": "convert" if what == "could not be made" else "run",
                                                        "reason": reason}}


def sample_intervals(out: np.ndarray, ref: np.ndarray, y: np.ndarray) -> dict:
    """95% Wilson intervals of accuracy (fraction) and agreement (percent) on a stratified sample."""
    n = len(y)
    acc = wilson_interval(int((out.argmax(1) == y).sum()), n)
    agree = wilson_interval(int((out.argmax(1) == ref.argmax(1)).sum()), n)
    return {"accuracy_ci95": [acc[0], acc[1]], "agreement_ci95": [100 * agree[0], 100 * agree[1]]}


def failure_summary(report: dict) -> str:
    return "; ".join(f"{r.get('target', r['kind'])}: {', '.join(r['failures'])}" + (f" ({r['hint']})" if r.get("hint") else "")
                     for r in report["artifacts"] if not r["passed"])
