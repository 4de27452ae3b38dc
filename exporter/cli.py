"""The `resexport` command line: parse, call the library, show. No logic lives here.

Plumbing (the error boundary, progress bars, quiet imports, table printing) is in
exporter/console.py; table layouts come from exporter/report.py, so the terminal and report.md
show the same rows. Help texts that list kinds or gates are generated from exporter/formats.py.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import fields
from pathlib import Path
from typing import List, Optional

# Quiet TensorFlow's C++ chatter before anything can import it (--debug turns it back on).
_USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import typer
from rich.markup import escape

from exporter import __version__
from exporter import api, formats
from exporter.api import (RECIPES, BenchOptions, ConvertOptions, DepthOptions, InspectOptions, PipelineOptions,
                          PredictOptions, ProfileOptions, TrainOptions, ValidateOptions, WebOptions)
from exporter.console import (boundary, err, note, out, print_json, print_table, print_verbatim, progress, state,
                              warn)
from exporter.data.preprocessing import SCALE_HELP
from exporter.errors import UsageError, ValidationFailed
from exporter.pipeline import run_pipeline
from exporter.quiet import hide_native_stderr_for_process, show_native
from exporter.report import (BENCH_HEADERS, CONVERT_HEADERS, INSPECT_HEADERS, PROFILE_HEADERS, SUMMARY_HEADERS,
                             VALIDATION_HEADERS, bench_rows, convert_rows, inspect_rows, profile_rows, summary_rows,
                             validation_rows)

app = typer.Typer(
    name="resexport",
    help="Take a Keras ResNet to the edge: train, convert to TFLite/ONNX, validate every artifact "
         "against the Keras original on the real test set, benchmark, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: paragraphs re-wrapped, no type labels on flags
)


def flag(*names: str, help: str):  # noqa: A002  (typer's own keyword)
    return typer.Option(False, *names, help=help)


# ------------------------------------------------------------------------------ shared options
# Defaults come from the options types in exporter/api.py (their one home); help texts live here.

RUN_OPT = typer.Option(None, "--run", help="Run folder (default: the newest under artifacts/).")
DATA_OPT = typer.Option(None, "--data-dir", help="Where the dataset files are (else $RESEXPORT_DATA, "
                        "~/.keras/datasets, /usr/share/datasets).")
DATASET_OPT = typer.Option(None, "--data", "--dataset", "-d", help="Data to use instead of the run's own: a built-in "
                           "name, an image folder or an .npz (preprocessed as the run records).")
THREADS_OPT = typer.Option(None, "--threads", help="CPU threads for TFLite/ONNX Runtime (default: the runtime's).")
UNSAFE_OPT = flag("--unsafe", help="Allow Keras models with Lambda layers (runs code from the file).")
JSON_OPT = flag("--json", help="Print machine-readable JSON on stdout (progress and messages go to stderr).")
EPOCHS_OPT = typer.Option(None, "--epochs", help="Override the recipe's epochs.")
BATCH_SIZE_OPT = typer.Option(None, "--batch-size", help="Override the recipe's batch size.")
LR_OPT = typer.Option(None, "--lr", help="Override the recipe's learning rate.")
BN_OPT = typer.Option(None, "--bn-momentum", help="BatchNorm moving-average momentum (default: the model's own). "
                      "Use 0.9 for short runs: with 0.99, ~100 steps leave a third of the initial statistics.")
SEED_OPT = typer.Option(TrainOptions.seed, "--seed", help="Random seed (weights, shuffling).")
TRAIN_LIMIT_OPT = typer.Option(None, "--train-limit", help="Train on a stratified subset of this many images.")
TEST_LIMIT_OPT = typer.Option(None, "--test-limit", help="Evaluate on a stratified subset of the test set.")
TEST_SPLIT_OPT = typer.Option(None, "--test-split", help="Your own folder of class folders: hold out this fraction "
                              "per class as the test set (stratified, seeded, recorded).")
VALIDATE_ARTIFACTS_OPT = typer.Option(None, "--artifacts", "-a", help="Kinds to check (comma-separated or repeated; "
                                      "default: all in the run).")
BENCH_ARTIFACTS_OPT = typer.Option(None, "--artifacts", "-a", help="Kinds to time (default: all; the Keras reference "
                                   "is always timed too, unless --no-reference).")


def _recipe_opt(default: str):
    return typer.Option(default, "--recipe", help="Training recipe: " + "; ".join(
        f"'{name}' ({r.description})" for name, r in RECIPES.items()) + ".")


# Not generated: listing the registry would import Keras (and TensorFlow) for every --help.
MODEL_OPT = typer.Option(TrainOptions.model, "--model", "-m", help="Registry model: resmini (the CPU default), "
                         "plain12/20/32/50 and residual12/20/32/50 (seed 003), resnet18/34 (seed 000). See README, "
                         "Models.")

# train
TRAIN_DATA_OPT = typer.Option(None, "--data", "--dataset", "-d", help="fashion_mnist, mnist or cifar10 (default: the "
                              "model's own dataset), or your own: an image folder (one sub-folder per class; train/ "
                              "and test/ inside, or --test-split) or an .npz.")
TRAIN_SCALE_OPT = typer.Option(None, "--scale", help=f"Your own data: {SCALE_HELP} (default unit).")
TRAIN_RUN_OPT = typer.Option(None, "--run", help="Run folder to create (default: artifacts/<model>-<dataset>-<time>).")
DEVICES_OPT = typer.Option(str(TrainOptions.devices), "--devices", help="Devices to train on: N or 'all'. More than "
                           "one needs KERAS_BACKEND=jax (keras.distribution.DataParallel; the batch is split across "
                           "them).")
AUGMENT_OPT = typer.Option(None, "--augment", help="Augment training batches in the input pipeline "
                           "(never in the model): flip, crop or flip,crop. Default: none.")
VAL_SPLIT_OPT = typer.Option(TrainOptions.val_split, "--val-split", help="Hold out this fraction of the training "
                             "split (stratified, seeded) and evaluate it every epoch. Default: 0 (none).")
WORKERS_OPT = typer.Option(None, "--workers", help="Input pipeline threads (default: min(4, CPUs)).")
MAX_BATCHES_OPT = typer.Option(None, "--max-batches", help="Train on at most this many batches per epoch.")
RESUME_OPT = typer.Option(None, "--resume", help="Continue the interrupted run RUN from its last "
                          "complete epoch, with the settings it was started with (re-running the "
                          "same command does the same).")

# convert, and convert --model: importing a model of your own
FORMAT_OPT = typer.Option(ConvertOptions.format, "--format", "-f", help=f"One of {', '.join(formats.FORMAT_CHOICES)}.")
QUANTIZE_OPT = typer.Option(ConvertOptions.quantize, "--quantize", "-q", help=f"One of "
                            f"{', '.join(formats.QUANTIZE_CHOICES)} ('none' is float32). int8 is calibrated on "
                            "--calib-samples training images.")
CALIB_SAMPLES_OPT = typer.Option(ConvertOptions.calib_samples, "--calib-samples", help="Calibration images for int8 "
                                 "(stratified, from the training split only).")
IMPORT_MODEL_OPT = typer.Option(None, "--model", help="Import a model file instead: .keras, legacy "
                                ".h5, or a TF SavedModel folder (a new run folder is made for it).")
IMPORT_DATA_OPT = typer.Option(None, "--data", "--dataset", "-d", help="With --model: its data (default "
                               "fashion_mnist): a built-in name, an image folder (one sub-folder per class; "
                               "train/ and test/ inside, or --test-split) or an .npz (x_test, y_test, "
                               "optional x_train, y_train, class_names).")
IMPORT_SCALE_OPT = typer.Option(None, "--scale", help=f"With --model: the input scale the model expects: "
                                f"{SCALE_HELP}. Default: raw if a Rescaling/Normalization layer sits at the "
                                "model's input, else unit. Recorded in the run; later commands use it.")
INT8_OPT = typer.Option(None, "--int8", help="int8 only, the remedy: ptq (default: calibration "
                        "only), qat (quantisation-aware fine-tuning distilled from your model, then "
                        "export, judged against your model; the fine-tuned model is saved as model_qat.keras), fallback (the "
                        "fewest layers kept in float32 that pass the int8 gates on held-out training "
                        "images), auto (the first of ptq, qat, fallback that passes; ladder recorded).")
QAT_OPT = flag("--qat", help="Short for --int8 qat.")
QAT_EPOCHS_OPT = typer.Option(None, "--qat-epochs", help="--int8 qat/auto: passes over the "
                              "fine-tuning images (default: 300 steps of 64 images).")
QAT_DATA_OPT = typer.Option(None, "--qat-data", help="--int8 qat/auto: images to fine-tune on, labels not "
                            "needed: a folder of images (any layout) or an .npz with x (or x_train). Default: the "
                            "run's training split.")
QAT_LOSS_OPT = typer.Option(ConvertOptions.qat_loss, "--qat-loss", help="--int8 qat/auto: distill (default: the "
                            "fine-tuning follows your model's own outputs, so the int8 file stays your model and is "
                            "judged against it) or labels (retrain on the labels: a different model, judged against "
                            "model_qat.keras).")
QAT_FLOAT_STEM_OPT = typer.Option(ConvertOptions.qat_float_stem, "--qat-float-stem", help="--int8 qat/auto, "
                                   "distilled: auto (default: when the full-int8 fine-tuning still disagrees with "
                                   "your model on held-back images, the first layers are kept float32, within 1.5% "
                                   "of the weights, and it is fine-tuned again; the layers are listed) or off (every "
                                   "op int8, e.g. for accelerators that run nothing else).")
FALLBACK_OPT = typer.Option(ConvertOptions.fallback, "--fallback", help="int8 only: 'auto' is --int8 fallback (kept "
                            "as an alias); 'none' quantises every layer.")
TARGET_CPU_OPT = typer.Option(ConvertOptions.target_cpu, "--target-cpu", help="onnx-int8 only: the CPU the model "
                              "will run on, which picks ONNX Runtime's int8 settings: vnni, avx2 (7-bit weights "
                              "against AVX2 saturation), or auto (this machine's).")
CALIB_DATA_OPT = typer.Option(None, "--calib-data", help="With --model and data without a train "
                              "split: images to calibrate int8 on (folder or .npz; never test images).")

# validate
MAX_DROP_OPT = typer.Option(None, "--max-drop", help="Gate: largest allowed top-1 accuracy drop vs Keras, in points "
                            "(overrides the per-kind default).")
MIN_AGREEMENT_OPT = typer.Option(None, "--min-agreement", help="Gate: smallest allowed top-1 agreement with Keras, "
                                 "in percent (overrides the default).")
MAX_ABS_DIFF_OPT = typer.Option(None, "--max-abs-diff", help="Gate: largest allowed absolute difference of output "
                                "probabilities.")
VALIDATE_BATCH_OPT = typer.Option(ValidateOptions.batch_size, "--batch-size", help="Images per inference call.")
LIMIT_OPT = typer.Option(None, "--limit", "--test-limit", help="Validate on a stratified sample of this many test "
                         "images (default: all of them); validation.json then gives 95% Wilson intervals, and the "
                         "agreement gate fails only if the interval's upper bound is below it.")

# bench
DEVICE_OPT = typer.Option(BenchOptions.device, "--device", help="cpu or gpu. On gpu, targets without a GPU path are "
                          "listed as skipped with the reason (never timed on the CPU instead).")
BATCHES_OPT = typer.Option(",".join(map(str, BenchOptions.batches)), "--batch", help="Batch sizes, comma-separated.")
BENCH_THREADS_OPT = typer.Option(None, "--threads", help="CPU threads, the same for every runtime (default: this "
                                 "machine's physical cores; recorded per row).")
WARMUP_OPT = typer.Option(BenchOptions.warmup, "--warmup", help="Untimed calls before timing.")
MIN_RUNS_OPT = typer.Option(BenchOptions.min_runs, "--min-runs", help="Timed calls per target and batch, at least.")
MIN_TIME_OPT = typer.Option(BenchOptions.min_time, "--min-time", help="Seconds of timed calls per target and batch, "
                            "at least.")
STRICT_OPT = flag("--strict", help="Fail (exit 5) instead of skipping a target that cannot run on --device.")
REFERENCE_OPT = typer.Option(BenchOptions.reference, "--reference/--no-reference", help="Also time the Keras "
                             "original (model.predict and the compiled predict_on_batch).")

# inspect, predict
INSPECT_ARTIFACT_OPT = typer.Option(InspectOptions.artifact, "--artifact", "-a", help="tflite-int8 or onnx-int8.")
SAMPLES_OPT = typer.Option(InspectOptions.samples, "--samples", help="Held-out training images to measure on (never "
                           "test images).")
TOP_OPT = typer.Option(15, "--top", help="Rows to show (the JSON has every layer).")
IMAGES_ARG = typer.Argument(..., help="Image files and/or folders of images (PNG, JPEG, BMP, ...).")
PREDICT_ARTIFACT_OPT = typer.Option(PredictOptions.artifact, "--artifact", "-a", help="Kind to use (e.g. tflite-int8, "
                                    "onnx-fp32, keras). Default: the smallest that passed validation; before "
                                    "validation, the float32 TFLite (else ONNX) file.")
TOP_K_OPT = typer.Option(PredictOptions.top_k, "--top-k", "-k", help="Classes to show per image.")

# pipeline, experiment depth
PIPELINE_DATA_OPT = typer.Option(PipelineOptions.data, "--data", "--dataset", "-d", help="Dataset: a built-in name, "
                                 "an image folder with train/ and test/, or an .npz with x_train, y_train, x_test, "
                                 "y_test.")
PIPELINE_RUN_OPT = typer.Option(None, "--run", help="Run folder (default artifacts/<model>-<dataset>-pipeline).")
OUT_OPT = typer.Option(DepthOptions.out, "--out", help="Folder for depth.json/.md/.png and the runs.")
DEPTHS_OPT = typer.Option(",".join(map(str, DepthOptions.depths)), "--depths", help="Depths to train (each as plain "
                          "and residual).")
DEVICE_NOTE_OPT = typer.Option(DepthOptions.device_note, "--device-note", help="Where it ran (recorded in the "
                               "results).")


PORT_OPT = typer.Option(WebOptions.port, "--port", help="Port on 127.0.0.1 (0: any free port).")
SAMPLES_OPT = typer.Option(WebOptions.samples, "--samples", help="Test images to click through.")


def _options(cls, values: dict, **given):
    """An options object from a command's parameters named like its fields (plus `given`)."""
    names = {f.name for f in fields(cls)} - set(given)
    return cls(**{k: v for k, v in values.items() if k in names}, **given)


