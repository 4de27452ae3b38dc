"""The convert stage: choose kinds from the formats table, export each from the run's reference
model, and record every artifact in the manifest. The exporters themselves are pure functions in
exporter/export/; this module owns the run-folder bookkeeping around them."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from exporter import data as data_mod
from exporter import formats
from exporter import manifest as mf
from exporter import __version__, outputs
from exporter.errors import InputError, MissingRuntimeError, OutputError, OutputExistsError, ResexportError, UsageError
from exporter.export.source import ExportSource, check_weights_finite
from exporter.fsutil import sha256_file, sha256_path, write_bytes_atomic, write_json_atomic
from exporter.progress import NULL, Progress
from exporter.runtimes import load_runner
from exporter.checks import REFERENCE_BATCH_TOLERANCE, batch_invariance, batch_problem, batch_sample
from exporter.run import Run, default_run_path
from exporter.data import choose
from exporter.quantize.make import Int8Session, check_int8
from exporter.runtimes.keras import KerasRunner
from exporter.train import staged_run

log = logging.getLogger(__name__)


class Status(Enum):
    """What convert did with one kind."""

    WRITTEN = "written"
    UP_TO_DATE = "up to date"
    FAILED = "failed"


@dataclass(frozen=True)
class KindOutcome:
    """One kind's status; `reason` says why a FAILED kind could not be made."""

    status: Status
    reason: str | None = None

    @property
    def failed(self) -> bool:
        return self.status is Status.FAILED

    def __str__(self) -> str:  # what the CLI's table and --json show
        return f"failed: {self.reason}" if self.failed else self.status.value


WRITTEN, UP_TO_DATE = KindOutcome(Status.WRITTEN), KindOutcome(Status.UP_TO_DATE)


def import_model(model_path: Path, *, run: Path | None, dataset: data_mod.Dataset | None = None,
                 data: str | None = None, scale: str | None = None, test_split: float | None = None,
                 calib_data=None, data_dir=None, force: bool = False, unsafe: bool = False) -> Run:
    """Make a run folder around an existing model (.keras, legacy .h5, or SavedModel folder).
    The model is checked (loads, fits the dataset) before anything is written, then copied in.

    The data is `dataset`, or opened from `data` (a built-in name, an image folder or an .npz) with
    the preprocessing the model needs (exporter.data.preprocessing.decide: its input size, channels and
    rank; `scale`, else what a Rescaling/Normalization layer at its input expects). That preprocessing
    is recorded in the manifest and used by every later stage."""
    model_path = Path(model_path)
    if not model_path.exists():
        raise UsageError(f"--model {model_path} does not exist")
    row = formats.kind_for_path(model_path)
    if row.family not in ("keras", "savedmodel"):
        raise UsageError(f"--model takes a .keras, .h5 or SavedModel folder, not a {row.family} artifact",
                         hint="to check an exported file, use `resexport validate`")
    reference = load_runner(model_path, kind=row.name, unsafe=unsafe)
    keras_model = getattr(reference, "model", None)
    if dataset is None:
        source = choose.open_source(data, test_split=test_split)  # the user's images, scanned once
        pp = choose.for_model(reference.input_shape, scale=scale, model=keras_model, data=data, source=source,
                              where=str(model_path))
        dataset = choose.open_data(data, pp=pp, data_dir=data_dir, test_split=test_split, calib_data=calib_data,
                                   source=source)
    pp = dataset.preprocessing or choose.for_model(reference.input_shape or dataset.input_shape, scale=None,
                                                   model=keras_model, data=dataset.name, where=str(model_path))
    reference.check_fits(dataset.input_shape, dataset.num_classes)
    if row.family == "keras":  # NaN/Inf weights: refuse before a run folder is made around them
        check_weights_finite(reference.model, model_path)
    output, detected_by = _detect_output(getattr(reference, "model", None), reference, dataset)
    batch = batch_invariance(reference, dataset, batch_size=64, convention=output,
                             tolerance=REFERENCE_BATCH_TOLERANCE)
    reference.close()
    if not batch["passed"]:  # e.g. a SavedModel that Keras' model.export traced in training mode
        raise InputError(f"{model_path}: the model's {batch_problem(batch)}",
                         hint="its Python is gone, so it cannot be re-traced for inference: export it again "
                              "from the Keras model, or import the .keras file")
    stem = model_path.stem if model_path.is_file() else model_path.name
    run = Path(run) if run else default_run_path(f"{stem}-import", dataset.name)
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
    return Run(run)


