"""The write-time conformance gate: every artifact is checked before it is renamed into place.

`check(kind_or_family, path, input_shape=..., num_classes=...) -> dict` runs the checks of the
file's format on a written (temporary) file and returns what they found, for the manifest entry;
a file that fails raises ConformanceError (exit 70: the file is ours, never the user's bad input)
naming the check. `write_checked(out, data, kind, ...)` is the exporters' one write helper: it
writes `data` to a temp file beside `out`, runs `check` on it, and only then renames it.

ONNX: `onnx.checker.check_model(full_check=True)` (graph order, types, opset), strict shape
inference (`strict_mode`, `check_type`, `data_prop`), and the signature: exactly one graph input
(the image: float32, dynamic batch, then the model's own input shape: H x W x C, H x W or flat) that is not an initializer,
and one output (dynamic batch x classes). The opsets and IR version are recorded.

TFLite: the file loads in the LiteRT interpreter with all tensors allocated, and its signature is
the same one-image-in, one-(batch x classes)-out; the input/output names, dtypes, shape signatures
and quantisation parameters and the signature keys are recorded.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from exporter.errors import ExportError, ResexportError, require
from exporter.fsutil import atomic_path
from exporter.quiet import native_stderr_hidden

log = logging.getLogger(__name__)


class ConformanceError(ExportError):
    """An artifact we made fails a conformance check: our export is broken (exit 70), not the input."""


def family_of(kind_or_family: str) -> str:
    """'onnx-fp16' -> 'onnx', 'tflite' -> 'tflite'."""
    family = str(kind_or_family).split("-")[0]
    if family not in ("onnx", "tflite"):
        raise ValueError(f"no conformance check for '{kind_or_family}'")
    return family


def check(kind_or_family: str, path: Path, *, input_shape=None, num_classes=None,
          input_dtypes=None) -> dict:
    """Check a written artifact; return the record for its manifest entry. `input_shape` (H, W, C)
    and `num_classes`, when given, must match the file's signature exactly. `input_dtypes`: the
    allowed input element types as numpy dtype names (default: float32, and int8 for TFLite int8)."""
    family = family_of(kind_or_family)
    fn = _check_onnx if family == "onnx" else _check_tflite
    return fn(Path(path), str(kind_or_family), None if input_shape is None else tuple(int(d) for d in input_shape),
              None if num_classes is None else int(num_classes), input_dtypes)


def write_checked(out: Path, data: bytes, kind_or_family: str, *, input_shape=None, num_classes=None,
                  input_dtypes=None) -> dict:
    """Write `data` to `out` atomically, renaming it into place only if it passes `check`."""
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
        record = check(kind_or_family, tmp, input_shape=input_shape, num_classes=num_classes,
                       input_dtypes=input_dtypes)
    return record


def _fail(kind: str, check_name: str, path: Path, detail: str) -> ConformanceError:
    detail = " ".join(str(detail).split())
    if len(detail) > 400:
        detail = detail[:400] + " ..."
    return ConformanceError(f"{kind} export failed the {check_name} check, so it was not written: {detail}",
                            hint="this is a bug in the export, not in your model: rerun with --debug and report it")


# ------------------------------------------------------------------ ONNX

_ONNX_FLOAT = 1  # TensorProto.FLOAT


def _dims(value) -> list:
    shape = value.type.tensor_type.shape
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in shape.dim]


def _onnx_signature_problems(model, input_shape, num_classes) -> list[str]:
    graph = model.graph
    inits = {t.name for t in graph.initializer} | {n for s in graph.sparse_initializer for n in (s.values.name,)}
    problems = []
    as_input = [v.name for v in graph.input if v.name in inits]
    if as_input:
        problems.append(f"initializers also listed as graph inputs (overridable at run time): {as_input[:5]}")
    inputs = [v for v in graph.input if v.name not in inits]
    if len(inputs) != 1:
        problems.append(f"{len(inputs)} graph inputs {[v.name for v in inputs][:5]}, expected exactly one (the image); "
                        "a captured variable or constant must be an initializer")
    else:
        v = inputs[0]
        dims = _dims(v)
        if v.type.tensor_type.elem_type != _ONNX_FLOAT:
            problems.append(f"input '{v.name}' has element type {v.type.tensor_type.elem_type}, expected float32")
        rank = 1 + len(input_shape) if input_shape is not None else None  # None: any image rank (2 to 4)
        if (len(dims) != rank) if rank else not 2 <= len(dims) <= 4:
            problems.append(f"input '{v.name}' has rank {len(dims)}, expected {rank or '2 to 4'} (batch + the "
                            f"model's input {list(input_shape) if input_shape is not None else 'shape'})")
        else:
            if isinstance(dims[0], int):
                problems.append(f"input '{v.name}' has a fixed batch {dims[0]}, expected a dynamic batch")
            if input_shape is not None and tuple(dims[1:]) != tuple(input_shape):
                problems.append(f"input '{v.name}' has shape {dims[1:]}, expected {list(input_shape)}")
    if len(graph.output) != 1:
        problems.append(f"{len(graph.output)} graph outputs, expected one (batch x classes)")
    else:
        o = graph.output[0]
        dims = _dims(o)
        if o.type.tensor_type.elem_type != _ONNX_FLOAT:
            problems.append(f"output '{o.name}' has element type {o.type.tensor_type.elem_type}, expected float32")
        if len(dims) != 2:
            problems.append(f"output '{o.name}' has rank {len(dims)}, expected 2 (batch, classes)")
        else:
            if isinstance(dims[0], int):
                problems.append(f"output '{o.name}' has a fixed batch {dims[0]}, expected a dynamic batch")
            if num_classes is not None and dims[1] != num_classes:
                problems.append(f"output '{o.name}' has {dims[1]} classes, expected {num_classes}")
    return problems


def _check_onnx(path: Path, kind: str, input_shape, num_classes, input_dtypes) -> dict:
    onnx = require("onnx", extra="onnx", purpose="ONNX conformance check")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise _fail(kind, "onnx.load", path, f"{type(exc).__name__}: {exc}") from exc
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise _fail(kind, "onnx.checker (full_check)", path, f"{type(exc).__name__}: {exc}") from exc
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise _fail(kind, "strict shape inference", path, f"{type(exc).__name__}: {exc}") from exc
    problems = _onnx_signature_problems(model, input_shape, num_classes)
    if problems:
        raise _fail(kind, "signature", path, "; ".join(problems))
    inits = {t.name for t in model.graph.initializer}
    io = lambda v: {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(  # noqa: E731
        v.type.tensor_type.elem_type).name, "shape": _dims(v)}
    return {"checks": ["onnx.checker.check_model(full_check=True)",
                       "onnx.shape_inference.infer_shapes(strict_mode=True, check_type=True, data_prop=True)",
                       "signature: one image input, one (batch, classes) output"],
            "onnx": onnx.__version__, "ir_version": int(model.ir_version),
            "opset": next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
            "opsets": {o.domain or "ai.onnx": int(o.version) for o in model.opset_import},
            "inputs": [io(v) for v in model.graph.input if v.name not in inits],
            "outputs": [io(v) for v in model.graph.output]}


# ------------------------------------------------------------------ TFLite

def _interpreter(path: Path):
    """The LiteRT interpreter (ai-edge-litert); TensorFlow's copy only where LiteRT is absent."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_path=str(path)), "ai_edge_litert"
    except ImportError:
        tf = require("tensorflow", extra="litert", purpose="TFLite conformance check")
        return tf.lite.Interpreter(model_path=str(path)), "tensorflow.lite"


