"""The `resexport` command line: parse, call the library, print. No logic lives here.

Every command runs inside `_boundary`, the one place where the project's errors become a one-line
message on stderr and a documented exit code (see exporter/errors.py and README, Troubleshooting).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Iterator, List, Optional

# Quiet TensorFlow's C++ chatter before anything can import it (--debug turns it back on).
_USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from exporter import __version__
from exporter.errors import EXIT_CODES, ResexportError

app = typer.Typer(
    name="resexport",
    help="Take a Keras ResNet to the edge: train, convert to TFLite/ONNX, validate every artifact "
         "against the Keras original on the real test set, benchmark, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(width=None if sys.stdout.isatty() else 200)  # results (tables, JSON)
err = Console(stderr=True)           # progress and messages
_state = {"debug": False}


# ------------------------------------------------------------------------------ plumbing

class RichProgress:
    """exporter.progress.Progress on Rich, drawn on stderr (stdout stays machine-readable)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator:
        if not self.enabled:
            from exporter.progress import NULL

            with NULL.task(description, total) as t:
                yield t
            return
        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn()] if total else [SpinnerColumn(), TextColumn("{task.description}"),
                                                       TimeElapsedColumn()]
        with Progress(*columns, console=err, transient=False) as bar:
            tid = bar.add_task(description, total=total)

            class _T:
                def advance(self, n: int = 1) -> None:
                    bar.advance(tid, n)

                def describe(self, text: str) -> None:
                    bar.update(tid, description=f"{description}: {text}")

            yield _T()


def _progress(json_out: bool = False) -> RichProgress:
    return RichProgress(enabled=not json_out and err.is_terminal or os.environ.get("RESEXPORT_PROGRESS") == "1")