def _detect_output(model, runner, dataset) -> tuple[str, str]:
    """Whether the model outputs probabilities or logits: its final activation where it has one,
    else the values it gives on a few test images."""
    sample = runner.predict(dataset.x_test[batch_sample(dataset)[:64]])
    return outputs.detect(model, sample) if model is not None else outputs.detect_from_values(sample)


def deployment_info(pp, class_names) -> dict:
    """What a deployer needs beside the model file (ONNX metadata_props, preprocessing.json)."""
    d = pp.to_dict()
    return {"class_names": list(class_names), "input_size": d["size"], "channels": d["channels"],
            "color": d["color"], "layout": d["layout"], "scale": d["scale"], "input_range": d["input_range"],
            "mean": d["mean"], "std": d["std"], "formula": d["formula"], "resize": d["resize"]}


def write_deployment_files(run: Path, info: dict) -> None:
    """labels.txt (one class per line, in output order) and preprocessing.json beside the artifacts."""
    labels = "".join(f"{name}\n" for name in info["class_names"]).encode()
    if not (run / LABELS_FILE).is_file() or (run / LABELS_FILE).read_bytes() != labels:
        write_bytes_atomic(run / LABELS_FILE, labels)
    write_json_atomic(run / PREPROCESSING_FILE, info)


LABELS_FILE = "labels.txt"
PREPROCESSING_FILE = "preprocessing.json"


FALLBACK_CHOICES = ("none", "auto")


def int8_mode(int8: str | None, fallback: str = "none") -> str:
    """--int8 (ptq|qat|fallback|auto), with the older --fallback auto as an alias of --int8 fallback."""
    if fallback not in FALLBACK_CHOICES:
        raise UsageError(f"unknown --fallback '{fallback}'", hint=f"choose one of: {', '.join(FALLBACK_CHOICES)}")
    if fallback == "auto":
        if int8 not in (None, "ptq", "fallback"):
            raise UsageError(f"--fallback auto is --int8 fallback; it cannot be combined with --int8 {int8}",
                             hint="pass only --int8 (ptq|qat|fallback|auto)")
        return "fallback"
    return check_int8(int8 or "ptq")


def _int8_key(kind: formats.ArtifactKind, fallback: str, target_cpu: str, mode: str = "ptq",
              qat_settings: dict | None = None) -> dict:
    """What, besides model and calibration, an int8 artifact was made with (compared by _up_to_date).
    ptq and fallback keep the keys they had before --int8 existed (so their artifacts stay up to date)."""
    if not kind.needs_calibration:
        return {}
    key = {"fallback": "auto" if mode == "fallback" else fallback}
    if mode in ("qat", "auto"):
        key = {"int8": mode, "qat": qat_settings or {}}
    return {**key, **kind.backend().int8_key(target_cpu, mode)}


APP_FORMAT = 1  # bumped when what the backends' app_ready writes changes (files made before are re-made)
CONVERTER_PACKAGES = ("tensorflow", "tf2onnx", "onnx", "onnxruntime", "keras")


def artifact_inputs(kind: formats.ArtifactKind, source_sha: str, calibration, deploy: dict, int8: dict) -> dict:
    """What one artifact depends on: the stage key's inputs (the model, the preprocessing and class
    names it carries, the calibration set and int8 settings (--fallback, --target-cpu) for int8, the
    converters' versions)."""
    return {"kind": kind.name, "model_sha256": source_sha, "deployment": deploy,
            "calibration": calibration.describe() if kind.needs_calibration and calibration else None,
            "int8": int8, "converters": mf.library_versions(CONVERTER_PACKAGES), "app_format": APP_FORMAT}


def _up_to_date(run: Run, kind: formats.ArtifactKind, entry: dict | None, key: str) -> bool:
    out = run / kind.filename
    return bool(entry and out.is_file() and entry.get("inputs_key") == key and entry.get("sha256") == sha256_file(out))