def _split(values: Optional[List[str]]) -> Optional[List[str]]:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _ints(text: str, flag_name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag_name} takes comma-separated whole numbers, got '{text}'") from None
    if not values:
        raise UsageError(f"{flag_name} is empty")
    return values


def _int8(int8: Optional[str], qat: bool) -> Optional[str]:
    if qat and int8 not in (None, "qat"):
        raise UsageError(f"--qat is --int8 qat; it cannot be combined with --int8 {int8}")
    return "qat" if qat else int8


def _version(value: bool):
    if value:
        out.print(f"resexport {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = flag("--debug", help="Show full tracebacks instead of one-line errors, and TensorFlow's native log."),
    verbose: bool = flag("--verbose", "-v", help="Log what the library does (to stderr)."),
    custom_objects: Optional[List[str]] = typer.Option(
        None, "--custom-objects", help="A .py file or an importable module that defines your model's custom "
        "layers or subclassed model (registered with keras.saving.register_keras_serializable); repeatable."),
):
    state["debug"] = debug
    show_native(debug)
    if not debug:
        hide_native_stderr_for_process()  # C++ log lines of TensorFlow/LiteRT/ONNX Runtime; Python's own stderr stays
        if not verbose:
            warnings.simplefilter("ignore")  # libraries' deprecation warnings are not the user's business
    state["custom_objects"] = list(custom_objects or [])
    if debug and _USER_TF_LOG_LEVEL is None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not verbose:
        for noisy in ("tensorflow", "absl", "tf2onnx", "h5py"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


# ------------------------------------------------------------------------------ train

@app.command(short_help="Train a registry model into a new run folder.")
@boundary(tensorflow=True)
def train(
    model: str = MODEL_OPT,
    data: Optional[str] = TRAIN_DATA_OPT,
    scale: Optional[str] = TRAIN_SCALE_OPT,
    test_split: Optional[float] = TEST_SPLIT_OPT,
    recipe: str = _recipe_opt(TrainOptions.recipe),
    epochs: Optional[int] = EPOCHS_OPT,
    batch_size: Optional[int] = BATCH_SIZE_OPT,
    lr: Optional[float] = LR_OPT,
    bn_momentum: Optional[float] = BN_OPT,
    seed: int = SEED_OPT,
    run: Optional[Path] = TRAIN_RUN_OPT,
    force: bool = flag("--force", help="Replace an existing run folder."),
    data_dir: Optional[Path] = DATA_OPT,
    train_limit: Optional[int] = TRAIN_LIMIT_OPT,
    test_limit: Optional[int] = TEST_LIMIT_OPT,
    devices: str = DEVICES_OPT,
    augment: Optional[str] = AUGMENT_OPT,
    val_split: float = VAL_SPLIT_OPT,
    workers: Optional[int] = WORKERS_OPT,
    max_batches: Optional[int] = MAX_BATCHES_OPT,
    resume: Optional[Path] = RESUME_OPT,
    json_out: bool = JSON_OPT,
):
    """Train a registry model and create its run folder (model.keras, history.json, manifest.json).
    Input is streamed; every epoch is checkpointed, so an interrupted run continues where it stopped."""
    options = _options(TrainOptions, locals())
    result = api.train(options, run=run, resume=resume, force=force, progress=progress(json_out))
    model, data = result.run.model_name, result.run.dataset_name
    if json_out:
        return print_json({"run": str(result.run), "model": model, "dataset": data,
                           "test_accuracy": result.test_accuracy, "train_seconds": round(result.seconds, 1),
                           "epochs": result.epochs, "resumed": result.resumed})
    out.print(f"trained [bold]{model}[/] on {data}: test accuracy [bold]{result.test_accuracy:.2%}[/] in "
              f"{result.seconds:.0f}s -> {escape(str(result.run))}" + (" (resumed)" if result.resumed else ""))


# ------------------------------------------------------------------------------ convert

@app.command(short_help="Export a run's model to TFLite and/or ONNX.",
             help="Export a run's model to TFLite and/or ONNX; every artifact is recorded in manifest.json. "
                  "Artifacts already made from the same model are kept (reported 'up to date').\n\n"
                  f"Kinds: {formats.kinds_help()}.")
@boundary(tensorflow=True)
def convert(
    run: Optional[Path] = RUN_OPT,
    model: Optional[Path] = IMPORT_MODEL_OPT,
    format: str = FORMAT_OPT,  # noqa: A002  (ConvertOptions' field)
    quantize: str = QUANTIZE_OPT,
    calib_samples: int = CALIB_SAMPLES_OPT,
    data: Optional[str] = IMPORT_DATA_OPT,
    scale: Optional[str] = IMPORT_SCALE_OPT,
    test_split: Optional[float] = TEST_SPLIT_OPT,
    calib_data: Optional[Path] = CALIB_DATA_OPT,
    data_dir: Optional[Path] = DATA_OPT,
    force: bool = flag("--force", help="Replace artifacts made from another model or calibration."),
    int8: Optional[str] = INT8_OPT,
    qat: bool = QAT_OPT,
    qat_epochs: Optional[float] = QAT_EPOCHS_OPT,
    qat_data: Optional[Path] = QAT_DATA_OPT,
    qat_loss: str = QAT_LOSS_OPT,
    qat_float_stem: str = QAT_FLOAT_STEM_OPT,
    fallback: str = FALLBACK_OPT,
    target_cpu: str = TARGET_CPU_OPT,
    unsafe: bool = UNSAFE_OPT,
    json_out: bool = JSON_OPT,
):
    options = _options(ConvertOptions, locals(), int8=_int8(int8, qat))
    result = api.convert(model, run=run, options=options, force=force, progress=progress(json_out))
    rows = convert_rows(result.run, result.artifacts)
    if json_out:
        print_json({"run": str(result.run), "artifacts": rows})
    else:
        print_table(f"converted {result.run}", CONVERT_HEADERS, [[r["kind"], r["file"], r["size"], r["status"],
                                                                  r["seconds"], str(r.get("float_layers", ""))]
                                                                 for r in rows])
    result.check()  # a kind that could not be made is ours to fix (exit 70), never the user's bad input


# ------------------------------------------------------------------------------ inspect

@app.command(short_help="Per-layer int8 error of an artifact, worst first.")
@boundary(tensorflow=True)
def inspect(
    run: Optional[Path] = RUN_OPT,
    artifact: str = INSPECT_ARTIFACT_OPT,
    samples: int = SAMPLES_OPT,
    top: int = TOP_OPT,
    data_dir: Optional[Path] = DATA_OPT,
    unsafe: bool = UNSAFE_OPT,
    json_out: bool = JSON_OPT,
):
    """Per-layer quantisation error of an int8 artifact, worst first: each layer's int8 output against
    the same layer in float on the same input (TFLite QuantizationDebugger; ONNX Runtime's QDQ debug
    tools), re-made with the run's own converter settings and calibration set."""
    report = api.inspect(run, options=_options(InspectOptions, locals()), progress=progress(json_out))
    if json_out:
        return print_json(report)
    print_table(f"{artifact}: the {min(top, report['count'])} of {report['count']} quantised layers that lose most "
                f"({report['images']['count']} held-out training images)", INSPECT_HEADERS,
                inspect_rows(report, top), left=("#", "op", "output tensor", "detail", "float now"))
    if report.get("fallback") == "auto":
        note(f"{len(report['float_layers'])} layer(s) kept in float by --fallback auto")


# ------------------------------------------------------------------------------ validate

@app.command(short_help="Check every artifact against the Keras original on the test set.",
             help="Check every artifact against the Keras original on the real test set: accuracy, change vs "
                  "Keras, top-1 agreement, output difference (as probabilities), batch invariance (batch 1 / "
                  "batch N / shuffled), per-class accuracy. Writes validation.json; exits 4 naming each artifact "
                  "and metric that misses its gate.\n\n"
                  f"Default gates: {formats.gates_help()}.")
@boundary
def validate(
    run: Optional[Path] = RUN_OPT,
    artifacts: Optional[List[str]] = VALIDATE_ARTIFACTS_OPT,
    max_drop: Optional[float] = MAX_DROP_OPT,
    min_agreement: Optional[float] = MIN_AGREEMENT_OPT,
    max_abs_diff: Optional[float] = MAX_ABS_DIFF_OPT,
    batch_size: int = VALIDATE_BATCH_OPT,
    threads: Optional[int] = THREADS_OPT,
    limit: Optional[int] = LIMIT_OPT,
    data: Optional[str] = DATASET_OPT,
    data_dir: Optional[Path] = DATA_OPT,
    unsafe: bool = UNSAFE_OPT,
    runtimes: Optional[List[str]] = typer.Option(None, "--runtimes", "--runtime", help="Runtimes to run each "
                                                 "file on (comma-separated or repeated; default: every installed one "
                                                 "that reads it; one named but not installed: exit 5). "
                                                 f"{formats.runtimes_help()}."),
    json_out: bool = JSON_OPT,
):
    options = _options(ValidateOptions, locals(), artifacts=_split(artifacts), runtimes=_split(runtimes))
    result = api.validate(run, options=options, progress=progress(json_out))
    report = result.report
    if json_out:
        print_json(report)
    else:
        print_table(f"validation on {report['dataset']['samples']} {report['dataset']['name']} test images "
                    f"(Keras accuracy {result.reference_accuracy:.2%})", VALIDATION_HEADERS, validation_rows(report))
    for warning in result.warnings:
        warn(warning)
    result.check()


# ------------------------------------------------------------------------------ bench

@app.command(short_help="Time every artifact and the Keras original.")
@boundary
def bench(
    run: Optional[Path] = RUN_OPT,
    artifacts: Optional[List[str]] = BENCH_ARTIFACTS_OPT,
    device: str = DEVICE_OPT,
    batch: str = BATCHES_OPT,
    threads: Optional[int] = BENCH_THREADS_OPT,
    warmup: int = WARMUP_OPT,
    min_runs: int = MIN_RUNS_OPT,
    min_time: float = MIN_TIME_OPT,
    strict: bool = STRICT_OPT,
    reference: bool = REFERENCE_OPT,
    data: Optional[str] = DATASET_OPT,
    data_dir: Optional[Path] = DATA_OPT,
    runtimes: Optional[List[str]] = typer.Option(None, "--runtimes", "--runtime", help="Runtimes to run each "
                                                 "file on (comma-separated or repeated; default: every installed one "
                                                 "that reads it; one named but not installed: exit 5). "
                                                 f"{formats.runtimes_help()}."),
    json_out: bool = JSON_OPT,
):
    """Time every artifact and the Keras original on real test images: p50/p90/p99/mean/std latency,
    throughput, cold start (load + first inference), engine and provider used. Writes bench.json."""
    options = _options(BenchOptions, locals(), artifacts=_split(artifacts), batches=_ints(batch, "--batch"),
                       runtimes=_split(runtimes))
    report = api.bench(run, options=options, progress=progress(json_out)).report
    if json_out:
        return print_json(report)
    env = report["environment"]
    print_table(f"bench on {env['device']}: {env['cpu']} ({env['cores']} cores, int8 ISA: "
                f"{env['cpu_int8']['summary']})"
                + (f", GPU {env['gpu']}" if env.get("gpu") else ""), BENCH_HEADERS, bench_rows(report))


# ------------------------------------------------------------------------------ profile

@app.command(short_help="Time per op of each artifact: where the time goes.")
@boundary
def profile(
    run: Optional[Path] = RUN_OPT,
    artifacts: Optional[List[str]] = typer.Option(None, "--artifact", "--artifacts", "-a", help="Kinds to profile "
                                                  "(comma-separated or repeated; default: every artifact in the run)."),
    runtimes: Optional[List[str]] = typer.Option(None, "--runtimes", "--runtime", help="Runtimes to run each file on "
                                                 f"(default: every installed one that reads it). {formats.runtimes_help()}."),
    runs: int = typer.Option(ProfileOptions.runs, "--runs", help="Calls to profile (after one warm-up call)."),
    batch: int = typer.Option(ProfileOptions.batch, "--batch", help="Images per call."),
    threads: Optional[int] = BENCH_THREADS_OPT,
    top: int = typer.Option(8, "--top", help="Ops to show per target (the JSON has every op)."),
    data_dir: Optional[Path] = DATA_OPT,
    json_out: bool = JSON_OPT,
):
    """Time per op (node, op type, the Keras layer where the name tells, share of the total, calls) of each
    artifact on each runtime: ONNX Runtime's profiler, OpenVINO's per-layer counters; for LiteRT, which ops
    XNNPACK runs and which built-in kernels do (its per-op time is not reachable from Python). Writes
    profile.json; report.md then has a "Where the time goes" section."""
    options = _options(ProfileOptions, locals(), artifacts=_split(artifacts), runtimes=_split(runtimes))
    doc = api.profile(run, options=options)
    if json_out:
        return print_json(doc)
    print_table(f"where the time goes (batch {doc['batch']}, {doc['runs']} calls, {doc['threads']} threads)",
                PROFILE_HEADERS, profile_rows(doc, top), left=("target", "node", "op", "layer", "kernel / runs in"))
    for t in doc["targets"]:
        if t.get("available") and t.get("cannot_show"):
            note(f"{t['target']}: shows {t['shows']}; cannot show {t['cannot_show']}")


# ------------------------------------------------------------------------------ report

@app.command(short_help="Write report.md and report.png from a run's results.")
@boundary
def report(run: Optional[Path] = RUN_OPT, json_out: bool = JSON_OPT):
    """Join manifest, validation and bench results into report.md and report.png (accuracy vs
    latency, marker size by file size, Keras marked) and print the table."""
    table = api.report(run)
    if json_out:
        print_json(table)
    else:
        _print_report(table)


def _print_report(table: dict) -> None:
    print_table(f"{table['model']} on {table['dataset']}: {table['markdown']}", SUMMARY_HEADERS, summary_rows(table))
    for warning in table.get("warnings", []):
        warn(warning)
    if table.get("plot"):
        print_verbatim(f"plot: {table['plot']}")


# ------------------------------------------------------------------------------ predict

@app.command(short_help="Top-k classes for your images from any artifact.")
@boundary
def predict(
    images: List[Path] = IMAGES_ARG,
    run: Optional[Path] = RUN_OPT,
    artifact: Optional[str] = PREDICT_ARTIFACT_OPT,
    top_k: int = TOP_K_OPT,
    threads: Optional[int] = THREADS_OPT,
    unsafe: bool = UNSAFE_OPT,
    json_out: bool = JSON_OPT,
):
    """Top-k classes with probabilities for each image, preprocessed as the run records (size, colour,
    scale); a logits model's outputs are turned into probabilities with softmax."""
    result = api.predict(images, run=run, options=_options(PredictOptions, locals()))
    if json_out:
        return print_json(result)
    a = result["artifact"]
    k = min(top_k, max((len(r["top"]) for r in result["predictions"]), default=0))
    print_table(f"{a['file']} ({a['kind']}: {a['why']})", ["image", *[f"#{i + 1}" for i in range(k)]],
                [[r["file"], *[f"{t['class']} {t['probability']:.1%}" for t in r["top"]]] for r in result["predictions"]],
                left=("image",))


# ------------------------------------------------------------------------------ web

@app.command(short_help="Serve a page that runs the run's files in your browser (127.0.0.1 only).")
@boundary
def web(
    run: Optional[Path] = RUN_OPT,
    port: int = PORT_OPT,
    data: Optional[str] = DATASET_OPT,
    samples: int = SAMPLES_OPT,
):
    """Serve the run's .onnx files (onnxruntime-web) and .tflite files (LiteRT.js), on WASM in the browser
    that opens the page: pick or drop images or click through test images; every kind's top-3 and latency
    side by side, the Keras reference's answer (after `resexport validate`) and where they disagree."""
    page = api.web(run, options=_options(WebOptions, locals()))
    note(f"serving {len(page.kinds)} files of {page.server.url}: open {page.url} (Ctrl-C stops)")
    try:
        page.server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        page.close()


# ------------------------------------------------------------------------------ pipeline

@app.command(short_help="The whole job with no flags: train, convert, validate, bench, report.")
@boundary(tensorflow=True)
def pipeline(
    model: str = MODEL_OPT,
    data: str = PIPELINE_DATA_OPT,
    recipe: str = _recipe_opt(PipelineOptions.recipe),
    epochs: Optional[int] = EPOCHS_OPT,
    lr: Optional[float] = LR_OPT,
    bn_momentum: Optional[float] = BN_OPT,
    seed: int = SEED_OPT,
    run: Optional[Path] = PIPELINE_RUN_OPT,
    train_limit: Optional[int] = TRAIN_LIMIT_OPT,
    test_limit: Optional[int] = TEST_LIMIT_OPT,
    force: bool = flag("--force", help="Redo every stage even if its inputs are unchanged."),
    data_dir: Optional[Path] = DATA_OPT,
    json_out: bool = JSON_OPT,
):
    """The whole job, no flags needed: train the default model on Fashion-MNIST, convert it to every
    kind, validate on the full test set, bench on CPU, report. Stages whose inputs are unchanged (by
    hash) are re-used. Exits 4 if an artifact fails validation."""
    def on_stage(name, status, seconds):
        if not json_out:
            err.print(f"[bold]{name}[/]: {status} ({seconds:.1f}s)")

    result = run_pipeline(_options(PipelineOptions, locals()), run=run, force=force, progress=progress(json_out),
                          on_stage=on_stage)
    if json_out:
        print_json({k: v for k, v in result.items() if k != "report"} | {"report": result["report"].get("markdown")})
    else:
        _print_report(result["report"])
    if not result["validation_passed"]:
        raise ValidationFailed(f"an artifact failed validation (details in {result['run']}/validation.json)")


# ------------------------------------------------------------------------------ experiment

experiment_app = typer.Typer(help="Studies from the source documents.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("depth", short_help="Seed 003: plain vs residual CNNs at 12/20/32/50 layers.")
@boundary(tensorflow=True)
def experiment_depth(
    out_dir: Path = OUT_OPT,
    depths: str = DEPTHS_OPT,
    recipe: str = _recipe_opt(DepthOptions.recipe),
    epochs: Optional[int] = EPOCHS_OPT,
    lr: Optional[float] = LR_OPT,
    bn_momentum: Optional[float] = BN_OPT,
    seed: int = SEED_OPT,
    train_limit: Optional[int] = TRAIN_LIMIT_OPT,
    test_limit: Optional[int] = TEST_LIMIT_OPT,
    device_note: str = DEVICE_NOTE_OPT,
    force: bool = flag("--force", help="Retrain every model, replacing runs already in --out."),
    data_dir: Optional[Path] = DATA_OPT,
    json_out: bool = JSON_OPT,
):
    """Seed 003's study: plain vs residual CNNs at 12/20/32/50 layers on Fashion-MNIST, beside the
    seed's reported accuracies. Writes depth.json, depth.md and depth.png.

    Models already trained in --out with the same settings are reused, so a long study can be run
    a few depths at a time (e.g. --depths 12,20 then --depths 12,20,32,50)."""
    def on_model(name, acc, seconds, reused):
        if not json_out:
            note(f"{name}: {acc:.2%} ({seconds:.0f}s{', reused' if reused else ''})")

    options = _options(DepthOptions, locals(), out=out_dir, depths=_ints(depths, "--depths"))
    doc = api.depth_study(options, force=force, progress=progress(json_out), on_model=on_model)
    if json_out:
        print_json(doc)
    else:
        print_verbatim((out_dir / "depth.md").read_text())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
