"""The library as a Python API: the functions the CLI calls, keyword-only, returning typed results.

    import resexport as rx

    run = rx.convert(model, data="digits/")           # a keras.Model or a path; makes a run folder
    result = rx.validate(run)                          # Validation: .passed, .artifacts, .failures()
    timing = rx.bench(run, batches=(1, 32))            # Bench: .rows, .table()

Errors are the same exception types the CLI maps to exit codes (exporter.errors.ResexportError and its
subclasses); nothing is printed. Long stages take an optional `progress` (exporter.progress.Progress).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from exporter import formats
from exporter.data.choose import one_scan
from exporter.errors import ResexportError, UsageError, ValidationFailed
from exporter.progress import NULL, Progress
from exporter.run import Run

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Validation:
    """validate's result: one row per artifact (accuracy, agreement, diffs, gates, batch invariance)."""

    run: Run
    passed: bool
    reference_accuracy: float
    artifacts: dict[str, dict]
    warnings: list[str] = field(default_factory=list)
    report: dict = field(default_factory=dict)  # validation.json as written

    def failures(self) -> dict[str, list[str]]:
        """kind -> the gates it missed, for every artifact that failed."""
        return {k: r["failures"] for k, r in self.artifacts.items() if not r["passed"]}


@dataclass(frozen=True)
class Bench:
    """bench's result: one row per (target, batch size) with latency percentiles and throughput."""

    run: Run
    rows: list[dict]
    skipped: list[dict]
    environment: dict
    report: dict = field(default_factory=dict)  # bench.json as written

    def table(self, batch: int = 1) -> dict[str, float]:
        """target -> p50 latency in ms at `batch`."""
        return {r["target"]: r["p50_ms"] for r in self.rows if r["batch"] == batch}


def _kinds(fmt: str, quantize: str) -> list[formats.ArtifactKind]:
    return formats.select(fmt, quantize)


def train(*, model: str = "resmini", data: PathLike | None = None, run: PathLike | None = None,
          recipe: str = "fast", epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
          bn_momentum: float | None = None, seed: int = 0, scale: str | None = None, test_split: float | None = None,
          train_limit: int | None = None, test_limit: int | None = None, data_dir: PathLike | None = None,
          augment: str | None = None, val_split: float = 0.0, max_batches: int | None = None,
          devices: str | int = 1, workers: int | None = None, resume: PathLike | None = None,
          force: bool = False, progress: Progress = NULL):
    """Train a registry model (exporter.models) on `data` (a built-in name, default the model's own; an image
    folder; an .npz) into a new run folder; returns exporter.train.TrainResult (its .run a Run).

    Input is streamed (exporter.stream); every epoch is checkpointed in the run's staging folder, and the
    same call again (or resume=RUN, with the settings it was started with) continues an interrupted run."""
    from exporter.data.choose import open_data
    from exporter.models import spec
    from exporter.run import default_run_path
    from exporter.stream import parse_augment
    from exporter.train import find_partial, resolve_recipe, resume_command, train as train_stage, training_key

    command = dict(model=model, dataset=str(Path(data).resolve()) if data and Path(data).exists() else data,
                   scale=scale, test_split=test_split, recipe=recipe, epochs=epochs, batch_size=batch_size, lr=lr,
                   bn_momentum=bn_momentum, seed=seed, train_limit=train_limit, test_limit=test_limit,
                   augment=augment, val_split=val_split, max_batches=max_batches,
                   data_dir=str(data_dir) if data_dir else None)
    if resume is not None:  # the settings the run was started with; devices and workers may differ
        command, run = resume_command(Path(resume)), resume
    c = dict(command)
    spec_data = c["dataset"] or spec(c["model"]).dataset
    r = resolve_recipe(c["recipe"], epochs=c["epochs"], batch_size=c["batch_size"], lr=c["lr"],
                       bn_momentum=c["bn_momentum"])
    with one_scan():
        ds = open_data(spec_data, scale=c["scale"], data_dir=c["data_dir"], test_split=c["test_split"],
                       train_limit=c["train_limit"], test_limit=c["test_limit"])
    if len(ds.y_train) == 0:
        raise UsageError(f"{spec_data} has no training split",
                         hint="use a folder with train/ and test/, or pass --test-split F")
    streaming = dict(augment=parse_augment(c["augment"]), val_split=c["val_split"], max_batches=c["max_batches"])
    target = run or (None if force else find_partial(training_key(c["model"], ds, r, c["seed"], **streaming))) or \
        default_run_path(c["model"], spec_data)
    result = train_stage(model_name=c["model"], dataset=ds, run=Path(target), recipe=r, seed=c["seed"], force=force,
                         devices=devices, workers=workers, command=command, progress=progress, **streaming)
    result.run = Run(result.run)
    return result