def convert(*, run: Run | Path, kinds: list[formats.ArtifactKind], dataset: data_mod.Dataset,
            calib_samples: int, force: bool = False, unsafe: bool = False, fallback: str = "none",
            target_cpu: str = "auto", progress: Progress = NULL, int8: str | None = None,
            qat_epochs: float | None = None, qat_data=None, qat_loss: str | None = None,
            qat_label_weight: float | None = None, qat_float_stem: str | None = None) -> dict[str, KindOutcome]:
    """Export `kinds` from the run's reference model. Returns {kind: KindOutcome} (written, up to date,
    or failed with its reason: one kind that cannot be made never takes the others with it). Defaults of
    the flags are exporter.api.ConvertOptions'.

    int8 kinds come from exporter.quantize (make.Int8Session) by `int8`: 'ptq' (default: calibration
    only), 'qat' (quantisation-aware fine-tuning, `qat_epochs` passes over the training split, default
    qat.DEFAULT_STEPS steps; distilled from the original by default, `qat_loss='labels'` retrains on the labels;
    `qat_data` a folder or .npz of images, labels optional, to fine-tune on instead of the training split;
    `qat_float_stem` 'auto' or 'off', qat.FLOAT_STEM_TRIGGER), 'fallback' (the fewest layers in float32 that pass
    on a held-out training slice; recorded as float_layers; `fallback='auto'` is its old name) or 'auto' (the
    first of those that passes, the ladder recorded);
    `target_cpu` (auto|vnni|avx2) picks ONNX Runtime's int8 settings (export/onnx.ORT_INT8_TARGETS).

    Existing artifacts made from the same model (and calibration) are kept; ones made from something else
    are replaced only with force. Each artifact is written atomically and the manifest updated after each."""
    mode = int8_mode(int8, fallback)
    qat_loss, qat_label_weight, qat_settings = _qat_settings(qat_epochs, qat_loss, qat_label_weight, qat_float_stem)
    stem = qat_settings.get("float_stem", {}).get("policy", "off")  # labels: no stem
    int8_keys = {k.name: _int8_key(k, fallback, target_cpu, mode, qat_settings) for k in kinds}  # checks --target-cpu
    run = Run.of(run)
    ref_path = run.model_path
    source_sha = sha256_path(ref_path)
    calibration = None
    if any(k.needs_calibration for k in kinds):
        calibration = data_mod.calibration_set(dataset, calib_samples)
    pp = run.recorded_preprocessing or dataset.preprocessing or run.preprocessing
    run.record_data(pp, dataset.content_hash)
    qat_images = None
    if qat_data is not None and mode in ("qat", "auto") and any(k.needs_calibration for k in kinds):
        qat_images = data_mod.open_images(qat_data, pp, exclude_like=dataset)
        qat_settings["data"] = qat_images.origin["content_hash"]
        int8_keys = {k.name: _int8_key(k, fallback, target_cpu, mode, qat_settings) for k in kinds}
    deploy = deployment_info(pp, dataset.class_names)
    write_deployment_files(run, deploy)
    keys = {kind.name: mf.inputs_key(artifact_inputs(kind, source_sha, calibration, deploy, int8_keys[kind.name]))
            for kind in kinds}

    status = _kept(run, kinds, keys, force)
    todo = [k for k in kinds if k.name not in status]
    if not todo:
        return status

    source = ExportSource(ref_path, run.model_format, tuple(dataset.input_shape), unsafe=unsafe,
                          num_classes=dataset.num_classes)
    try:
        _check_reference(source, run, dataset)
        session = None
        if any(k.needs_calibration for k in todo):
            session = Int8Session(run=run, source=source, dataset=dataset, calibration=calibration,
                                  target_cpu=target_cpu, qat_epochs=qat_epochs, qat_loss=qat_loss,
                                  qat_label_weight=qat_label_weight, qat_images=qat_images, qat_float_stem=stem)
        with progress.task("converting", total=len(todo)) as task:
            for kind in todo:
                task.describe(kind.name)
                try:
                    entry = _export_one(kind, run=run, source=source, calibration=calibration, session=session,
                                        mode=mode, deploy=deploy, key=keys[kind.name], source_sha=source_sha)
                except (UsageError, OutputError, MissingRuntimeError, KeyboardInterrupt):
                    raise  # the user's flags, the disk, the environment: not this kind's own failure
                except Exception as exc:  # one kind that cannot be made never takes the others with it
                    reason = exc.one_line() if isinstance(exc, ResexportError) else f"{type(exc).__name__}: {exc}"
                    reason = " ".join(reason.split())
                    log.warning("%s could not be made: %s", kind.name, reason, exc_info=log.isEnabledFor(logging.DEBUG))
                    run.record_export_failure(kind.name, reason, keys[kind.name])
                    status[kind.name] = KindOutcome(Status.FAILED, reason)
                    task.advance()
                    continue
                run.clear_export_failure(kind.name)
                run.set_artifact(kind.name, entry)
                status[kind.name] = WRITTEN
                log.info("wrote %s (%d bytes)", run / kind.filename, entry["bytes"])
                task.advance()
    finally:
        source.cleanup()
    return status