def _tensor_record(d: dict) -> dict:
    q = d.get("quantization_parameters") or {}
    scales = [float(s) for s in q.get("scales", [])]
    zeros = [int(z) for z in q.get("zero_points", [])]
    return {"name": d["name"], "dtype": d["dtype"].__name__ if hasattr(d["dtype"], "__name__") else str(d["dtype"]),
            "shape": [int(s) for s in d.get("shape_signature", d["shape"])],
            "quantization": {"scale": scales, "zero_point": zeros} if scales else None}


def _check_tflite(path: Path, kind: str, input_shape, num_classes, input_dtypes) -> dict:
    try:
        with native_stderr_hidden():  # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" to fd 2
            interp, engine = _interpreter(path)
            interp.allocate_tensors()
    except ResexportError:
        raise
    except Exception as exc:
        raise _fail(kind, "LiteRT load + allocate_tensors", path, f"{type(exc).__name__}: {exc}") from exc
    ins = [_tensor_record(d) for d in interp.get_input_details()]
    outs = [_tensor_record(d) for d in interp.get_output_details()]
    allowed = set(input_dtypes or (("float32", "int8") if kind.endswith("int8") else ("float32",)))
    problems = []
    if len(ins) != 1:
        problems.append(f"{len(ins)} inputs {[i['name'] for i in ins][:5]}, expected exactly one (the image)")
    else:
        i = ins[0]
        if i["dtype"] not in allowed:
            problems.append(f"input '{i['name']}' is {i['dtype']}, expected {' or '.join(sorted(allowed))}")
        rank = 1 + len(input_shape) if input_shape is not None else None  # None: any image rank (2 to 4)
        if (len(i["shape"]) != rank) if rank else not 2 <= len(i["shape"]) <= 4:
            problems.append(f"input '{i['name']}' has rank {len(i['shape'])}, expected {rank or '2 to 4'} (batch + the "
                            f"model's input {list(input_shape) if input_shape is not None else 'shape'})")
        else:
            if i["shape"][0] != -1:
                problems.append(f"input '{i['name']}' has a fixed batch {i['shape'][0]}, expected a dynamic batch")
            if input_shape is not None and tuple(i["shape"][1:]) != tuple(input_shape):
                problems.append(f"input '{i['name']}' has shape {i['shape'][1:]}, expected {list(input_shape)}")
    if len(outs) != 1:
        problems.append(f"{len(outs)} outputs, expected one (batch x classes)")
    else:
        o = outs[0]
        if len(o["shape"]) != 2:
            problems.append(f"output '{o['name']}' has rank {len(o['shape'])}, expected 2 (batch, classes)")
        elif num_classes is not None and o["shape"][1] != num_classes:
            problems.append(f"output '{o['name']}' has {o['shape'][1]} classes, expected {num_classes}")
    signatures = {}
    with contextlib.suppress(Exception):
        signatures = {k: {"inputs": list(v.get("inputs", [])), "outputs": list(v.get("outputs", []))}
                      for k, v in interp.get_signature_list().items()}
    del interp
    if problems:
        raise _fail(kind, "signature", path, "; ".join(problems))
    return {"checks": [f"{engine}.Interpreter + allocate_tensors", "signature: one image input, one (batch, classes) output"],
            "interpreter": engine, "inputs": ins, "outputs": outs, "signatures": signatures}
