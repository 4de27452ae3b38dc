"""App-ready TFLite files: the interface and metadata that MediaPipe Tasks' ImageClassifier (the same C++
core on Android, iOS, web and Python) and the LiteRT Task Library take as they are.

What `make_app_ready(blob, spec)` does to a converted file (every step is idempotent, so a file that went
through it once comes out the same):

1. **RGB in.** A one-channel (grayscale) NHWC model gets a 1x1 convolution in front that turns RGB into
   gray: `gray = (65 R + 127 G + 25 B) / 217`, ITU-R BT.601 luma (Pillow's `convert("L")`: 0.299, 0.587,
   0.114) to within 0.2% per weight. The weights are chosen so that an int8 file computes it exactly
   (per-channel int8 weights 65, 127, 25 with scale 1/217) and a gray pixel (R = G = B) passes unchanged
   in every kind: the app's RGB image of a gray picture gives the model exactly the pixels it was
   validated on.
2. **uint8 in, uint8 out for int8 files.** The SDKs take uint8 or float32 input and uint8 or float32 output
   tensors, never int8. An int8 input gets a QUANTIZE op in front: from uint8 holding the raw pixel
   (scale and zero point that are exactly the run's preprocessing: `unit` is 1/255 and 0, `raw` is 1 and
   0), or, where no integer zero point expresses the preprocessing (`symmetric`, `imagenet`), from float32
   with normalisation metadata like the float kinds. An int8 output gets a QUANTIZE op to uint8 (same
   scale, zero point + 128: the same values).
3. **Metadata** in the TFLite metadata schema (`TFLITE_METADATA`, file identifier M001): name, description,
   version, author; the input as an RGB image with `NormalizationOptions` (mean, std such that
   `(pixel - mean) / std` is exactly what validate feeds) for float32 inputs; the output's class names
   as a `TENSOR_AXIS_LABELS` file (`labels.txt`, zipped onto the end of the file as the schema's
   associated files are); no score calibration. A second model-level entry, `RESEXPORT_APP`, records
   in JSON what was done (read back by `app_record`, e.g. by the LiteRT runner).

The TFLite schema comes from ai-edge-litert (its generated `schema_py_generated`, TensorFlow's copy where
LiteRT is absent); the metadata flatbuffer is built here with `flatbuffers` from the schema's field order.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass

import numpy as np

from exporter.errors import require

METADATA_NAME = "TFLITE_METADATA"   # the name MediaPipe and the Task Library look for
RECORD_NAME = "RESEXPORT_APP"       # our own record of what make_app_ready did
LABELS_FILE = "labels.txt"
GRAY_WEIGHTS = (65, 127, 25)        # / 217: int8-exact BT.601 luma, sums to 1
GRAY_DIVISOR = 217
GRAY_FORMULA = "gray = (65 R + 127 G + 25 B) / 217 (ITU-R BT.601 luma to 0.2%; exact for R = G = B)"
MIN_PARSER_VERSION = "1.0.0"        # only tables and fields of the metadata schema's first version

# TFLite schema enums (schema.fbs); named here so the code below reads as the schema does
_FLOAT32, _INT32, _UINT8, _INT8 = 0, 2, 3, 9
_CONV_2D, _QUANTIZE = 3, 114
_CONV_OPTIONS, _QUANTIZE_OPTIONS = 1, 89
_VALID = 1
_DTYPE_NAMES = {_FLOAT32: "float32", _INT32: "int32", _UINT8: "uint8", _INT8: "int8"}


@dataclass(frozen=True)
class AppSpec:
    """What the app needs to know, from the run: the preprocessing and the class names."""

    name: str
    version: str
    class_names: tuple[str, ...]
    scale: str                          # unit | symmetric | raw | imagenet (exporter.data.preprocessing)
    channels: int                       # the model's own: 1 gets the RGB adapter
    mean: tuple[float, ...] | None = None   # imagenet only: per-channel, on 0..1 pixels
    std: tuple[float, ...] | None = None

    @classmethod
    def from_deployment(cls, deploy: dict, *, name: str, version: str) -> "AppSpec":
        """From convert's deployment info (exporter.convert.deployment_info)."""
        return cls(name=name, version=version, class_names=tuple(str(c) for c in deploy["class_names"]),
                   scale=deploy["scale"], channels=int(deploy["channels"]),
                   mean=tuple(deploy["mean"]) if deploy.get("mean") else None,
                   std=tuple(deploy["std"]) if deploy.get("std") else None)

    def normalization(self) -> tuple[list[float], list[float]]:
        """mean, std (on 0..255 pixels) with (pixel - mean) / std = the model's input."""
        if self.scale == "imagenet":
            return [255.0 * m for m in self.mean], [255.0 * s for s in self.std]
        return {"unit": ([0.0], [255.0]), "symmetric": ([127.5], [127.5]), "raw": ([0.0], [1.0])}[self.scale]

    def uint8_input(self) -> tuple[float, int] | None:
        """(scale, zero point) of a uint8 input holding the raw pixel, where the preprocessing is one."""
        mean, std = self.normalization()
        if len(mean) != 1 or mean[0] != round(mean[0]) or not 0 <= mean[0] <= 255:
            return None
        return 1.0 / std[0], int(mean[0])


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        schema = require("tensorflow.lite.python.schema_py_generated", extra="litert", purpose="TFLite metadata")
    return schema