@contextlib.contextmanager
def _native_stderr_hidden() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for a while (Python's own stderr object is untouched)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow (and Keras) now, with fd 2 hidden: its C++ start-up lines ("Could not find
    cuda drivers", written before absl logging is set up) ignore TF_CPP_MIN_LOG_LEVEL and would
    bury the one-line messages. Skipped under --debug, other Keras backends, or without TensorFlow;
    any failure is left for the real import to report."""
    if _state["debug"] or "tensorflow" in sys.modules or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    try:
        if importlib.util.find_spec("tensorflow") is None:
            return
        with _native_stderr_hidden():
            import keras  # noqa: F401  (imports tensorflow)
    except BaseException:  # noqa: BLE001  (the real import, later, reports it properly)
        return


def _boundary(fn=None, *, tensorflow: bool = False):
    """Run a command; map errors to one line + exit code. --debug shows tracebacks. With
    tensorflow=True, TensorFlow is imported first without its native start-up noise."""
    if fn is None:
        return functools.partial(_boundary, tensorflow=tensorflow)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            if tensorflow:
                _import_tensorflow_quietly()
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except ResexportError as exc:
            if _state["debug"]:
                raise
            err.print(f"[bold red]error[/] ({exc.kind}): {escape(exc.one_line())}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]: nothing half-written was left behind")
            raise typer.Exit(EXIT_CODES["interrupted"]) from None
        except Exception as exc:  # a bug: say so in one line, keep the traceback behind --debug
            if _state["debug"]:
                raise
            text = " ".join(str(exc).split())[:300]
            err.print(f"[bold red]internal error[/]: {type(exc).__name__}: {escape(text)} "
                      "(rerun with --debug for the traceback, and please report it)",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_CODES["internal"]) from None

    return wrapper


def _print_json(obj) -> None:
    from exporter.fsutil import _json_default

    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _version(value: bool):
    if value:
        out.print(f"resexport {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors, and TensorFlow's native log."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what the library does (to stderr)."),
):
    _state["debug"] = debug
    if debug and _USER_TF_LOG_LEVEL is None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not verbose:
        for noisy in ("tensorflow", "absl", "tf2onnx", "h5py"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


# ------------------------------------------------------------------------------ train

@app.command()
@_boundary(tensorflow=True)
def train(
    model: str = typer.Option("resmini", "--model", "-m", help="Registry model: resmini (CPU default), "
                              "plain12/20/32/50, residual12/20/32/50 (seed 003), resnet18/34 (seed 000)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="fashion_mnist, mnist or cifar10 "
                                          "(default: the model's own dataset)."),
    recipe: str = typer.Option("fast", "--recipe", help="'fast' (CPU default: Adam 2e-3 cosine, batch 128, "
                               "6 epochs) or 'seed' (seed 003: Adam 1e-4 decay 1e-6, batch 150, 25 epochs)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the recipe's epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Override the recipe's batch size."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Override the recipe's learning rate."),
    bn_momentum: Optional[float] = typer.Option(None, "--bn-momentum", help="BatchNorm moving-average momentum "
                                                "(default: the model's own). Use 0.9 for short runs."),
    seed: int = typer.Option(0, "--seed", help="Random seed (weights, shuffling)."),
    run: Optional[Path] = typer.Option(None, "--run", help="Run folder to create (default: "
                                       "artifacts/<model>-<dataset>-<time>)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run folder."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where the dataset files are "
                                            "(else $RESEXPORT_DATA, ~/.keras/datasets, /usr/share/datasets)."),
    train_limit: Optional[int] = typer.Option(None, "--train-limit", help="Train on a stratified subset "
                                              "of this many images (quick runs)."),
    test_limit: Optional[int] = typer.Option(None, "--test-limit", help="Evaluate on a stratified subset."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Train a registry model and create its run folder (model.keras, history.json, manifest.json)."""
    from exporter import data as data_mod
    from exporter import manifest as mf
    from exporter.models import MODELS, build_model  # noqa: F401  (validates the name early)
    from exporter.train import resolve_recipe, train as train_fn

    if model not in MODELS:
        from exporter.errors import UsageError

        raise UsageError(f"unknown model '{model}'", hint=f"choose one of: {', '.join(MODELS)}")
    dataset = dataset or MODELS[model].dataset
    r = resolve_recipe(recipe, epochs=epochs, batch_size=batch_size, lr=lr, bn_momentum=bn_momentum)
    run = run or mf.artifacts_root() / mf.new_run_name(model, dataset)
    ds = data_mod.load_dataset(dataset, data_dir=data_dir, train_limit=train_limit, test_limit=test_limit)
    result = train_fn(model_name=model, dataset=ds, run=run, recipe=r, seed=seed, force=force,
                      progress=_progress(json_out))
    summary = {"run": str(result.run), "model": model, "dataset": dataset,
               "test_accuracy": result.test_accuracy, "train_seconds": round(result.seconds, 1),
               "epochs": result.epochs}
    if json_out:
        _print_json(summary)
    else:
        out.print(f"trained [bold]{model}[/] on {dataset}: test accuracy "
                  f"[bold]{result.test_accuracy:.2%}[/] in {result.seconds:.0f}s -> {escape(str(result.run))}")


# ------------------------------------------------------------------------------ shared options

RUN_OPT = typer.Option(None, "--run", help="Run folder (default: the newest under artifacts/).")
DATA_OPT = typer.Option(None, "--data-dir", help="Where the dataset files are (else the usual places).")
THREADS_OPT = typer.Option(None, "--threads", help="CPU threads for TFLite/ONNX Runtime (default: the runtime's).")
UNSAFE_OPT = typer.Option(False, "--unsafe", help="Allow Keras models with Lambda layers (runs code from the file).")
JSON_OPT = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


def _run_dataset(run: Path, data_dir, test_limit=None):
    from exporter import data as data_mod
    from exporter import manifest as mf

    man = mf.read_manifest(run)
    return data_mod.load_dataset(man["dataset"]["name"], data_dir=data_dir, test_limit=test_limit)


def _split(values: Optional[List[str]]) -> Optional[List[str]]:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


# ------------------------------------------------------------------------------ convert

@app.command()
@_boundary(tensorflow=True)
def convert(
    run: Optional[Path] = RUN_OPT,
    model: Optional[Path] = typer.Option(None, "--model", help="Import a model file instead: .keras, legacy "
                                         ".h5, or a TF SavedModel folder (a new run folder is made for it)."),
    fmt: str = typer.Option("all", "--format", "-f", help="tflite, onnx or all."),
    quantize: str = typer.Option("all", "--quantize", "-q", help="none (float32), float16, dynamic, int8 or all. "
                                 "int8 is full-integer TFLite / QDQ ONNX, calibrated on --calib-samples "
                                 "training images."),
    calib_samples: int = typer.Option(500, "--calib-samples", help="Calibration images for int8 "
                                      "(stratified, from the training split only)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="With --model: the dataset it was "
                                          "trained on (default fashion_mnist)."),
    data_dir: Optional[Path] = DATA_OPT,
    force: bool = typer.Option(False, "--force", help="Replace artifacts made from another model or calibration."),
    fallback: str = typer.Option("none", "--fallback", help="int8 only: 'auto' keeps the fewest layers in float32 "
                                 "needed to pass the int8 gate (measured on held-out training images; recorded "
                                 "as float_layers in the manifest); 'none' quantises every layer."),
    target_cpu: str = typer.Option("auto", "--target-cpu", help="onnx-int8 only: the CPU the model will run on, "
                                   "which picks ONNX Runtime's int8 settings: vnni, avx2 (7-bit weights against "
                                   "AVX2 saturation), or auto (this machine's)."),
    unsafe: bool = UNSAFE_OPT,
    json_out: bool = JSON_OPT,
):
    """Export a run's model to TFLite and/or ONNX; every artifact is recorded in manifest.json.

    Kinds: tflite-fp32, tflite-fp16, tflite-dynamic, tflite-int8, onnx-fp32, onnx-fp16, onnx-int8.
    Artifacts already made from the same model are kept (reported 'up to date')."""
    from exporter import data as data_mod
    from exporter import formats
    from exporter import manifest as mf
    from exporter.convert import convert as convert_fn, import_model

    kinds = formats.select(fmt, quantize)
    if model is not None:
        ds = data_mod.load_dataset(dataset or "fashion_mnist", data_dir=data_dir)
        run = import_model(model, run=run, dataset=ds, force=force, unsafe=unsafe)
        force = False  # the new run has no artifacts yet
    else:
        run = mf.resolve_run(run)
        ds = _run_dataset(run, data_dir)
    status = convert_fn(run=run, kinds=kinds, dataset=ds, calib_samples=calib_samples, force=force,
                        unsafe=unsafe, fallback=fallback, target_cpu=target_cpu, progress=_progress(json_out))
    man = mf.read_manifest(run)
    rows = []
    for k, st in status.items():
        e = man["artifacts"][k]
        rows.append({"kind": k, "status": st, "file": e["file"], "bytes": e["bytes"], "seconds": e.get("seconds"),
                     **({"float_layers": len(e.get("float_layers") or [])} if "fallback" in e else {})})
    if json_out:
        _print_json({"run": str(run), "artifacts": rows})
        return
    table = Table(title=f"converted {run}")
    for col in ("kind", "file", "size", "status", "seconds", "float layers"):
        table.add_column(col, justify="right" if col in ("size", "seconds", "float layers") else "left")
    for r in rows:
        table.add_row(r["kind"], r["file"], f"{r['bytes'] / 1024:.1f} KiB", r["status"], f"{r['seconds']:.1f}",
                      str(r.get("float_layers", "")))
    out.print(table)


# ------------------------------------------------------------------------------ inspect

@app.command()
@_boundary(tensorflow=True)
def inspect(
    run: Optional[Path] = RUN_OPT,
    artifact: str = typer.Option("tflite-int8", "--artifact", "-a", help="tflite-int8 or onnx-int8."),
    samples: int = typer.Option(200, "--samples", help="Held-out training images to measure on (never test images)."),
    top: int = typer.Option(15, "--top", help="Rows to show (the JSON has every layer)."),
    data_dir: Optional[Path] = DATA_OPT,
    unsafe: bool = UNSAFE_OPT,
    json_out: bool = JSON_OPT,
):
    """Per-layer quantisation error of an int8 artifact, worst first: each layer's int8 output against
    the same layer in float on the same input (TFLite QuantizationDebugger; ONNX Runtime's QDQ debug
    tools), re-made with the run's own converter settings and calibration set."""
    from exporter import manifest as mf
    from exporter.inspect import inspect as inspect_fn

    run = mf.resolve_run(run)
    if samples <= 0:
        from exporter.errors import UsageError

        raise UsageError(f"--samples must be positive, got {samples}")
    report = inspect_fn(run=run, kind=artifact, dataset=_run_dataset(run, data_dir), samples=samples, unsafe=unsafe,
                        progress=_progress(json_out))
    if json_out:
        _print_json(report)
        return
    table = Table(title=f"{artifact}: the {min(top, report['count'])} of {report['count']} quantised layers that lose "
                        f"most ({report['images']['count']} held-out training images)")
    for col in ("#", "op", "output tensor", "worst channel noise/std", "tensor noise/signal", "detail", "float now"):
        table.add_column(col, justify="right" if col in ("#", "worst channel noise/std", "tensor noise/signal") else "left")
    for i, r in enumerate(report["layers"][:top], 1):
        detail = (f"rmse/scale {r['rmse_over_scale']:.3f}" if "rmse_over_scale" in r
                  else f"SQNR {r['sqnr_db']:.1f} dB" if r.get("sqnr_db") is not None else "")
        name = r["name"] if len(r["name"]) <= 70 else "…" + r["name"][-69:]
        table.add_row(str(i), r["op"], name, f"{r['channel_noise_to_signal']:.4f}", f"{r['noise_to_signal']:.4f}", detail,
                      "yes" if r.get("float_in_artifact") else "")
    out.print(table)
    if report.get("fallback") == "auto":
        out.print(f"{len(report['float_layers'])} layer(s) kept in float by --fallback auto", highlight=False)


# ------------------------------------------------------------------------------ validate

@app.command()
@_boundary
def validate(
    run: Optional[Path] = RUN_OPT,
    artifacts: Optional[List[str]] = typer.Option(None, "--artifacts", "-a", help="Kinds to check "
                                                  "(comma-separated or repeated; default: all in the run)."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Gate: largest allowed top-1 accuracy drop "
                                             "vs Keras, in points (overrides the per-kind default)."),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Gate: smallest allowed top-1 "
                                                  "agreement with Keras, in percent (overrides the default)."),
    max_abs_diff: Optional[float] = typer.Option(None, "--max-abs-diff", help="Gate: largest allowed absolute "
                                                 "difference of output probabilities."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per inference call."),
    threads: Optional[int] = THREADS_OPT,
    test_limit: Optional[int] = typer.Option(None, "--test-limit", help="Use a stratified subset of the test "
                                             "set (default: all of it)."),
    data_dir: Optional[Path] = DATA_OPT,
    unsafe: bool = UNSAFE_OPT,
    json_out: bool = JSON_OPT,
):
    """Check every artifact against the Keras original on the real test set: accuracy, change vs
    Keras, top-1 agreement, output difference, per-class accuracy. Exits 4 naming each artifact and
    metric that misses its gate (defaults per kind: fp32 agreement >= 99.9%, fp16 >= 99.5%,
    dynamic >= 99%, int8 drop <= 1 pt and agreement >= 97%). Writes validation.json."""
    from exporter import manifest as mf
    from exporter.errors import ValidationFailed
    from exporter.validate import failure_summary, validate as validate_fn

    run = mf.resolve_run(run)
    ds = _run_dataset(run, data_dir, test_limit)
    report = validate_fn(run=run, dataset=ds, kinds=_split(artifacts), batch_size=batch_size, threads=threads,
                         overrides={"max_drop": max_drop, "min_agreement": min_agreement,
                                    "max_abs_diff": max_abs_diff}, unsafe=unsafe, progress=_progress(json_out))
    if json_out:
        _print_json(report)
    else:
        _print_validation(report)
    if not report["passed"]:
        raise ValidationFailed(f"{failure_summary(report)} (details in {run}/validation.json)")


def _print_validation(report: dict) -> None:
    ref = report["reference"]
    table = Table(title=f"validation on {report['dataset']['samples']} {report['dataset']['name']} test images "
                        f"(Keras accuracy {ref['accuracy']:.2%})")
    for col in ("artifact", "size", "accuracy", "vs Keras", "agreement", "max |diff|", "mean |diff|",
                "moved most", "gate"):
        table.add_column(col, justify="left" if col in ("artifact", "moved most", "gate") else "right")
    for r in report["artifacts"]:
        moved = ", ".join(f"{m['class']} {m['change_points']:+.1f}" for m in r["moved_most"][:2]) or "-"
        gate = "[green]pass[/]" if r["passed"] else "[red]FAIL[/] " + "; ".join(r["failures"])
        size = f"{r['bytes'] / 1024:.0f} KiB" if r.get("bytes") else "?"
        table.add_row(r["kind"], size, f"{r['accuracy']:.2%}", f"{r['change_points']:+.2f} pt",
                      f"{r['agreement']:.2f}%", f"{r['max_abs_diff']:.1e}", f"{r['mean_abs_diff']:.1e}", moved, gate)
    out.print(table)


# ------------------------------------------------------------------------------ bench

def _ints(text: str, flag: str) -> tuple[int, ...]:
    from exporter.errors import UsageError

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated whole numbers, got '{text}'") from None
    if not values:
        raise UsageError(f"{flag} is empty")
    return values


@app.command()
@_boundary
def bench(
    run: Optional[Path] = RUN_OPT,
    artifacts: Optional[List[str]] = typer.Option(None, "--artifacts", "-a", help="Kinds to time (default: all; "
                                                  "the Keras reference is always timed too, unless --no-reference)."),
    device: str = typer.Option("cpu", "--device", help="cpu or gpu. On gpu, targets without a GPU path are "
                               "listed as skipped with the reason (never timed on the CPU instead)."),
    batch: str = typer.Option("1,8,64", "--batch", help="Batch sizes, comma-separated."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads, the same for every runtime "
                                          "(default: this machine's physical cores; recorded per row)."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed calls before timing."),
    min_runs: int = typer.Option(20, "--min-runs", help="Timed calls per target and batch, at least."),
    min_time: float = typer.Option(1.0, "--min-time", help="Seconds of timed calls per target and batch, at least."),
    strict: bool = typer.Option(False, "--strict", help="Fail (exit 5) instead of skipping a target that cannot "
                                "run on --device."),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Also time the Keras original "
                                   "(model.predict and the compiled predict_on_batch)."),
    data_dir: Optional[Path] = DATA_OPT,
    json_out: bool = JSON_OPT,
):
    """Time every artifact and the Keras original on real test images: p50/p90/p99/mean/std latency,
    throughput, cold start (load + first inference), memory increase, engine and provider used.
    Writes bench.json."""
    from exporter import manifest as mf
    from exporter.bench import BenchConfig, bench as bench_fn

    run = mf.resolve_run(run)
    cfg = BenchConfig(batches=_ints(batch, "--batch"), warmup=warmup, min_runs=min_runs, min_time=min_time,
                      threads=threads, device=device)
    if device not in ("cpu", "gpu"):
        from exporter.errors import UsageError

        raise UsageError(f"unknown --device '{device}'", hint="use cpu or gpu")
    report = bench_fn(run=run, dataset=_run_dataset(run, data_dir), kinds=_split(artifacts), cfg=cfg, strict=strict,
                      include_reference=reference, progress=_progress(json_out))
    if json_out:
        _print_json(report)
        return
    env = report["environment"]
    table = Table(title=f"bench on {env['device']}: {env['cpu']} ({env['cores']} cores, int8 ISA: "
                        f"{env['cpu_int8']['summary']})" + (f", GPU {env['gpu']}" if env.get("gpu") else ""))
    for col in ("target", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms", "images/s", "cold start ms",
                "vs predict", "vs compiled", "provider", "threads"):
        table.add_column(col, justify="left" if col in ("target", "provider") else "right")
    for r in report["results"]:
        table.add_row(r["target"], str(r["batch"]), f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}",
                      f"{r['mean_ms']:.3f} ± {r['std_ms']:.3f}", f"{r['throughput_ips']:.0f}",
                      f"{r['cold_start_ms']:.0f}", f"{r.get('speedup_vs_keras_predict', float('nan')):.1f}x",
                      f"{r.get('speedup_vs_keras_compiled', float('nan')):.1f}x", str(r["provider"]),
                      str(r["threads"] or "default"))
    for s in report["skipped"]:
        table.add_row(s["target"], "-", "skipped", "", "", "", "", "", "", "", s["reason"][:90], "")
    out.print(table)


