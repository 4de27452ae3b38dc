"""The convert stage: choose kinds from the formats table, export each from the run's reference
model, and record every artifact in the manifest. The exporters themselves are pure functions in
exporter/export/; this module owns the run-folder bookkeeping around them."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from exporter import data as data_mod
from exporter import formats
from exporter import manifest as mf
from exporter import outputs
from exporter.errors import InputError, MissingRuntimeError, OutputError, OutputExistsError, ResexportError, UsageError
from exporter.export.source import ExportSource, check_weights_finite
from exporter.fsutil import sha256_file, sha256_path
from exporter.progress import NULL, Progress
from exporter.runtimes import load_runner
from exporter.validate import REFERENCE_BATCH_TOLERANCE, batch_invariance, batch_problem, batch_sample

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION = 500


def import_model(model_path: Path, *, run: Path | None, dataset: data_mod.Dataset | None = None,
                 data: str | None = None, scale: str | None = None, test_split: float | None = None,
                 calib_data=None, data_dir=None, force: bool = False, unsafe: bool = False) -> Path:
    """Make a run folder around an existing model (.keras, legacy .h5, or SavedModel folder).
    The model is checked (loads, fits the dataset) before anything is written, then copied in.

    The data is `dataset`, or opened from `data` (a built-in name, an image folder or an .npz) with
    the preprocessing the model needs: its input size and channels, and `scale`. That preprocessing
    is recorded in the manifest and used by every later stage."""
    from exporter import rundata
    from exporter.train import staged_run

    model_path = Path(model_path)
    if not model_path.exists():
        raise UsageError(f"--model {model_path} does not exist")
    row = formats.kind_for_path(model_path)
    if row.family not in ("keras", "savedmodel"):
        raise UsageError(f"--model takes a .keras, .h5 or SavedModel folder, not a {row.family} artifact",
                         hint="to check an exported file, use `resexport validate`")
    reference = load_runner(model_path, kind=row.name, unsafe=unsafe)
    if dataset is None:
        builtin = data is None or data_mod.is_builtin_name(str(data))
        pp = None if builtin and scale in (None, "unit") else \
            rundata.model_preprocessing(reference.input_shape, scale, model_path)  # built-ins as before unless scaled
        dataset = rundata.open_data(data, pp=pp, data_dir=data_dir, test_split=test_split, calib_data=calib_data)
    pp = dataset.preprocessing or rundata.model_preprocessing(dataset.input_shape, "unit", model_path)
    reference.check_fits(dataset.input_shape, dataset.num_classes)
    if row.family == "keras":  # NaN/Inf weights: refuse before a run folder is made around them
        check_weights_finite(reference.model, model_path)
        if scale is not None and scale != "raw" and _has_rescaling(reference.model):
            log.warning("%s already has a Rescaling layer and --scale %s scales its inputs too: they are scaled "
                        "twice (pass --scale raw if the model expects 0..255 pixels)", model_path, scale)
    output, detected_by = _detect_output(getattr(reference, "model", None), reference, dataset)
    batch = batch_invariance(reference, dataset, batch_size=64, convention=output,
                             tolerance=REFERENCE_BATCH_TOLERANCE)
    reference.close()
    if not batch["passed"]:  # e.g. a SavedModel that Keras' model.export traced in training mode
        raise InputError(f"{model_path}: the model's {batch_problem(batch)}",
                         hint="its Python is gone, so it cannot be re-traced for inference: export it again "
                              "from the Keras model, or import the .keras file")
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
                      "num_classes": dataset.num_classes, "input_name": "image",
                      "output": output, "output_detected_by": detected_by},
            "dataset": dataset.describe(), "preprocessing": pp.to_dict(),
            "versions": mf.library_versions(), "artifacts": {}})
    return run


def _detect_output(model, runner, dataset) -> tuple[str, str]:
    """Whether the model outputs probabilities or logits: its final activation where it has one,
    else the values it gives on a few test images."""
    sample = runner.predict(dataset.x_test[batch_sample(dataset)[:64]])
    return outputs.detect(model, sample) if model is not None else outputs.detect_from_values(sample)


def _walk_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _walk_layers(layer)


def _has_rescaling(model) -> bool:
    return any(type(layer).__name__ in ("Rescaling", "Normalization") for layer in _walk_layers(model))


def deployment_info(pp, class_names) -> dict:
    """What a deployer needs beside the model file (ONNX metadata_props, preprocessing.json)."""
    d = pp.to_dict()
    return {"class_names": list(class_names), "input_size": d["size"], "channels": d["channels"],
            "color": d["color"], "layout": d["layout"], "scale": d["scale"], "input_range": d["input_range"],
            "mean": d["mean"], "std": d["std"], "formula": d["formula"], "resize": d["resize"]}


def write_deployment_files(run: Path, info: dict) -> None:
    """labels.txt (one class per line, in output order) and preprocessing.json beside the artifacts."""
    from exporter.fsutil import write_bytes_atomic, write_json_atomic

    labels = "".join(f"{name}\n" for name in info["class_names"]).encode()
    if not (run / LABELS_FILE).is_file() or (run / LABELS_FILE).read_bytes() != labels:
        write_bytes_atomic(run / LABELS_FILE, labels)
    write_json_atomic(run / PREPROCESSING_FILE, info)


LABELS_FILE = "labels.txt"
PREPROCESSING_FILE = "preprocessing.json"


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


CONVERTER_PACKAGES = ("tensorflow", "tf2onnx", "onnx", "onnxruntime", "keras")


def artifact_inputs(kind: formats.ArtifactKind, source_sha: str, calibration, deploy: dict, int8: dict) -> dict:
    """What one artifact depends on: the stage key's inputs (the model, the preprocessing and class
    names it carries, the calibration set and int8 settings (--fallback, --target-cpu) for int8, the
    converters' versions)."""
    return {"kind": kind.name, "model_sha256": source_sha, "deployment": deploy,
            "calibration": calibration.describe() if kind.needs_calibration and calibration else None,
            "int8": int8, "converters": mf.library_versions(CONVERTER_PACKAGES)}


