"""The one table of artifact kinds. Every other module asks this table; no other place lists formats.

Each row names its exporter and its runner as "module:attribute" strings, imported only when used,
so looking up a kind never imports TensorFlow or a runtime.

Runtimes are a second, small table: which families each one reads and its runner. A family's own
runtime (the first that reads it, with no `package`) runs every file of the family; a runtime that
reads a family beside it (e.g. OpenVINO reading .onnx) runs those files too, by default where its
package is importable. Validate and bench work on targets, (kind, runtime) pairs, and never ask
which runtime they are running.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

from exporter.errors import MissingRuntimeError, UsageError


@dataclass(frozen=True)
class Gates:
    """Validation gates: agreement with the reference (percent of top-1 labels that match), drop in
    top-1 accuracy (points), largest absolute difference of output probabilities (a logits model's
    outputs go through a softmax first). None = not gated.

    max_batch_diff is the batch-invariance tolerance: the largest difference of output
    probabilities allowed between one image run alone, in a batch, and in the same batch shuffled.
    It is always checked."""

    min_agreement: float | None = None
    max_drop: float | None = None
    max_abs_diff: float | None = None
    max_batch_diff: float = 1e-3

    def override(self, *, min_agreement=None, max_drop=None, max_abs_diff=None) -> "Gates":
        return replace(self, **{k: v for k, v in (("min_agreement", min_agreement), ("max_drop", max_drop),
                                                  ("max_abs_diff", max_abs_diff)) if v is not None})


@dataclass(frozen=True)
class ArtifactKind:
    name: str            # e.g. "tflite-int8"
    family: str          # keras | savedmodel | tflite | onnx
    quantize: str        # none | float16 | dynamic | int8
    filename: str        # file name inside a run folder
    exporter: str | None  # "module:function" (source, out_path, calibration) -> dict of details
    gates: Gates
    description: str

    @property
    def needs_calibration(self) -> bool:
        return self.quantize == "int8"

    def load_exporter(self):
        return _load(self.exporter)

    @property
    def runtime(self) -> str:
        """The name of the family's own runtime (the results of other runtimes are labelled with theirs)."""
        return own_runtime(self.family).name

    def load_runner_class(self):
        return own_runtime(self.family).load_runner_class()

    def backend(self):
        """The exporting family's backend module (FAMILIES): what convert and quantize/ ask of the family."""
        return FAMILIES[self.family].load_backend()


@dataclass(frozen=True)
class Runtime:
    name: str                 # e.g. "onnxruntime": the results' `runtime`, the --runtimes choice
    reads: tuple[str, ...]    # families whose files it runs
    runner: str               # "module:Class" with Class.load(path, device=, threads=, ...)
    package: str | None = None  # a runtime beside a family's own: run by default only where this imports
    extra: str | None = None    # the project's optional extra that installs `package`
    description: str = ""
    default: bool = True        # run beside the family's own runtime when installed; False: only when named

    def load_runner_class(self):
        return _load(self.runner)

    @property
    def installed(self) -> bool:
        """Whether its package can be imported here (found, not imported: looking costs nothing)."""
        try:
            return self.package is None or importlib.util.find_spec(self.package) is not None
        except (ImportError, ValueError):
            return False


@dataclass(frozen=True)
class Family:
    """A family that resexport writes files of. Its backend module offers, under the same names in every
    family (so no stage branches on the family): the kinds' exporters (the kind rows name them),
    `export_qat_int8(qat_model, out, input_shape, *, target_cpu)`, `int8_key(target_cpu, mode) -> dict`
    (what besides model and calibration an int8 file depends on) and `app_ready(path, deploy, *, name,
    version, num_classes) -> dict` (the SDK's metadata and interface, through the conformance gate again).
    `diagnosis` is quantize/'s per-layer int8 diagnosis and selective quantiser for the family."""

    name: str
    backend: str     # module
    diagnosis: str   # "module:Class"

    def load_backend(self):
        return importlib.import_module(self.backend)

    def load_diagnosis(self):
        return _load(self.diagnosis)


def _load(dotted: str):
    module, attr = dotted.split(":")
    return getattr(importlib.import_module(module), attr)


_FP32 = Gates(min_agreement=99.9, max_drop=0.1, max_abs_diff=1e-3, max_batch_diff=1e-3)
_FP16 = Gates(min_agreement=99.5, max_drop=0.3, max_abs_diff=2e-2, max_batch_diff=2e-2)
_DYNAMIC = Gates(min_agreement=99.0, max_drop=0.5, max_batch_diff=5e-2)
_INT8 = Gates(min_agreement=97.0, max_drop=1.0, max_batch_diff=5e-2)