# ------------------------------------------------------------------------------ report

@app.command()
@_boundary
def report(run: Optional[Path] = RUN_OPT, json_out: bool = JSON_OPT):
    """Join manifest, validation and bench results into report.md and report.png (accuracy vs
    latency, marker size by file size, Keras marked) and print the table."""
    from exporter import manifest as mf
    from exporter.report import write_report

    table = write_report(mf.resolve_run(run))
    if json_out:
        _print_json(table)
    else:
        _print_report(table)


def _print_report(table: dict) -> None:
    t = Table(title=f"{table['model']} on {table['dataset']}: {table['markdown']}")
    for col in ("artifact", "size", "accuracy", "vs Keras", "agreement", "p50 ms (b=1)", "speed-up vs predict", "gate"):
        t.add_column(col, justify="left" if col in ("artifact", "gate") else "right")

    def f(v, spec):
        return "–" if v is None else format(v, spec)

    for r in table["rows"]:
        gate = "reference" if r["reference"] else {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "–"}[r["passed"]]
        t.add_row(r["kind"], f(r["bytes"] and r["bytes"] / 1024, ".1f") + " KiB", f(r["accuracy"] and 100 * r["accuracy"], ".2f") + "%",
                  f(r["change_points"], "+.2f"), f(r["agreement"], ".2f") + "%", f(r["p50_ms_b1"], ".3f"),
                  f(r["speedup_vs_keras_predict"], ".1f") + "x", gate)
    out.print(t)
    if table.get("plot"):
        out.print(f"plot: {table['plot']}", markup=False, highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------ pipeline

@app.command()
@_boundary(tensorflow=True)
def pipeline(
    model: str = typer.Option("resmini", "--model", "-m", help="Registry model to train."),
    dataset: str = typer.Option("fashion_mnist", "--dataset", "-d", help="Dataset."),
    recipe: str = typer.Option("fast", "--recipe", help="Training recipe: fast (CPU default) or seed."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the recipe's epochs."),
    run: Optional[Path] = typer.Option(None, "--run", help="Run folder (default artifacts/<model>-<dataset>-pipeline)."),
    train_limit: Optional[int] = typer.Option(None, "--train-limit", help="Train on a stratified subset (quick runs)."),
    test_limit: Optional[int] = typer.Option(None, "--test-limit", help="Validate/bench on a stratified test subset."),
    force: bool = typer.Option(False, "--force", help="Redo every stage even if its inputs are unchanged."),
    data_dir: Optional[Path] = DATA_OPT,
    json_out: bool = JSON_OPT,
):
    """The whole job, no flags needed: train the default model on Fashion-MNIST -> convert to every
    kind -> validate on the full test set -> bench on CPU -> report. Stages whose inputs are
    unchanged (by hash) are re-used. Exits 4 if an artifact fails validation."""
    from exporter.errors import ValidationFailed
    from exporter.pipeline import PipelineConfig, run_pipeline
    from exporter.train import resolve_recipe

    cfg = PipelineConfig(model=model, dataset=dataset, recipe=resolve_recipe(recipe, epochs=epochs),
                         train_limit=train_limit, test_limit=test_limit)

    def on_stage(name, status, seconds):
        if not json_out:
            err.print(f"[bold]{name}[/]: {status} ({seconds:.1f}s)")

    result = run_pipeline(cfg, run=run, force=force, data_dir=data_dir, progress=_progress(json_out), on_stage=on_stage)
    if json_out:
        _print_json({k: v for k, v in result.items() if k != "report"} | {"report": result["report"].get("markdown")})
    else:
        _print_report(result["report"])
    if not result["validation_passed"]:
        raise ValidationFailed(f"an artifact failed validation (details in {result['run']}/validation.json)")


# ------------------------------------------------------------------------------ experiment

experiment_app = typer.Typer(help="Studies from the source documents.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("depth")
@_boundary(tensorflow=True)
def experiment_depth(
    out_dir: Path = typer.Option(Path("artifacts/depth-study"), "--out", help="Folder for depth.json/.md/.png "
                                 "and the runs."),
    depths: str = typer.Option("12,20,32,50", "--depths", help="Depths to train (each as plain and residual)."),
    recipe: str = typer.Option("seed", "--recipe", help="seed (25 epochs, batch 150, Adam 1e-4 decay 1e-6: the "
                               "seed's settings) or fast."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the recipe's epochs."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Override the recipe's learning rate."),
    bn_momentum: Optional[float] = typer.Option(None, "--bn-momentum", help="BatchNorm moving-average momentum "
                                                "(default: the models' own, 0.99). Use 0.9 for short runs."),
    train_limit: Optional[int] = typer.Option(None, "--train-limit", help="Train on a stratified subset."),
    test_limit: Optional[int] = typer.Option(None, "--test-limit", help="Evaluate on a stratified subset."),
    device_note: str = typer.Option("", "--device-note", help="Where it ran (recorded in the results)."),
    force: bool = typer.Option(False, "--force", help="Retrain every model, replacing runs already in --out."),
    data_dir: Optional[Path] = DATA_OPT,
    json_out: bool = JSON_OPT,
):
    """Seed 003's study: plain vs residual CNNs at 12/20/32/50 layers on Fashion-MNIST, beside the
    seed's reported accuracies. Writes depth.json, depth.md and depth.png.

    Models already trained in --out with the same settings are reused, so a long study can be run
    a few depths at a time (e.g. --depths 12,20 then --depths 12,20,32,50)."""
    from exporter import data as data_mod
    from exporter.experiment import depth_study
    from exporter.train import resolve_recipe

    ds = data_mod.load_dataset("fashion_mnist", data_dir=data_dir, train_limit=train_limit, test_limit=test_limit)

    def on_model(name, acc, seconds, reused):
        if not json_out:
            err.print(f"{name}: {acc:.2%} ({seconds:.0f}s{', reused' if reused else ''})")

    doc = depth_study(out=out_dir, recipe=resolve_recipe(recipe, epochs=epochs, lr=lr, bn_momentum=bn_momentum),
                      dataset=ds,
                      depths=_ints(depths, "--depths"), device_note=device_note, force=force,
                      progress=_progress(json_out),
                      on_model=on_model)
    if json_out:
        _print_json(doc)
    else:
        out.print((out_dir / "depth.md").read_text(), markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