def convert(model=None, *, run: Run | PathLike | None = None, data: PathLike | None = None,
            scale: str | None = None, format: str = "all", quantize: str = "all",  # noqa: A002  (the CLI's name)
            calib_samples: int = 500, int8: str | None = None, qat_epochs: float | None = None,
            fallback: str = "none", target_cpu: str = "auto", test_split: float | None = None,
            calib_data: PathLike | None = None, data_dir: PathLike | None = None, force: bool = False,
            unsafe: bool = False, progress: Progress = NULL) -> Run:
    """Export a model to TFLite and/or ONNX and return its Run.

    model: a keras.Model object, or a path to a .keras / legacy .h5 file or a SavedModel folder; a new
    run folder is made around it (at `run`, or artifacts/<name>-import-<data>-<time>) with `data`'s
    test and calibration images, preprocessed as the model needs (exporter.data.preprocessing.decide).
    Without a model, the existing run `run` (default: the newest) is converted. int8: ptq (default), qat,
    fallback or auto (exporter.quantize)."""
    return convert_with_status(model, run=run, data=data, scale=scale, format=format, quantize=quantize,
                               calib_samples=calib_samples, int8=int8, qat_epochs=qat_epochs, fallback=fallback,
                               target_cpu=target_cpu, test_split=test_split, calib_data=calib_data, data_dir=data_dir,
                               force=force, unsafe=unsafe, progress=progress)[0]


def convert_with_status(model=None, *, run=None, data=None, scale=None, format="all", quantize="all",  # noqa: A002
                        calib_samples=500, int8=None, qat_epochs=None, fallback="none", target_cpu="auto",
                        test_split=None, calib_data=None, data_dir=None, force=False, unsafe=False,
                        progress: Progress = NULL) -> tuple[Run, dict[str, str]]:
    """convert(), also returning {kind: 'written' | 'up to date' | 'failed: reason'} (what the CLI shows)."""
    from exporter.convert import convert as convert_stage, import_model, int8_mode
    from exporter.run import open_for_run

    from exporter.export.source import tensorflow

    kinds = _kinds(format, quantize)
    int8_mode(int8, fallback)  # a bad int8/fallback is refused before a run folder is made
    tensorflow()  # conversion needs Keras on TensorFlow: refused before a run folder is made, too
    with one_scan():
        if model is not None:
            with _model_file(model) as path:
                target = import_model(path, run=None if run is None else Path(run),
                                      data=None if data is None else str(data), scale=scale, test_split=test_split,
                                      calib_data=calib_data, data_dir=data_dir, force=force, unsafe=unsafe)
            force = False  # the new run has no artifacts yet
        else:
            if scale is not None or test_split is not None or calib_data is not None:
                raise UsageError("--scale, --test-split and --calib-data are set when a model is imported (--model)",
                                 hint="the run records them; pass --model again to make a new run")
            target = Run.of(run)
        dataset = open_for_run(target, data_dir=data_dir,
                               data=None if model is not None or data is None else str(data))
        status = convert_stage(run=target, kinds=kinds, dataset=dataset, calib_samples=calib_samples, force=force,
                               unsafe=unsafe, fallback=fallback, target_cpu=target_cpu, int8=int8,
                               qat_epochs=qat_epochs, progress=progress)
    return target.reload(), status