def _up_to_date(run: Path, kind: formats.ArtifactKind, entry: dict | None, key: str) -> bool:
    out = run / kind.filename
    return bool(entry and out.is_file() and entry.get("inputs_key") == key and entry.get("sha256") == sha256_file(out))


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
    int8_keys = {k.name: _int8_key(k, fallback, target_cpu) for k in kinds}  # also checks --target-cpu
    man = mf.read_manifest(run)
    ref_path = run / man["model"]["file"]
    source_sha = sha256_path(ref_path)
    calibration = None
    if any(k.needs_calibration for k in kinds):
        calibration = data_mod.calibration_set(dataset, calib_samples)
    from exporter import rundata

    pp = rundata.run_preprocessing(man) or dataset.preprocessing or \
        rundata.model_preprocessing(dataset.input_shape, "unit", ref_path)
    if "preprocessing" not in man or "content_hash" not in man["dataset"]:
        man["preprocessing"] = man.get("preprocessing") or pp.to_dict()
        man["dataset"]["content_hash"] = dataset.content_hash
        mf.write_manifest(run, man)
    deploy = deployment_info(pp, dataset.class_names)
    write_deployment_files(run, deploy)
    keys = {kind.name: mf.inputs_key(artifact_inputs(kind, source_sha, calibration, deploy, int8_keys[kind.name]))
            for kind in kinds}

    status: dict[str, str] = {}
    conflicts = []
    for kind in kinds:
        entry = man["artifacts"].get(kind.name)
        if _up_to_date(run, kind, entry, keys[kind.name]) and not force:
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

    source = ExportSource(ref_path, man["model"].get("format", "keras"), tuple(dataset.input_shape), unsafe=unsafe,
                          num_classes=dataset.num_classes)
    try:
        if source.family == "keras":
            model = source.keras_model()
            from exporter.runtimes.keras import KerasRunner

            probe = KerasRunner(ref_path, model, device="cpu", mode="compiled")
            probe.check_fits(dataset.input_shape, dataset.num_classes)
            source.check_weights_finite()
            if man["model"].get("output") not in outputs.CONVENTIONS:  # a run made before it was recorded
                man["model"]["output"], man["model"]["output_detected_by"] = _detect_output(model, probe, dataset)
                mf.write_manifest(run, man)
        with progress.task("converting", total=len(todo)) as task:
            for kind in todo:
                task.describe(kind.name)
                try:
                    entry = _export_one(kind, run=run, source=source, calibration=calibration, dataset=dataset,
                                        man=man, fallback=fallback, target_cpu=target_cpu, deploy=deploy,
                                        key=keys[kind.name], source_sha=source_sha)
                except (UsageError, OutputError, MissingRuntimeError, KeyboardInterrupt):
                    raise  # the user's flags, the disk, the environment: not this kind's own failure
                except Exception as exc:  # one kind that cannot be made never takes the others with it
                    reason = exc.one_line() if isinstance(exc, ResexportError) else f"{type(exc).__name__}: {exc}"
                    reason = " ".join(reason.split())
                    log.warning("%s could not be made: %s", kind.name, reason, exc_info=log.isEnabledFor(logging.DEBUG))
                    man.setdefault("export_failures", {})[kind.name] = {"reason": reason, "created": mf.now_iso(),
                                                                        "inputs_key": keys[kind.name]}
                    mf.write_manifest(run, man)
                    status[kind.name] = f"failed: {reason}"
                    task.advance()
                    continue
                man["artifacts"][kind.name] = entry
                man.get("export_failures", {}).pop(kind.name, None)
                if "export_failures" in man and not man["export_failures"]:
                    del man["export_failures"]
                mf.write_manifest(run, man)
                status[kind.name] = "written"
                log.info("wrote %s (%d bytes)", run / kind.filename, entry["bytes"])
                task.advance()
    finally:
        source.cleanup()
    return status


def _export_one(kind: formats.ArtifactKind, *, run: Path, source: ExportSource, calibration, dataset, man: dict,
                fallback: str, target_cpu: str, deploy: dict, key: str, source_sha: str) -> dict:
    """Export one kind (through the exporters' conformance gate) and return its manifest entry."""
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
    if kind.family == "onnx":  # after export, so the exporters stay pure and deterministic
        from exporter.export.onnx import write_metadata

        write_metadata(out, {k: json.dumps(v) if not isinstance(v, str) else v for k, v in deploy.items()})
    if "conformance" not in details:  # a writer that bypassed the exporters' gate: check the file now
        from exporter.export.conformance import check

        details["conformance"] = check(kind.name, out, input_shape=source.input_shape, num_classes=source.num_classes)
    runner = load_runner(out, kind=kind.name)
    entry = {
        "kind": kind.name, "file": kind.filename, "family": kind.family, "quantize": kind.quantize,
        "bytes": out.stat().st_size, "sha256": sha256_file(out), "source_sha256": source_sha,
        "inputs_key": key,
        **runner.io_details(), "precision": runner.info.get("precision"),
        **({"calibration": calibration.describe()} if kind.needs_calibration else {}),
        "converter_versions": mf.library_versions(CONVERTER_PACKAGES),
        **details, "seconds": round(time.perf_counter() - start, 2), "created": mf.now_iso(),
    }
    runner.close()
    return entry