_TFL = "exporter.export.tflite"
_ONX = "exporter.export.onnx"
_RT = "exporter.runtimes"

KINDS: dict[str, ArtifactKind] = {k.name: k for k in (
    ArtifactKind("keras", "keras", "none", "model.keras", None, Gates(), "the Keras original (reference)"),
    ArtifactKind("savedmodel", "savedmodel", "none", "saved_model", None, Gates(),
                 "a TensorFlow SavedModel (reference when imported)"),
    ArtifactKind("tflite-fp32", "tflite", "none", "model_fp32.tflite", f"{_TFL}:export_fp32", _FP32,
                 "TFLite, float32"),
    ArtifactKind("tflite-fp16", "tflite", "float16", "model_fp16.tflite", f"{_TFL}:export_fp16", _FP16,
                 "TFLite, float16 weights (float32 compute on CPU)"),
    ArtifactKind("tflite-dynamic", "tflite", "dynamic", "model_dynamic.tflite", f"{_TFL}:export_dynamic", _DYNAMIC,
                 "TFLite, int8 weights, dynamic-range activations"),
    ArtifactKind("tflite-int8", "tflite", "int8", "model_int8.tflite", f"{_TFL}:export_int8", _INT8,
                 "TFLite, full integer (int8 inside), uint8 input/output for app SDKs"),
    ArtifactKind("onnx-fp32", "onnx", "none", "model.onnx", f"{_ONX}:export_fp32", _FP32,
                 "ONNX, float32, dynamic batch"),
    ArtifactKind("onnx-fp16", "onnx", "float16", "model_fp16.onnx", f"{_ONX}:export_fp16", _FP16,
                 "ONNX, float16 inside, float32 input/output"),
    ArtifactKind("onnx-int8", "onnx", "int8", "model_int8.onnx", f"{_ONX}:export_int8", _INT8,
                 "ONNX Runtime static quantisation: QDQ, per-channel, calibrated"),
)}

# Runtimes, each family's own first. A row with a `package` runs beside the family's own runtime.
RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("keras", ("keras",), f"{_RT}.keras:KerasRunner", description="Keras 3 on its backend"),
    Runtime("tensorflow", ("savedmodel",), f"{_RT}.keras:SavedModelRunner", description="TensorFlow SavedModel"),
    Runtime("litert", ("tflite",), f"{_RT}.tflite:TFLiteRunner", description="LiteRT (ai-edge-litert), XNNPACK"),
    Runtime("onnxruntime", ("onnx",), f"{_RT}.onnx:OnnxRunner", description="ONNX Runtime"),
    Runtime("openvino", ("onnx", "tflite"), f"{_RT}.openvino:OpenVINORunner", package="openvino",
            extra="openvino", description="OpenVINO, CPU, f32 precision hint; only when named", default=False),
    Runtime("mediapipe", ("tflite",), f"{_RT}.mediapipe:MediaPipeRunner", package="mediapipe", extra="app",
            description="MediaPipe Tasks ImageClassifier, the app SDK, fed uint8 RGB images one at a time; "
                        "only when named", default=False),
    Runtime("browser", ("onnx", "tflite"), f"{_RT}.browser:BrowserRunner", package="playwright", extra="web",
            description="headless Chromium: onnxruntime-web and LiteRT.js on WASM, fed from Python batch by batch; "
                        "only when named", default=False),
)}

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("tflite", _TFL, "exporter.quantize.diagnose:TFLiteInt8"),
    Family("onnx", _ONX, "exporter.quantize.diagnose:OnnxInt8"),
)}

EXPORTABLE = [k for k in KINDS.values() if k.exporter]
INSPECTABLE = [k.name for k in EXPORTABLE if k.needs_calibration and k.family in FAMILIES]  # per-layer int8 error
FORMAT_CHOICES = ("tflite", "onnx", "all")
QUANTIZE_CHOICES = ("none", "float16", "dynamic", "int8", "all")
SUFFIX_FAMILY = {".keras": "keras", ".h5": "keras", ".hdf5": "keras", ".tflite": "tflite", ".onnx": "onnx"}


def select(fmt: str, quantize: str) -> list[ArtifactKind]:
    """The kinds a `convert --format F --quantize Q` asks for, in table order."""
    if fmt not in FORMAT_CHOICES:
        raise UsageError(f"unknown --format '{fmt}'", hint=f"choose one of: {', '.join(FORMAT_CHOICES)}")
    if quantize not in QUANTIZE_CHOICES:
        raise UsageError(f"unknown --quantize '{quantize}'", hint=f"choose one of: {', '.join(QUANTIZE_CHOICES)}")
    chosen = [k for k in EXPORTABLE if fmt in ("all", k.family) and quantize in ("all", k.quantize)]
    if not chosen:
        have = ", ".join(k.name for k in EXPORTABLE)
        raise UsageError(f"no artifact kind is --format {fmt} --quantize {quantize}", hint=f"available: {have}")
    return chosen