def strip_associated_files(blob: bytes) -> bytes:
    """The flatbuffer without a zip of associated files appended to it (the schema's packing)."""
    blob = bytes(blob)
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile:
        return blob
    if not infos:
        return blob
    return blob[:min(i.header_offset for i in infos)]


def app_record(blob_or_path) -> dict | None:
    """What make_app_ready recorded in the file (None for a file it never saw). No TensorFlow needed."""
    blob = blob_or_path if isinstance(blob_or_path, (bytes, bytearray)) else open(blob_or_path, "rb").read()
    schema = _schema()
    model = schema.Model.GetRootAs(bytearray(blob), 0)
    for i in range(model.MetadataLength()):
        meta = model.Metadata(i)
        if meta.Name() and meta.Name().decode() == RECORD_NAME:
            return json.loads(bytes(model.Buffers(meta.Buffer()).DataAsNumpy()).decode())
    return None


def static_batch(blob: bytes) -> bytes | None:
    """The same file with its dynamic batch (shape_signature -1, every tensor) pinned to the batch its shapes
    hold (1): for runtimes that refuse dynamic dimensions (LiteRT.js 2.5). Ops, weights, quantisation and
    metadata are unchanged. None when nothing in the file is dynamic."""
    flatbuffers = require("flatbuffers", extra="litert", purpose="TFLite files for LiteRT.js")
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(strip_associated_files(blob)), 0)
    changed = False
    for sg in model.subgraphs:
        for t in sg.tensors:
            sig = t.shapeSignature
            if sig is not None and len(sig) and (np.asarray(sig) < 0).any():
                t.shapeSignature = np.asarray(t.shape, dtype=np.int32).copy()
                changed = True
    if not changed:
        return None
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# ------------------------------------------------------------------------------ graph surgery

