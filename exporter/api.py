"""The library as a Python API, and the only place that wires the stages together: the CLI, the pipeline
and the benchmark scripts all call these functions.

    import resexport as rx

    conv = rx.convert(model, data="digits/")           # a keras.Model or a path; makes a run folder
    result = rx.validate(conv.run)                     # Validation: .passed, .artifacts, .failures()
    timing = rx.bench(conv.run, batches=(1, 32))       # Bench: .rows, .table()

Each stage has one frozen options type (`TrainOptions`, `ConvertOptions`, `ValidateOptions`, `BenchOptions`,
...), the one home of its defaults; a function takes `options=` and/or the same fields as keywords
(`rx.bench(run, batches=(1, 32))` is `rx.bench(run, options=BenchOptions(batches=(1, 32)))`). Results are
typed (`Conversion`, `Validation`, `Bench`). Errors are the exception types the CLI maps to exit codes
(exporter.errors.ResexportError and its subclasses); nothing is printed. Long stages take an optional
`progress` (exporter.progress.Progress). Where a run is taken, a `Run`, a folder path, a `Conversion` or
None (the newest run) will do.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterable

from exporter import formats
from exporter import report as reporting
from exporter.bench import BenchConfig, bench as bench_stage
from exporter.convert import KindOutcome, Status, convert as convert_stage, import_model, int8_mode
from exporter.data.datasets import Dataset, load_dataset
from exporter.data.choose import one_scan, open_data
from exporter.cpuinfo import physical_cores
from exporter.errors import ExportError, ResexportError, UsageError, ValidationFailed
from exporter.experiment import DEPTHS, depth_study as depth_stage
from exporter.export.source import tensorflow
from exporter.predict import predict as predict_stage
from exporter.profiling import profile as profile_stage
from exporter.progress import NULL, Progress
from exporter.quantize import diagnose
from exporter.run import Run, default_run_path, open_for_run
from exporter.train import (RECIPES, TrainResult, find_partial, resolve_recipe, resume_command, train as train_stage,
                            training_key)
from exporter.validate import BATCH_SIZE, failure_summary, validate as validate_stage
from exporter.webapp import WebApp, serve as web_stage

PathLike = str | os.PathLike


# ------------------------------------------------------------------------------ options: the one home of defaults

@dataclass(frozen=True)
class TrainOptions:
    """train: what to train on what (the CLI's flags of the same names)."""

    model: str = "resmini"                 # a registry name (exporter.models)
    data: PathLike | None = None           # built-in name, image folder or .npz; None: the model's own dataset
    recipe: str = "fast"                   # exporter.train.RECIPES; epochs/batch_size/lr/bn_momentum override it
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    bn_momentum: float | None = None
    seed: int = 0
    scale: str | None = None               # your own data: the input scale (default unit)
    test_split: float | None = None        # your own data without test/: hold out this fraction per class
    train_limit: int | None = None
    test_limit: int | None = None
    data_dir: PathLike | None = None
    augment: str | None = None             # flip, crop or flip,crop
    val_split: float = 0.0
    max_batches: int | None = None
    devices: str | int = "1"               # N or 'all'
    workers: int | None = None             # input pipeline threads (default: min(4, CPUs))


@dataclass(frozen=True)
class ConvertOptions:
    """convert: which kinds, from which data, int8 made how."""

    format: str = "all"  # noqa: A003  (the CLI's name) formats.FORMAT_CHOICES
    quantize: str = "all"                  # formats.QUANTIZE_CHOICES
    calib_samples: int = 500               # int8 calibration images, stratified, from the training split only
    int8: str | None = None                # ptq (default), qat, fallback, auto
    qat_epochs: float | None = None        # None: qat's own step count
    qat_data: PathLike | None = None       # images to fine-tune on (folder or .npz, labels optional); None: the
                                           # training split minus the hold-out
    qat_loss: str = "distill"              # distill: the original's outputs are the target (exporter.quantize.qat);
                                           # labels: retrain on the labels (a different model)
    qat_label_weight: float = 0.0          # distill: weight of an extra label term (0: stay the original)
    qat_float_stem: str = "auto"           # distill: auto (keep the first layers float32 when full int8 misses the
                                           # gate on held-back images; exporter.quantize.qat) or off (full int8)
    fallback: str = "none"                 # 'auto' is the older spelling of int8='fallback'
    target_cpu: str = "auto"               # onnx-int8: vnni, avx2 or auto (this machine's)
    data: PathLike | None = None           # with a model: its data; else data instead of the run's own
    scale: str | None = None               # with a model: the input scale it expects
    test_split: float | None = None        # with a model: hold out this fraction of the data per class
    calib_data: PathLike | None = None     # with a model and data without a train split
    data_dir: PathLike | None = None
    unsafe: bool = False                   # allow Lambda layers


@dataclass(frozen=True)
class ValidateOptions:
    """validate: which artifacts, on which images, against which gates (None: the per-kind default)."""

    artifacts: Iterable[str] | None = None  # None: every artifact in the run
    data: PathLike | None = None            # data instead of the run's own
    limit: int | None = None                # a stratified sample of this many test images
    batch_size: int = BATCH_SIZE  # images per inference call
    threads: int | None = None
    max_drop: float | None = None
    min_agreement: float | None = None
    max_abs_diff: float | None = None
    data_dir: PathLike | None = None
    unsafe: bool = False
    runtimes: Iterable[str] | None = None   # None: each kind's own runtime and every default one installed


@dataclass(frozen=True)
class BenchOptions(BenchConfig):
    """bench: the timing settings (batches, warmup, min_runs, min_time, max_time, threads, device: their
    defaults are exporter.bench.BenchConfig's, the stage's own type) and what to time."""

    artifacts: Iterable[str] | None = None  # None: every artifact in the run
    reference: bool = True                  # also time the Keras original
    strict: bool = False                    # a target that cannot run on `device` is an error, not skipped
    data: PathLike | None = None
    data_dir: PathLike | None = None
    runtimes: Iterable[str] | None = None   # None: each kind's own runtime and every default one installed

    def timing(self) -> BenchConfig:
        return BenchConfig(**{f.name: getattr(self, f.name) for f in fields(BenchConfig)})


@dataclass(frozen=True)
class InspectOptions:
    """inspect: which int8 artifact, measured on how many held-out training images."""

    artifact: str = "tflite-int8"
    samples: int = diagnose.DEFAULT_SAMPLES
    data_dir: PathLike | None = None
    unsafe: bool = False


@dataclass(frozen=True)
class ProfileOptions:
    """profile: which artifacts on which runtimes, timed over how many calls of which batch."""

    artifacts: Iterable[str] | None = None  # None: every artifact in the run
    runtimes: Iterable[str] | None = None   # None: each kind's own runtime and every default one installed
    runs: int = 20
    batch: int = 1
    threads: int | None = None              # None: the physical cores (as bench)
    data: PathLike | None = None
    data_dir: PathLike | None = None


@dataclass(frozen=True)
class WebOptions:
    """web: where the page is served (127.0.0.1 only; 0: any free port), on which data, how many test images."""

    port: int = 8000
    data: PathLike | None = None
    data_dir: PathLike | None = None
    samples: int = 60


@dataclass(frozen=True)
class PredictOptions:
    """predict: which artifact (None: the smallest that passed validation), how many classes per image."""

    artifact: str | None = None
    top_k: int = 3
    threads: int | None = None
    unsafe: bool = False


@dataclass(frozen=True)
class DepthOptions:
    """experiment depth (seed 003): plain vs residual CNNs at each depth."""

    out: PathLike = Path("artifacts/depth-study")
    depths: tuple[int, ...] = DEPTHS
    recipe: str = "seed"
    epochs: int | None = None
    lr: float | None = None
    bn_momentum: float | None = None
    seed: int = 0
    train_limit: int | None = None
    test_limit: int | None = None
    device_note: str = ""
    data_dir: PathLike | None = None


@dataclass(frozen=True)
class PipelineOptions:
    """pipeline: train, convert every kind, validate, bench, report. The training fields default to
    TrainOptions' (but the data to Fashion-MNIST); test_limit is also validate's limit."""

    model: str = TrainOptions.model
    data: str = "fashion_mnist"
    recipe: str = TrainOptions.recipe
    epochs: int | None = None
    lr: float | None = None
    bn_momentum: float | None = None
    seed: int = TrainOptions.seed
    train_limit: int | None = None
    test_limit: int | None = None
    data_dir: PathLike | None = None
    convert: ConvertOptions = ConvertOptions()
    bench: BenchOptions = BenchOptions(batches=(1, 64), warmup=3, min_runs=10, min_time=0.5)

    def train_options(self) -> TrainOptions:
        return TrainOptions(model=self.model, data=self.data, recipe=self.recipe, epochs=self.epochs, lr=self.lr,
                            bn_momentum=self.bn_momentum, seed=self.seed, train_limit=self.train_limit,
                            test_limit=self.test_limit, data_dir=self.data_dir)


def _options(cls, options, overrides: dict):
    """`options` (default: cls()) with `overrides` (keyword arguments named like its fields) applied."""
    opts = cls() if options is None else options
    if not isinstance(opts, cls):
        raise TypeError(f"options must be a {cls.__name__}, not {type(opts).__name__}")
    return replace(opts, **overrides) if overrides else opts


# ------------------------------------------------------------------------------ results

@dataclass(frozen=True)
class Conversion:
    """convert's result: the run and, per kind asked for, what happened (written, up to date, or failed
    with its reason)."""

    run: Run
    artifacts: dict[str, KindOutcome]

    def failures(self) -> dict[str, str]:
        """kind -> why it could not be made, for every kind that failed (the others were written)."""
        return {k: o.reason for k, o in self.artifacts.items() if o.failed}

    @property
    def up_to_date(self) -> bool:
        """Nothing was made: every kind was already there, from the same inputs."""
        return all(o.status is Status.UP_TO_DATE for o in self.artifacts.values())

    def check(self) -> "Conversion":
        """Raise ExportError (the CLI's exit 70) if a kind could not be made."""
        if failed := self.failures():
            raise ExportError("; ".join(f"{k} could not be made: {why}" for k, why in failed.items()),
                              hint="the other kinds were written; rerun with --debug and report this")
        return self

    def __fspath__(self) -> str:
        return str(self.run)


@dataclass(frozen=True)
class Validation:
    """validate's result: one row per artifact (accuracy, agreement, diffs, gates, batch invariance)."""

    run: Run
    passed: bool
    reference_accuracy: float
    artifacts: dict[str, dict]
    warnings: list[str] = field(default_factory=list)
    report: dict = field(default_factory=dict)  # validation.json as written
    reused: bool = False  # validation.json was up to date (reuse=True)

    def failures(self) -> dict[str, list[str]]:
        """kind -> the gates it missed, for every artifact that failed."""
        return {k: r["failures"] for k, r in self.artifacts.items() if not r["passed"]}

    def agreements(self) -> dict[str, dict]:
        """target -> top-1 agreement with the run's model (`with_original`, always the user's model), and for a
        QAT file the model it was fine-tuned into (`fine_tuned_model`), its agreement with that one
        (`with_fine_tuned`), the file its gates compared it with (`gated_against`) and, for any int8 file,
        the class whose accuracy moved more than validate.CLASS_SHIFT_POINTS (`class_shift`, else None)."""
        model_file = (self.report.get("reference") or {}).get("file")
        return {t: {"with_original": r.get("agreement_with_original", r.get("agreement")),
                    "fine_tuned_model": r.get("fine_tuned_model"), "with_fine_tuned": r.get("agreement_with_fine_tuned"),
                    "gated_against": r.get("agreement_reference", model_file), "class_shift": r.get("class_shift")}
                for t, r in self.artifacts.items() if "accuracy" in r}

    def check(self) -> "Validation":
        """Raise ValidationFailed (the CLI's exit 4) if an artifact missed a gate."""
        if not self.passed:
            raise ValidationFailed(f"{failure_summary(self.report)} (details in {self.run}/validation.json)")
        return self


@dataclass(frozen=True)
class Bench:
    """bench's result: one row per (target, batch size) with latency percentiles and throughput."""

    run: Run
    rows: list[dict]
    skipped: list[dict]
    environment: dict
    report: dict = field(default_factory=dict)  # bench.json as written
    reused: bool = False  # bench.json was up to date (reuse=True)

    def table(self, batch: int = 1) -> dict[str, float]:
        """target -> p50 latency in ms at `batch`."""
        return {r["target"]: r["p50_ms"] for r in self.rows if r["batch"] == batch}


def _run(run) -> Run:
    return run.run if isinstance(run, Conversion) else Run.of(run)


def _spec(data) -> str | None:
    return None if data is None else str(data)


# ------------------------------------------------------------------------------ the stages

def train(options: TrainOptions | None = None, *, run: PathLike | None = None, resume: PathLike | None = None,
          force: bool = False, reuse: bool = False, dataset: Dataset | None = None, progress: Progress = NULL,
          **overrides) -> TrainResult:
    """Train a registry model (exporter.models) on `data` (a built-in name, default the model's own; an image
    folder; an .npz) into a new run folder; returns exporter.train.TrainResult (its .run a Run).

    Input is streamed (exporter.stream); every epoch is checkpointed in the run's staging folder, and the
    same call again (or resume=RUN, with the settings it was started with) continues an interrupted run.
    reuse=True keeps a run already trained in `run` from the same inputs; `dataset`: the data already
    opened (as options.data with its limits), so a caller running several stages reads it once."""
    from exporter.models import spec  # these import Keras: validate/bench on an edge box need neither
    from exporter.stream import parse_augment

    o = _options(TrainOptions, options, overrides)
    command = dict(model=o.model, dataset=str(Path(o.data).resolve()) if o.data and Path(o.data).exists() else o.data,
                   scale=o.scale, test_split=o.test_split, recipe=o.recipe, epochs=o.epochs, batch_size=o.batch_size,
                   lr=o.lr, bn_momentum=o.bn_momentum, seed=o.seed, train_limit=o.train_limit,
                   test_limit=o.test_limit, augment=o.augment, val_split=o.val_split, max_batches=o.max_batches,
                   data_dir=str(o.data_dir) if o.data_dir else None)
    if resume is not None:  # the settings the run was started with; devices and workers may differ
        command, run, dataset = resume_command(Path(resume)), resume, None
    c = dict(command)
    spec_data = c["dataset"] or spec(c["model"]).dataset
    r = resolve_recipe(c["recipe"], epochs=c["epochs"], batch_size=c["batch_size"], lr=c["lr"],
                       bn_momentum=c["bn_momentum"])
    if dataset is None:
        with one_scan():
            dataset = open_data(spec_data, scale=c["scale"], data_dir=c["data_dir"], test_split=c["test_split"],
                                train_limit=c["train_limit"], test_limit=c["test_limit"])
    if len(dataset.y_train) == 0:
        raise UsageError(f"{spec_data} has no training split",
                         hint="use a folder with train/ and test/, or pass --test-split F")
    streaming = dict(augment=parse_augment(c["augment"]), val_split=c["val_split"], max_batches=c["max_batches"])
    target = run or (None if force else find_partial(training_key(c["model"], dataset, r, c["seed"], **streaming))) \
        or default_run_path(c["model"], spec_data)
    result = train_stage(model_name=c["model"], dataset=dataset, run=Path(target), recipe=r, seed=c["seed"],
                         force=force, reuse=reuse, devices=o.devices, workers=o.workers, command=command,
                         progress=progress, **streaming)
    result.run = Run(result.run)
    return result


def convert(model=None, *, run: Run | PathLike | None = None, options: ConvertOptions | None = None,
            force: bool = False, dataset: Dataset | None = None, progress: Progress = NULL,
            **overrides) -> Conversion:
    """Export a model to TFLite and/or ONNX; returns a Conversion (.run, .artifacts: kind -> outcome).

    model: a keras.Model object, or a path to a .keras / legacy .h5 file or a SavedModel folder; a new
    run folder is made around it (at `run`, or artifacts/<name>-import-<data>-<time>) with `data`'s
    test and calibration images, preprocessed as the model needs (exporter.data.preprocessing.decide).
    Without a model, the existing run `run` (default: the newest) is converted. int8: ptq (default), qat,
    fallback or auto (exporter.quantize). Artifacts already made from the same inputs are kept ("up to
    date"); ones made otherwise are replaced only with force. `dataset`: the data already opened."""
    o = _options(ConvertOptions, options, overrides)
    kinds = formats.select(o.format, o.quantize)
    int8_mode(o.int8, o.fallback)  # a bad int8/fallback is refused before a run folder is made
    tensorflow()  # conversion needs Keras on TensorFlow: refused before a run folder is made, too
    with one_scan():
        if model is not None:
            with _model_file(model) as path:
                target = import_model(path, run=None if run is None else Path(run), dataset=dataset, data=_spec(o.data), scale=o.scale, test_split=o.test_split,
                                      calib_data=o.calib_data, data_dir=o.data_dir, force=force, unsafe=o.unsafe)
            force = False  # the new run has no artifacts yet
        else:
            if o.scale is not None or o.test_split is not None or o.calib_data is not None:
                raise UsageError("--scale, --test-split and --calib-data are set when a model is imported (--model)",
                                 hint="the run records them; pass --model again to make a new run")
            target = _run(run)
        if dataset is None:
            dataset = open_for_run(target, data_dir=o.data_dir, data=None if model is not None else _spec(o.data))
        status = convert_stage(run=target, kinds=kinds, dataset=dataset, calib_samples=o.calib_samples, force=force,
                               unsafe=o.unsafe, fallback=o.fallback, target_cpu=o.target_cpu, int8=o.int8,
                               qat_epochs=o.qat_epochs, qat_data=o.qat_data, qat_loss=o.qat_loss,
                               qat_label_weight=o.qat_label_weight, qat_float_stem=o.qat_float_stem,
                               progress=progress)
    return Conversion(run=target.reload(), artifacts=status)


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


def validate(run: Run | PathLike | Conversion | None = None, *, options: ValidateOptions | None = None,
             check: bool = False, reuse: bool = False, dataset: Dataset | None = None, progress: Progress = NULL,
             **overrides) -> Validation:
    """Validate the run's artifacts against its reference model on the test set (all of it, or a
    stratified sample of `limit` images). Writes validation.json. With check=True, a failing artifact
    raises ValidationFailed (what the CLI's exit code 4 is) instead of returning passed=False. With
    reuse=True, a validation.json made from the same inputs is returned as it is (.reused)."""
    o = _options(ValidateOptions, options, overrides)
    target = _run(run)
    if dataset is None:
        dataset = open_for_run(target, data=_spec(o.data), data_dir=o.data_dir, test_limit=o.limit)
    report = validate_stage(run=target, dataset=dataset, kinds=list(o.artifacts) if o.artifacts else None,
                            overrides={"max_drop": o.max_drop, "min_agreement": o.min_agreement,
                                       "max_abs_diff": o.max_abs_diff},
                            batch_size=o.batch_size, threads=o.threads, unsafe=o.unsafe, progress=progress,
                            reuse=reuse, runtimes=list(o.runtimes) if o.runtimes else None)
    result = Validation(run=target, passed=report["passed"], reference_accuracy=report["reference"]["accuracy"],
                        artifacts={r.get("target", r["kind"]): r for r in report["artifacts"]},
                        warnings=report.get("warnings", []),
                        report=report, reused=bool(report.get("reused")))
    return result.check() if check else result


def bench(run: Run | PathLike | Conversion | None = None, *, options: BenchOptions | None = None,
          reuse: bool = False, write: bool = True, dataset: Dataset | None = None, progress: Progress = NULL,
          **overrides) -> Bench:
    """Time the run's artifacts (and the Keras reference) on real test images. Writes bench.json (unless
    write=False). With reuse=True, a bench.json made from the same inputs is returned as it is (.reused)."""
    o = _options(BenchOptions, options, overrides)
    o = replace(o, batches=tuple(int(b) for b in o.batches))
    target = _run(run)
    if dataset is None:
        dataset = open_for_run(target, data=_spec(o.data), data_dir=o.data_dir)
    report = bench_stage(run=target, dataset=dataset, kinds=list(o.artifacts) if o.artifacts else None,
                         cfg=o.timing(), strict=o.strict, include_reference=o.reference, progress=progress,
                         write=write, reuse=reuse, runtimes=list(o.runtimes) if o.runtimes else None)
    return Bench(run=target, rows=report["results"], skipped=report["skipped"], environment=report["environment"],
                 report=report, reused=bool(report.get("reused")))


def report(run: Run | PathLike | Conversion | None = None) -> dict:
    """Write report.md and report.png from the run's results; returns the table."""
    return reporting.write_report(_run(run))


def inspect(run: Run | PathLike | Conversion | None = None, *, options: InspectOptions | None = None,
            progress: Progress = NULL, **overrides) -> dict:
    """Per-layer quantisation error of an int8 artifact, worst first (exporter.quantize.diagnose)."""
    o = _options(InspectOptions, options, overrides)
    if o.samples <= 0:
        raise UsageError(f"--samples must be positive, got {o.samples}")
    target = _run(run)
    return diagnose.inspect(run=target, kind=o.artifact, dataset=open_for_run(target, data_dir=o.data_dir),
                            samples=o.samples, unsafe=o.unsafe, progress=progress)


def profile(run: Run | PathLike | Conversion | None = None, *, options: ProfileOptions | None = None,
            write: bool = True, **overrides) -> dict:
    """Time per op of the run's artifacts on each runtime (exporter.profiling); writes profile.json."""
    o = _options(ProfileOptions, options, overrides)
    target = _run(run)
    dataset = open_for_run(target, data=_spec(o.data), data_dir=o.data_dir)
    return profile_stage(run=target, images=dataset.x_test, kinds=list(o.artifacts) if o.artifacts else None,
                         runtimes=list(o.runtimes) if o.runtimes else None, runs=o.runs, batch=o.batch,
                         threads=o.threads or physical_cores(), write=write)


def predict(images: Iterable[PathLike], *, run: Run | PathLike | Conversion | None = None,
            options: PredictOptions | None = None, **overrides) -> dict:
    """Top-k classes with probabilities for image files and/or folders, preprocessed as the run records."""
    o = _options(PredictOptions, options, overrides)
    return predict_stage(run=_run(run), paths=[Path(p) for p in images], kind=o.artifact, top_k=o.top_k,
                         threads=o.threads, unsafe=o.unsafe)


def web(run: Run | PathLike | Conversion | None = None, *, options: WebOptions | None = None, **overrides) -> WebApp:
    """Serve the run's page (every .onnx and .tflite file run in the visitor's browser) on 127.0.0.1; the
    caller closes the returned WebApp (the CLI waits for Ctrl-C)."""
    o = _options(WebOptions, options, overrides)
    if not 0 <= o.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {o.port}")
    target = _run(run)
    dataset = open_for_run(target, data=_spec(o.data), data_dir=o.data_dir)
    return web_stage(run=target, dataset=dataset, port=o.port, samples=o.samples)


def depth_study(options: DepthOptions | None = None, *, force: bool = False, progress: Progress = NULL,
                on_model: Callable = lambda name, acc, seconds, reused: None, **overrides) -> dict:
    """Seed 003's study: plain vs residual CNNs at each depth on Fashion-MNIST; writes depth.json/.md/.png
    into options.out and returns the JSON document. Models already trained there with the same settings
    are reused."""
    o = _options(DepthOptions, options, overrides)
    ds = load_dataset("fashion_mnist", data_dir=o.data_dir, train_limit=o.train_limit, test_limit=o.test_limit)
    recipe = resolve_recipe(o.recipe, epochs=o.epochs, lr=o.lr, bn_momentum=o.bn_momentum)
    return depth_stage(out=Path(o.out), recipe=recipe, dataset=ds, depths=tuple(o.depths), seed=o.seed,
                       device_note=o.device_note, force=force, progress=progress, on_model=on_model)


__all__ = ["Bench", "BenchOptions", "Conversion", "ConvertOptions", "DepthOptions", "InspectOptions", "KindOutcome",
           "PipelineOptions", "PredictOptions", "ProfileOptions", "ResexportError", "Run", "Status", "TrainOptions", "Validation",
           "ValidateOptions", "bench", "convert", "depth_study", "inspect", "predict", "profile", "report", "train",
           "validate"]