def get(name: str) -> ArtifactKind:
    if name not in KINDS:
        raise UsageError(f"unknown artifact kind '{name}'", hint=f"choose from: {', '.join(KINDS)}")
    return KINDS[name]


def own_runtime(family: str) -> Runtime:
    """The runtime a family's files run on unless another is asked for."""
    return next(r for r in RUNTIMES.values() if family in r.reads and r.package is None)


def runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise UsageError(f"unknown runtime '{name}'", hint=f"choose from: {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def target_label(kind: str, runtime_name: str) -> str:
    """How a (kind, runtime) target is named in results: the kind alone on its family's own runtime."""
    return kind if runtime_name == get(kind).runtime else f"{kind} · {runtime_name}"


def targets(kinds: list[str], runtimes: list[str] | None = None, *, explicit_kinds: bool = False) -> list[tuple[str, str]]:
    """The (kind, runtime) pairs to validate or time, kind by kind in the given order, the family's own
    runtime first. runtimes=None: each kind's own runtime and every other runtime that reads it, is
    installed here and runs by default. A named runtime is used whether installed or not (its runner then refuses: exit 5).
    A kind no named runtime reads is dropped, or refused if the kinds were named too."""
    for name in runtimes or ():
        if not runtime(name).installed:
            raise MissingRuntimeError(f"the runtime {name} was asked for, but its package '{RUNTIMES[name].package}' "
                                      "is not importable here",
                                      hint=f"install it with: pip install 'resexport[{RUNTIMES[name].extra}]'")
    pairs = []
    for kind in kinds:
        family = get(kind).family
        readers = [r for r in RUNTIMES.values() if family in r.reads]
        chosen = ([r.name for r in readers if r.installed and (r.default or r.package is None)] if runtimes is None
                  else [r.name for r in readers if r.name in runtimes])
        if not chosen and explicit_kinds:
            raise UsageError(f"no runtime among {', '.join(runtimes)} reads {kind}",
                             hint=f"{kind} runs on: {', '.join(r.name for r in readers)}")
        pairs += [(kind, name) for name in chosen]
    if not pairs and kinds:
        raise UsageError(f"no runtime among {', '.join(runtimes or [])} reads any of {', '.join(kinds)}")
    return pairs


def runtimes_help() -> str:
    """Every runtime and the families it reads, for --help."""
    return "; ".join(f"{r.name} ({r.description}: {', '.join(r.reads)})" for r in RUNTIMES.values())


def family_of_path(path: Path) -> str:
    path = Path(path)
    if path.is_dir():
        return "savedmodel"
    family = SUFFIX_FAMILY.get(path.suffix.lower())
    if family is None:
        raise UsageError(f"{path}: cannot tell the model format from the suffix '{path.suffix}'",
                         hint="expected .keras, .h5, .tflite, .onnx or a SavedModel folder")
    return family


def kind_for_path(path: Path) -> ArtifactKind:
    """The table row for a bare file: the first row of its family (all rows of a family share a
    runner; the runner reads precision and quantisation from the file itself)."""
    family = family_of_path(path)
    return next(k for k in KINDS.values() if k.family == family)


def describe_gates(gates: Gates) -> str:
    parts = []
    if gates.min_agreement is not None:
        parts.append(f"agreement >= {gates.min_agreement:g}%")
    if gates.max_drop is not None:
        parts.append(f"accuracy drop <= {gates.max_drop:g} pt")
    if gates.max_abs_diff is not None:
        parts.append(f"max |diff| <= {gates.max_abs_diff:g}")
    parts.append(f"batch diff <= {gates.max_batch_diff:g}")
    return ", ".join(parts)


def gates_help() -> str:
    """The default gates, grouped by kinds that share them, for --help (generated, never restated)."""
    groups: dict[Gates, list[str]] = {}
    for kind in EXPORTABLE:
        groups.setdefault(kind.gates, []).append(kind.name)
    return "; ".join(f"{'/'.join(names)}: {describe_gates(g)}" for g, names in groups.items())


def kinds_help() -> str:
    """Every exportable kind with its description, for --help."""
    return "; ".join(f"{k.name} ({k.description})" for k in EXPORTABLE)
