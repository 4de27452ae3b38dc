"""The convert stage: choose kinds from the formats table, export each from the run's reference
model, and record every artifact in the manifest. The exporters themselves are pure functions in
exporter/export/; this module owns the run-folder bookkeeping around them."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from exporter import data as data_mod
from exporter import formats
from exporter import manifest as mf
from exporter.errors import OutputExistsError, UsageError
from exporter.export.source import ExportSource, check_input_matches, check_weights_finite
from exporter.fsutil import sha256_file, sha256_path
from exporter.progress import NULL, Progress
from exporter.runtimes import load_runner

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION = 500


def import_model(model_path: Path, *, run: Path | None, dataset: data_mod.Dataset, force: bool = False,
                 unsafe: bool = False) -> Path:
    """Make a run folder around an existing model (.keras, legacy .h5, or SavedModel folder).
    The model is checked (loads, fits the dataset) before anything is written, then copied in."""
    from exporter.train import staged_run

    model_path = Path(model_path)
    if not model_path.exists():
        raise UsageError(f"--model {model_path} does not exist")
    row = formats.kind_for_path(model_path)
    if row.family not in ("keras", "savedmodel"):
        raise UsageError(f"--model takes a .keras, .h5 or SavedModel folder, not a {row.family} artifact",
                         hint="to check an exported file, use `resexport validate`")
    reference = load_runner(model_path, kind=row.name, unsafe=unsafe)
    check_input_matches(model_path, reference.input_shape, dataset.input_shape,
                        classes=dataset.num_classes, model_classes=reference.num_outputs)
    if row.family == "keras":  # NaN/Inf weights: refuse before a run folder is made around them
        check_weights_finite(reference.model, model_path)
    reference.close()
    stem = model_path.stem if model_path.is_file() else model_path.name
    run = Path(run) if run else mf.artifacts_root() / mf.new_run_name(f"{stem}-import", dataset.name)
    target = row.filename if row.family == "savedmodel" else f"model{model_path.suffix.lower()}"
    with staged_run(run, force=force) as tmp:
        if model_path.is_dir():
            shutil.copytree(model_path, tmp / target)
        else:
            shutil.copy2(model_path, tmp / target)
        mf.write_manifest(tmp, {
            "created": mf.now_iso(),
            "model": {"name": stem, "file": target, "format": row.family, "imported_from": str(model_path),
                      "sha256": sha256_path(tmp / target), "input_shape": list(dataset.input_shape),
                      "num_classes": dataset.num_classes, "input_name": "image"},
            "dataset": dataset.describe(), "versions": mf.library_versions(), "artifacts": {}})
    return run


FALLBACK_CHOICES = ("none", "auto")


def _int8_key(kind: formats.ArtifactKind, fallback: str, target_cpu: str) -> dict:
    """What, besides model and calibration, an int8 artifact was made with (compared by _up_to_date)."""
    if not kind.needs_calibration:
        return {}
    key = {"fallback": fallback}
    if kind.family == "onnx":
        from exporter.export.onnx import int8_target

        key["target_cpu"] = {k: v for k, v in int8_target(target_cpu).items() if k != "requested"}
    return key


# what onnx-int8 was made with before --target-cpu existed
_LEGACY_ORT_INT8 = {"target_cpu": "avx2", "activation_type": "QInt8", "weight_type": "QInt8", "reduce_range": True,
                    "per_channel": True}


def _entry_int8_key(kind: formats.ArtifactKind, entry: dict) -> dict:
    if not kind.needs_calibration:
        return {}
    key = {"fallback": entry.get("fallback", "none")}
    if kind.family == "onnx":
        key["target_cpu"] = {k: v for k, v in (entry.get("target_cpu") or _LEGACY_ORT_INT8).items() if k != "requested"}
    return key


def _up_to_date(run: Path, kind: formats.ArtifactKind, entry: dict | None, source_sha: str, calib_hash,
                int8_key: dict | None = None) -> bool:
    out = run / kind.filename
    return bool(entry and out.is_file() and entry.get("source_sha256") == source_sha
                and entry.get("sha256") == sha256_file(out)
                and (not kind.needs_calibration or entry.get("calibration", {}).get("indices_sha256") == calib_hash)
                and _entry_int8_key(kind, entry) == (int8_key or {}))


def convert(*, run: Path, kinds: list[formats.ArtifactKind], dataset: data_mod.Dataset,
            calib_samples: int = DEFAULT_CALIBRATION, force: bool = False, unsafe: bool = False,
            fallback: str = "none", target_cpu: str = "auto", progress: Progress = NULL) -> dict:
    """Export `kinds` from the run's reference model. Returns {kind: 'written'|'up to date'}.

    int8 kinds: `fallback` 'auto' keeps the fewest layers in float32 that make the artifact pass its
    gate on a held-out training slice (exporter.inspect.fallback_search; recorded as float_layers);
    `target_cpu` (auto|vnni|avx2) picks ONNX Runtime's int8 settings (export/onnx.ORT_INT8_TARGETS).

    Existing artifacts made from the same model (and calibration) are kept; ones made from something
    else are replaced only with force. Each artifact is written atomically and the manifest updated
    after each, so an interruption keeps everything finished so far consistent."""
    if fallback not in FALLBACK_CHOICES:
        raise UsageError(f"unknown --fallback '{fallback}'", hint=f"choose one of: {', '.join(FALLBACK_CHOICES)}")
    keys = {k.name: _int8_key(k, fallback, target_cpu) for k in kinds}  # also checks --target-cpu
    man = mf.read_manifest(run)
    ref_path = run / man["model"]["file"]
    source_sha = sha256_path(ref_path)
    calibration = None
    if any(k.needs_calibration for k in kinds):
        calibration = data_mod.calibration_set(dataset, calib_samples)
    calib_hash = calibration.hash if calibration else None

    status: dict[str, str] = {}
    conflicts = []
    for kind in kinds:
        entry = man["artifacts"].get(kind.name)
        if _up_to_date(run, kind, entry, source_sha, calib_hash, keys[kind.name]) and not force:
            status[kind.name] = "up to date"
        elif (run / kind.filename).exists() and not force:
            conflicts.append(kind.filename)
    if conflicts:
        raise OutputExistsError(f"{run}: {', '.join(conflicts)} already exist and were not made from the "
                                "current model, calibration and int8 settings (--fallback, --target-cpu)",
                                hint="pass --force to replace them")
    todo = [k for k in kinds if k.name not in status]
    if not todo:
        return status

    source = ExportSource(ref_path, man["model"].get("format", "keras"), tuple(dataset.input_shape), unsafe=unsafe)
    try:
        if source.family == "keras":
            model = source.keras_model()
            check_input_matches(ref_path, model.input_shape[1:], dataset.input_shape,
                                classes=dataset.num_classes, model_classes=model.output_shape[-1])
            source.check_weights_finite()
        with progress.task("converting", total=len(todo)) as task:
            for kind in todo:
                task.describe(kind.name)
                out = run / kind.filename
                start = time.perf_counter()
                if kind.needs_calibration and fallback == "auto":
                    from exporter.inspect import fallback_search

                    details = fallback_search(kind=kind, source=source, out=out, calibration=calibration,
                                              dataset=dataset, man=man, target_cpu=target_cpu)
                elif kind.needs_calibration:
                    details = {"fallback": "none", "float_layers": [],
                               **kind.load_exporter()(source, out, calibration, target_cpu=target_cpu)}
                else:
                    details = kind.load_exporter()(source, out, None)
                runner = load_runner(out, kind=kind.name)
                entry = {
                    "kind": kind.name, "file": kind.filename, "family": kind.family, "quantize": kind.quantize,
                    "bytes": out.stat().st_size, "sha256": sha256_file(out), "source_sha256": source_sha,
                    **runner.io_details(), "precision": runner.info.get("precision"),
                    **({"calibration": calibration.describe()} if kind.needs_calibration else {}),
                    "converter_versions": mf.library_versions(("tensorflow", "tf2onnx", "onnx", "onnxruntime", "keras")),
                    **details, "seconds": round(time.perf_counter() - start, 2), "created": mf.now_iso(),
                }
                runner.close()
                man["artifacts"][kind.name] = entry
                mf.write_manifest(run, man)
                status[kind.name] = "written"
                log.info("wrote %s (%d bytes)", out, entry["bytes"])
                task.advance()
    finally:
        source.cleanup()
    return status