class _model_file:
    """A path to the model: the one given, or a keras.Model saved to a temporary .keras file."""

    def __init__(self, model):
        self.model, self._tmp = model, None

    def __enter__(self) -> Path:
        if isinstance(self.model, (str, os.PathLike)):
            return Path(self.model)
        if not hasattr(self.model, "save") or not hasattr(self.model, "layers"):
            raise UsageError(f"convert(model=...) takes a keras.Model or a path, not {type(self.model).__name__}")
        self._tmp = tempfile.TemporaryDirectory(prefix="resexport-model-")
        name = getattr(self.model, "name", None) or "model"
        path = Path(self._tmp.name) / f"{''.join(c if c.isalnum() or c in '-_' else '_' for c in name)}.keras"
        self.model.save(path)
        return path

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def validate(run: Run | PathLike | None = None, *, artifacts: Iterable[str] | None = None,
             data: PathLike | None = None, limit: int | None = None, batch_size: int = 256,
             threads: int | None = None, max_drop: float | None = None, min_agreement: float | None = None,
             max_abs_diff: float | None = None, check: bool = False, unsafe: bool = False,
             runtimes: Iterable[str] | None = None, progress: Progress = NULL) -> Validation:
    """Validate the run's artifacts against its reference model on the test set (all of it, or a
    stratified sample of `limit` images), each on every runtime that reads it (or on `runtimes`).
    Writes validation.json. With check=True, a failing artifact
    raises ValidationFailed (what the CLI's exit code 4 is) instead of returning passed=False."""
    from exporter.run import open_for_run
    from exporter.validate import failure_summary, validate as validate_stage

    target = Run.of(run)
    dataset = open_for_run(target, data=None if data is None else str(data), test_limit=limit)
    report = validate_stage(run=target, dataset=dataset, kinds=list(artifacts) if artifacts else None,
                            overrides={"max_drop": max_drop, "min_agreement": min_agreement,
                                       "max_abs_diff": max_abs_diff},
                            batch_size=batch_size, threads=threads, unsafe=unsafe, progress=progress,
                            runtimes=list(runtimes) if runtimes else None)
    if check and not report["passed"]:
        raise ValidationFailed(f"{failure_summary(report)} (details in {target}/validation.json)")
    return Validation(run=target, passed=report["passed"], reference_accuracy=report["reference"]["accuracy"],
                      artifacts={r.get("target", r["kind"]): r for r in report["artifacts"]}, warnings=report.get("warnings", []),
                      report=report)


def bench(run: Run | PathLike | None = None, *, artifacts: Iterable[str] | None = None,
          batches: Iterable[int] = (1, 8, 64), device: str = "cpu", threads: int | None = None,
          warmup: int = 5, min_runs: int = 20, min_time: float = 1.0, reference: bool = True,
          strict: bool = False, runtimes: Iterable[str] | None = None, progress: Progress = NULL) -> Bench:
    """Time the run's artifacts (and the Keras reference) on real test images, each on every runtime that
    reads it (or on `runtimes`). Writes bench.json."""
    from exporter.bench import BenchConfig, bench as bench_stage
    from exporter.run import open_for_run

    target = Run.of(run)
    cfg = BenchConfig(batches=tuple(int(b) for b in batches), warmup=warmup, min_runs=min_runs, min_time=min_time,
                      threads=threads, device=device)
    report = bench_stage(run=target, dataset=open_for_run(target), kinds=list(artifacts) if artifacts else None,
                         cfg=cfg, strict=strict, include_reference=reference, progress=progress,
                         runtimes=list(runtimes) if runtimes else None)
    return Bench(run=target, rows=report["results"], skipped=report["skipped"], environment=report["environment"],
                 report=report)


def report(run: Run | PathLike | None = None) -> dict:
    """Write report.md and report.png from the run's results; returns the table."""
    from exporter.report import write_report

    return write_report(Run.of(run))


__all__ = ["Bench", "ResexportError", "Run", "Validation", "bench", "convert", "report", "train", "validate"]