class _Graph:
    """The one subgraph of a converted classifier, with helpers to add tensors, buffers and ops."""

    def __init__(self, schema, model):
        self.s, self.model = schema, model
        if len(model.subgraphs) != 1:
            raise ValueError(f"expected one subgraph, found {len(model.subgraphs)}")
        self.sg = model.subgraphs[0]

    def tensor(self, index: int):
        return self.sg.tensors[index]

    def add_buffer(self, data: np.ndarray | None) -> int:
        buf = self.s.BufferT()
        if data is not None:
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
        self.model.buffers.append(buf)
        return len(self.model.buffers) - 1

    def add_tensor(self, name: str, shape, signature, dtype: int, quant=None, data=None) -> int:
        t = self.s.TensorT()
        t.name = name
        t.shape = np.asarray(shape, dtype=np.int32)
        t.shapeSignature = np.asarray(signature, dtype=np.int32) if signature is not None else None
        t.type = dtype
        t.hasRank = True
        t.buffer = self.add_buffer(data) if data is not None else self.add_buffer(None)
        if quant is not None:
            q = self.s.QuantizationParametersT()
            scales, zeros, axis = quant
            q.scale = np.asarray(scales, dtype=np.float32)
            q.zeroPoint = np.asarray(zeros, dtype=np.int64)
            q.quantizedDimension = axis
            t.quantization = q
        self.sg.tensors.append(t)
        return len(self.sg.tensors) - 1

    def opcode(self, builtin: int, version: int) -> int:
        for i, code in enumerate(self.model.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and not code.customCode:
                code.version = max(code.version, version)
                return i
        code = self.s.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
        self.model.operatorCodes.append(code)
        return len(self.model.operatorCodes) - 1

    def add_op(self, builtin: int, version: int, inputs, outputs, options_type: int, options, *, first: bool):
        op = self.s.OperatorT()
        op.opcodeIndex = self.opcode(builtin, version)
        op.inputs = np.asarray(inputs, dtype=np.int32)
        op.outputs = np.asarray(outputs, dtype=np.int32)
        op.builtinOptionsType, op.builtinOptions = options_type, options
        if first:
            self.sg.operators.insert(0, op)
        else:
            self.sg.operators.append(op)

    def replace_io(self, old: int, new: int, *, is_input: bool) -> None:
        """Make tensor `new` the subgraph's (and every signature's) input/output in place of `old`."""
        name = self.tensor(old).name
        self.tensor(old).name = (name.decode() if isinstance(name, bytes) else name) + (
            "/model_input" if is_input else "/model_output")
        self.tensor(new).name = name
        ios = self.sg.inputs if is_input else self.sg.outputs
        ios[list(ios).index(old)] = new
        for sig in self.model.signatureDefs or []:
            for m in (sig.inputs if is_input else sig.outputs) or []:
                if m.tensorIndex == old:
                    m.tensorIndex = new


def _shape(t) -> tuple[list[int], list[int] | None]:
    shape = [int(d) for d in t.shape]
    sig = [int(d) for d in t.shapeSignature] if t.shapeSignature is not None and len(t.shapeSignature) else None
    return shape, sig


def _quant(t) -> tuple[float, int] | None:
    q = t.quantization
    if q is None or q.scale is None or not len(q.scale):
        return None
    return float(q.scale[0]), int(q.zeroPoint[0])


def _rgb_adapter(g: _Graph) -> int:
    """RGB -> gray in front of a one-channel input; returns the new input tensor."""
    s = g.s
    old = g.sg.inputs[0]
    t = g.tensor(old)
    shape, sig = _shape(t)
    rgb_shape, rgb_sig = shape[:-1] + [3], (sig[:-1] + [3]) if sig else None
    q = _quant(t)
    if t.type == _INT8:
        weights = np.asarray(GRAY_WEIGHTS, np.int8).reshape(1, 1, 1, 3)
        w = g.add_tensor("rgb_to_gray/weights", [1, 1, 1, 3], None, _INT8,
                         quant=([1.0 / GRAY_DIVISOR], [0], 0), data=weights)
        b = g.add_tensor("rgb_to_gray/bias", [1], None, _INT32,
                         quant=([q[0] / GRAY_DIVISOR], [0], 0), data=np.zeros(1, np.int32))
        new = g.add_tensor("rgb", rgb_shape, rgb_sig, _INT8, quant=([q[0]], [q[1]], 0))
        version = 3  # per-channel int8 weights
    elif t.type == _FLOAT32:
        weights = (np.asarray(GRAY_WEIGHTS, np.float32) / np.float32(GRAY_DIVISOR)).reshape(1, 1, 1, 3)
        w = g.add_tensor("rgb_to_gray/weights", [1, 1, 1, 3], None, _FLOAT32, data=weights)
        b = g.add_tensor("rgb_to_gray/bias", [1], None, _FLOAT32, data=np.zeros(1, np.float32))
        new = g.add_tensor("rgb", rgb_shape, rgb_sig, _FLOAT32)
        version = 1
    else:
        raise ValueError(f"cannot put an RGB adapter in front of a {_DTYPE_NAMES.get(t.type, t.type)} input")
    opts = s.Conv2DOptionsT()
    opts.padding, opts.strideW, opts.strideH = _VALID, 1, 1
    opts.dilationWFactor, opts.dilationHFactor = 1, 1
    g.add_op(_CONV_2D, version, [new, w, b], [old], _CONV_OPTIONS, opts, first=True)
    g.replace_io(old, new, is_input=True)
    return new


def _uint8_or_float_input(g: _Graph, spec: AppSpec) -> str:
    """An int8 input becomes uint8 (raw pixels) or float32, through a QUANTIZE op in front."""
    old = g.sg.inputs[0]
    t = g.tensor(old)
    shape, sig = _shape(t)
    params = spec.uint8_input()
    if params is not None:
        new = g.add_tensor("pixels", shape, sig, _UINT8, quant=([params[0]], [params[1]], 0))
        how = "uint8"
    else:
        new = g.add_tensor("pixels", shape, sig, _FLOAT32)
        how = "float32"
    g.add_op(_QUANTIZE, 2, [new], [old], _QUANTIZE_OPTIONS, g.s.QuantizeOptionsT(), first=True)
    g.replace_io(old, new, is_input=True)
    return how


def _uint8_output(g: _Graph) -> None:
    old = g.sg.outputs[0]
    t = g.tensor(old)
    shape, sig = _shape(t)
    scale, zero = _quant(t)
    new = g.add_tensor("scores", shape, sig, _UINT8, quant=([scale], [zero + 128], 0))
    g.add_op(_QUANTIZE, 2, [old], [new], _QUANTIZE_OPTIONS, g.s.QuantizeOptionsT(), first=False)
    g.replace_io(old, new, is_input=False)


# ------------------------------------------------------------------------------ metadata (schema M001)

def _strings(b, values) -> int:
    offsets = [b.CreateString(v) for v in values]
    b.StartVector(4, len(offsets), 4)
    for o in reversed(offsets):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _tables(b, offsets) -> int:
    b.StartVector(4, len(offsets), 4)
    for o in reversed(offsets):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _floats(b, values) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(float(v))
    return b.EndVector()


def _table(b, fields: list[tuple[int, str, object]]) -> int:
    """A table from (slot, kind, value) with kind 'offset' | 'byte' | 'uint32'; None values are left out."""
    b.StartObject(max(slot for slot, _, _ in fields) + 1)
    for slot, kind, value in fields:
        if value is None:
            continue
        if kind == "offset":
            b.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind == "byte":
            b.PrependInt8Slot(slot, value, -1)  # default -1: always written
        else:
            b.PrependUint32Slot(slot, value, 0xFFFFFFFF)
    return b.EndObject()


def metadata_bytes(spec: AppSpec, *, input_dtype: str, height: int | None, width: int | None,
                   rgb_adapter: bool) -> bytes:
    """The ModelMetadata flatbuffer (schema M001) of an image classifier."""
    flatbuffers = require("flatbuffers", extra="litert", purpose="TFLite metadata")
    b = flatbuffers.Builder(1024)
    s = b.CreateString
    # input: an RGB image; NormalizationOptions for a float32 input
    units = None
    if input_dtype == "float32":
        mean, std = spec.normalization()
        norm = _table(b, [(0, "offset", _floats(b, mean)), (1, "offset", _floats(b, std))])
        unit = _table(b, [(0, "byte", 1), (1, "offset", norm)])  # ProcessUnitOptions.NormalizationOptions
        units = _tables(b, [unit])
    size = _table(b, [(0, "uint32", width), (1, "uint32", height)]) if height else None
    props = _table(b, [(0, "byte", 1), (1, "offset", size)])  # ColorSpaceType.RGB, default_size
    content = _table(b, [(0, "byte", 2), (1, "offset", props)])  # ContentProperties.ImageProperties
    how = (f"{'uint8' if input_dtype == 'uint8' else 'float32'} RGB pixels"
           + (", normalised as (pixel - mean) / std" if input_dtype == "float32" else ", 0..255 as they are")
           + (f"; made grayscale inside the file: {GRAY_FORMULA}" if rgb_adapter else ""))
    image = _table(b, [(0, "offset", s("image")), (1, "offset", s(how)), (3, "offset", content),
                       (4, "offset", units)])
    # output: probabilities (or logits) over the class names
    labels = _table(b, [(0, "offset", s(LABELS_FILE)), (1, "offset", s("class names, one a line, in output order")),
                        (2, "byte", 2)])  # AssociatedFileType.TENSOR_AXIS_LABELS
    b.StartObject(0)  # FeatureProperties: a table without fields
    feature = b.EndObject()
    out_content = _table(b, [(0, "byte", 1), (1, "offset", feature)])  # ContentProperties.FeatureProperties
    scores = _table(b, [(0, "offset", s("probability")), (1, "offset", s(f"scores of the {len(spec.class_names)} "
                                                                          "classes")),
                        (3, "offset", out_content), (6, "offset", _tables(b, [labels]))])
    subgraph = _table(b, [(0, "offset", s("image_classifier")), (2, "offset", _tables(b, [image])),
                          (3, "offset", _tables(b, [scores]))])
    root = _table(b, [(0, "offset", s(spec.name)),
                      (1, "offset", s(f"Image classifier over {len(spec.class_names)} classes, exported by resexport")),
                      (2, "offset", s(spec.version)), (3, "offset", _tables(b, [subgraph])),
                      (4, "offset", s("resexport")), (7, "offset", s(MIN_PARSER_VERSION))])
    b.Finish(root, file_identifier=b"M001")
    return bytes(b.Output())


def _set_metadata(g: _Graph, name: str, data: bytes) -> None:
    buf = np.frombuffer(data, dtype=np.uint8)
    for meta in g.model.metadata or []:
        if (meta.name.decode() if isinstance(meta.name, bytes) else meta.name) == name:
            g.model.buffers[meta.buffer].data = buf
            return
    index = g.add_buffer(None)
    g.model.buffers[index].data = buf
    meta = g.s.MetadataT()
    meta.name, meta.buffer = name, index
    g.model.metadata = list(g.model.metadata or []) + [meta]


# ------------------------------------------------------------------------------ the one entry point

def make_app_ready(blob: bytes, spec: AppSpec) -> tuple[bytes, dict]:
    """The file an app takes, and the record of what changed (also stored in the file)."""
    flatbuffers = require("flatbuffers", extra="litert", purpose="TFLite metadata")
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(strip_associated_files(blob)), 0)
    g = _Graph(schema, model)
    previous = app_record(blob) or {}
    t_in = g.tensor(g.sg.inputs[0])
    shape, _ = _shape(t_in)
    image = len(shape) == 4
    rgb_adapter = bool(previous.get("rgb_adapter"))
    if image and shape[-1] == 1:
        _rgb_adapter(g)
        rgb_adapter = True
    if g.tensor(g.sg.inputs[0]).type == _INT8:
        _uint8_or_float_input(g, spec)
    if g.tensor(g.sg.outputs[0]).type == _INT8:
        _uint8_output(g)
    t_in, t_out = g.tensor(g.sg.inputs[0]), g.tensor(g.sg.outputs[0])
    in_shape, _ = _shape(t_in)
    input_dtype = _DTYPE_NAMES.get(t_in.type, str(t_in.type))
    mean, std = spec.normalization()
    record = {
        "schema": "TFLite metadata (M001), min parser " + MIN_PARSER_VERSION,
        "input": {"dtype": input_dtype, "shape": in_shape, "color": "rgb" if image and in_shape[-1] == 3 else None,
                  "quantization": dict(zip(("scale", "zero_point"), _quant(t_in))) if _quant(t_in) else None,
                  "normalization": {"mean": mean, "std": std} if input_dtype == "float32" else None},
        "output": {"dtype": _DTYPE_NAMES.get(t_out.type, str(t_out.type)),
                   "quantization": dict(zip(("scale", "zero_point"), _quant(t_out))) if _quant(t_out) else None},
        "rgb_adapter": rgb_adapter, "gray_formula": GRAY_FORMULA if rgb_adapter else None,
        "labels": LABELS_FILE, "spec": asdict(spec),
        "mediapipe_ready": image and in_shape[-1] in (3, 4) and input_dtype in ("uint8", "float32"),
    }
    if not record["mediapipe_ready"]:
        record["why_not"] = ("MediaPipe Tasks takes a 4-axis image input (batch, height, width, 3); this model's "
                             f"input is {in_shape}")
    meta = metadata_bytes(spec, input_dtype=input_dtype, height=in_shape[1] if image else None,
                          width=in_shape[2] if image else None, rgb_adapter=rgb_adapter)
    _set_metadata(g, METADATA_NAME, meta)
    _set_metadata(g, RECORD_NAME, json.dumps(record, sort_keys=True).encode())
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = io.BytesIO()
    out.write(bytes(builder.Output()))
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo(LABELS_FILE, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: same bytes every time
        zf.writestr(info, "".join(f"{c}\n" for c in spec.class_names))
    return out.getvalue(), record