def _qat_settings(qat_epochs, qat_loss, qat_label_weight, qat_float_stem=None) -> tuple[str, float, dict]:
    """The QAT loss, label weight and the settings an int8 artifact's key records (flags checked here)."""
    if qat_epochs is not None and qat_epochs <= 0:
        raise UsageError(f"--qat-epochs must be positive, got {qat_epochs}")
    from exporter.quantize import qat as qat_mod

    qat_loss = qat_mod.check_loss(qat_loss or qat_mod.DEFAULT_LOSS)
    stem = qat_mod.check_float_stem(qat_float_stem or "auto")
    qat_label_weight = qat_mod.DEFAULT_LABEL_WEIGHT if qat_label_weight is None else float(qat_label_weight)
    if qat_label_weight < 0:
        raise UsageError(f"the QAT label weight must be >= 0, got {qat_label_weight}")
    settings = {"epochs": qat_epochs, "steps": None if qat_epochs else qat_mod.DEFAULT_STEPS,
                "lr": qat_mod.default_lr(qat_loss), "batch": qat_mod.DEFAULT_BATCH, "loss": qat_loss,
                **({"temperature": qat_mod.DISTILL_TEMPERATURE, "label_weight": qat_label_weight,
                    "training_only_layers": "left out", "keep": "best checkpoint",
                    "select_every": qat_mod.SELECT_EVERY, "select_images": qat_mod.SELECT_IMAGES,
                    "float_stem": {"policy": stem, **({"trigger": qat_mod.FLOAT_STEM_TRIGGER,
                                                       "budget": qat_mod.FLOAT_STEM_BUDGET} if stem == "auto" else {})}}
                   if qat_loss == "distill" else {})}
    return qat_loss, qat_label_weight, settings


def _kept(run: Run, kinds, keys: dict, force: bool) -> dict[str, KindOutcome]:
    """The kinds already up to date (kept); refuses, before any work, files made from something else
    unless force."""
    status: dict[str, KindOutcome] = {}
    conflicts = []
    for kind in kinds:
        entry = run.artifact(kind.name)
        if _up_to_date(run, kind, entry, keys[kind.name]) and not force:
            status[kind.name] = UP_TO_DATE
        elif (run / kind.filename).exists() and not force:
            conflicts.append(kind.filename)
    if conflicts:
        raise OutputExistsError(f"{run}: {', '.join(conflicts)} already exist and were not made from the "
                                "current model, calibration and int8 settings (--int8, --target-cpu)",
                                hint="pass --force to replace them")
    return status


def _check_reference(source: ExportSource, run: Run, dataset) -> None:
    """A Keras reference must fit the data and have finite weights; its output convention is recorded if a
    run made before it was recorded lacks it."""
    if source.family != "keras":
        return
    model = source.keras_model()
    probe = KerasRunner(run.model_path, model, device="cpu", mode="compiled")
    probe.check_fits(dataset.input_shape, dataset.num_classes)
    source.check_weights_finite()
    if run.output not in outputs.CONVENTIONS:
        run.set_output(*_detect_output(model, probe, dataset))


def _export_one(kind: formats.ArtifactKind, *, run: Run, source: ExportSource, calibration, session, mode: str,
                deploy: dict, key: str, source_sha: str) -> dict:
    """Export one kind (through the exporters' conformance gate; int8 kinds through the quantize session's
    remedy) and return its manifest entry."""
    out = run / kind.filename
    start = time.perf_counter()
    if kind.needs_calibration:
        details = session.make(kind, out, mode)
    else:
        details = kind.load_exporter()(source, out, None)
    # after export, so the exporters stay pure and deterministic: the SDK's metadata and interface, then the
    # gate again on the final file (its record replaces the exporter's)
    details["conformance"] = kind.backend().app_ready(out, deploy, name=run.model_name or run.path.name,
                                                      version=f"resexport {__version__}",
                                                      num_classes=source.num_classes)
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
