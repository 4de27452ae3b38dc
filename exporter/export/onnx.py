"""ONNX exporters: float32 (tf2onnx, dynamic batch), float16 and int8 (ONNX Runtime static
quantisation, QDQ, per-channel) derived from the float32 graph.

Determinism: tf2onnx names nodes with a process-wide counter, so two conversions in one process
differ only in names, initializer order and the graph's doc string. `canonicalize_names` renames every node and intermediate tensor by position
in the graph, which makes the same model give byte-identical files. Input 'image' and output
'probabilities' keep their names; the batch dimension is named 'batch'.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from exporter.errors import ResexportError, UsageError, require
from exporter.export.conformance import write_checked
from exporter.export.source import ExportSource, tensorflow
from exporter.cpuinfo import has_vnni

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


def canonicalize_names(model) -> None:
    """Order initializers by first use and rename nodes, intermediate tensors and initializers by
    graph position (in place). tf2onnx's node order is stable; its names and initializer order are not."""
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    first_use: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            first_use.setdefault(name, len(first_use))
    inits = sorted(graph.initializer, key=lambda t: (first_use.get(t.name, len(first_use)), t.name))
    ordered = [type(t)() for t in inits]
    for dst, src in zip(ordered, inits):
        dst.CopyFrom(src)
    del graph.initializer[:]
    graph.initializer.extend(ordered)
    mapping: dict[str, str] = {}
    for i, init in enumerate(graph.initializer):
        if init.name not in keep:
            mapping[init.name] = f"const_{i}"
    for i, node in enumerate(graph.node):
        node.name = f"{node.op_type.lower()}_{i}"
        for j, name in enumerate(node.output):
            if name and name not in keep:
                mapping[name] = f"t{i}_{j}"
    for init in graph.initializer:
        init.name = mapping.get(init.name, init.name)
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    for vi in graph.value_info:
        vi.name = mapping.get(vi.name, vi.name)


def _erfc(ctx, node, name, args) -> None:
    """TF's Erfc (exact GELU, e.g. ConvNeXt) as 1 - Erf(x): tf2onnx 1.17 has no handler for it and,
    converting with continue_on_error, would leave an op ONNX does not know."""
    from tf2onnx import utils

    np_dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=np_dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


CUSTOM_OP_HANDLERS = {"Erfc": (_erfc, [])}


def _tidy(proto) -> None:
    """What makes tf2onnx's output deterministic and readable: a named batch dimension, names by position,
    no doc strings (tf2onnx writes the traced function's name, which has a counter)."""
    _name_batch_dim(proto)
    canonicalize_names(proto)
    proto.doc_string = ""
    proto.graph.doc_string = ""


def _name_batch_dim(model) -> None:
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"


def onnx_fp32_proto(source: ExportSource):
    """The float32 ONNX graph of a source, converted once and cached on the source."""
    if source._onnx_fp32 is None:
        tensorflow()
        tf2onnx = require("tf2onnx", extra="full", purpose="ONNX export")
        try:
            serve = source.frozen_serving_function()  # captured tensors must be constants, never inputs
            proto, _ = tf2onnx.convert.from_function(serve, opset=OPSET, input_signature=serve.input_signature,
                                                     custom_op_handlers=CUSTOM_OP_HANDLERS)
        except ResexportError:
            raise
        except Exception as exc:
            raise ResexportError(f"ONNX conversion of {source.path} failed: {type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:300]}") from exc
        _tidy(proto)
        source._onnx_fp32 = proto.SerializeToString()
    onnx = require("onnx", extra="onnx", purpose="ONNX export")
    return onnx.load_from_string(source._onnx_fp32)


APP_KEYS = ("class_names", "input_size", "channels", "color", "layout", "scale", "input_range", "mean", "std",
            "formula", "resize", "model_name", "model_version", "producer")


def app_metadata(deploy: dict, *, name: str, version: str) -> dict[str, str]:
    """The metadata_props an app reads (APP_KEYS, README "Use the files in an app"): the deployment info
    (exporter.convert.deployment_info) as JSON values, plain strings as they are, and who made the file."""
    props = {**deploy, "model_name": name, "model_version": version, "producer": "resexport"}
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()}


def write_metadata(path: Path, props: dict[str, str]) -> dict:
    """Set the model's metadata_props (key -> string, sorted by key, replacing any of the same key)
    in an exported file, atomically. Deterministic: the same props give the same bytes."""
    onnx = require("onnx", extra="onnx", purpose="ONNX metadata")
    proto = onnx.load(str(path))
    kept = {p.key: p.value for p in proto.metadata_props if p.key not in props}
    merged = {**kept, **{k: str(v) for k, v in props.items()}}
    del proto.metadata_props[:]
    for key in sorted(merged):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, merged[key]
    return _write(proto, path, "onnx")


def _write(proto, out: Path, kind: str, source: ExportSource | None = None) -> dict:
    """Every ONNX file is written here: atomically, and only if it passes the conformance gate."""
    return write_checked(out, proto.SerializeToString(), kind,
                         input_shape=source.input_shape if source else None,
                         num_classes=source.num_classes if source else None)


def topological_sort(graph) -> None:
    """Order a graph's nodes so that every node comes after the producers of its inputs (in place),
    keeping the original order wherever it is already valid. ONNX requires this order; ONNX
    Runtime's float16 converter appends the input Casts after the nodes that read them."""
    import heapq

    nodes = list(graph.node)
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    producer = {out: i for i, n in enumerate(nodes) for out in n.output}
    waiting = [sum(1 for name in set(n.input) if name not in available and name in producer) for n in nodes]
    readers: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in set(n.input):
            if name not in available and name in producer:
                readers.setdefault(producer[name], []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in readers.get(i, ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise ResexportError("ONNX graph has a cycle or reads a tensor nothing produces; cannot order it")
    if order != list(range(len(nodes))):
        sorted_nodes = [type(nodes[0])() for _ in nodes]
        for dst, i in zip(sorted_nodes, order):
            dst.CopyFrom(nodes[i])
        del graph.node[:]
        graph.node.extend(sorted_nodes)


def _details(start: float, conformance: dict, **extra) -> dict:
    return {"opset": OPSET, "seconds": round(time.perf_counter() - start, 2), "conformance": conformance, **extra}


def export_fp32(source: ExportSource, out: Path, calibration=None) -> dict:
    start = time.perf_counter()
    record = _write(onnx_fp32_proto(source), out, "onnx-fp32", source)
    return _details(start, record, converter="tf2onnx.convert.from_function (frozen: captured tensors as constants)")


def export_fp16(source: ExportSource, out: Path, calibration=None) -> dict:
    start = time.perf_counter()
    float16 = require("onnxruntime.transformers.float16", extra="onnx", purpose="ONNX float16 export")
    proto = float16.convert_float_to_float16(onnx_fp32_proto(source), keep_io_types=True)
    topological_sort(proto.graph)  # the converter appends the input Cast after the nodes reading it
    record = _write(proto, out, "onnx-fp16", source)
    return _details(start, record, converter="onnxruntime.transformers.float16 (keep_io_types) + topological sort")


# ONNX Runtime int8 settings per target CPU (`convert --target-cpu`). ORT's x86 int8 GEMM is u8 x s8:
# uint8 activations (QUInt8, "U8S8") are its native input; int8 activations (S8S8) cost a conversion
# and, on AVX2, a slower kernel. Without VNNI the u8 x s8 products are summed in pairs into int16
# (vpmaddubsw), which saturates with full-range weights; 7-bit weights (reduce_range) cannot.
# Measured on an AVX2 CPU without VNNI (benchmarks/results/ort_int8_settings.md): U8S8 +
# reduce_range is as accurate as S8S8 + reduce_range (the old default) and markedly faster; without
# reduce_range both lose ~4 points of agreement on plain12 to saturation. With VNNI (vpdpbusd,
# int32 accumulation) nothing saturates, so full-range weights: not measured here (no VNNI machine).
ORT_INT8_TARGETS = {
    "avx2": {"activation_type": "QUInt8", "weight_type": "QInt8", "reduce_range": True, "per_channel": True},
    "vnni": {"activation_type": "QUInt8", "weight_type": "QInt8", "reduce_range": False, "per_channel": True},
}
TARGET_CPU_CHOICES = ("auto", "vnni", "avx2")


def int8_target(target_cpu: str = "auto") -> dict:
    """The ORT int8 settings for --target-cpu (auto: the CPU converting, by its /proc/cpuinfo flags)."""
    if target_cpu not in TARGET_CPU_CHOICES:
        raise UsageError(f"unknown --target-cpu '{target_cpu}'", hint=f"choose one of: {', '.join(TARGET_CPU_CHOICES)}")
    detected = None
    if target_cpu == "auto":
        detected = "vnni" if has_vnni() else "avx2"
    name = detected or target_cpu
    return {"target_cpu": name, "requested": target_cpu, **ORT_INT8_TARGETS[name]}


def fold_post_relu_scales(model) -> dict:
    """Fold a per-channel (or scalar) positive scale after Conv -> Relu into the convolution (in place):
    Relu(conv(x)) * s == Relu(conv(x) * s) for s > 0, so the Mul goes and the Conv's weights and bias take s.

    This is the scale half of a BatchNormalization that follows a ReLU (seed 003's Conv -> ReLU -> BN, which
    tf2onnx writes as Mul and, where the shift is not zero, Add by constants). Exact in float. Left as it
    was, ONNX Runtime runs the Mul as a separate QLinearMul between Q/DQ pairs on every activation, which
    on the seed nets costs about as much as the convolutions (see `resexport profile`); folded, the scale
    rides in the int8 convolution. A shift (Add) is left to the quantiser (QLinearAdd): folding it into the
    next convolution is not exact where that one pads with zeros. Returns what was folded and skipped."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    outputs = {v.name for v in graph.output}
    folded, skipped, remove = [], [], []
    for mul in list(graph.node):
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        const = next((i for i in mul.input if i in inits), None)
        act = next((i for i in mul.input if i not in inits), None)
        relu = producer.get(act)
        conv = producer.get(relu.input[0]) if relu is not None and relu.op_type == "Relu" else None
        if const is None or act is None or conv is None or conv.op_type != "Conv" or conv.input[1] not in inits:
            continue
        if len(readers.get(conv.output[0], [])) != 1 or len(readers.get(act, [])) != 1 or act in outputs \
                or mul.output[0] in outputs:
            skipped.append({"node": mul.name, "why": "its tensors have other readers"})
            continue
        w = numpy_helper.to_array(inits[conv.input[1]])
        s = numpy_helper.to_array(inits[const]).astype(np.float64)
        channels = w.shape[0]
        if s.size == 1:
            s = np.full(channels, float(s.ravel()[0]))
        elif s.shape in ((channels, 1, 1), (1, channels, 1, 1)):
            s = s.reshape(channels)
        else:
            skipped.append({"node": mul.name, "why": f"scale of shape {list(s.shape)} is not per channel"})
            continue
        if not np.all(s > 0):
            skipped.append({"node": mul.name, "why": "a scale is not positive (Relu and the scale do not commute)"})
            continue
        new_w = numpy_helper.from_array((w * s.reshape(-1, *[1] * (w.ndim - 1))).astype(w.dtype),
                                        f"{conv.input[1]}_{mul.name}")
        graph.initializer.append(new_w)
        conv.input[1] = new_w.name
        if len(conv.input) > 2 and conv.input[2]:
            b = numpy_helper.to_array(inits[conv.input[2]])
            new_b = numpy_helper.from_array((b * s).astype(b.dtype), f"{conv.input[2]}_{mul.name}")
            graph.initializer.append(new_b)
            conv.input[2] = new_b.name
        for reader in readers.get(mul.output[0], []):
            reader.input[:] = [act if i == mul.output[0] else i for i in reader.input]
        remove.append(mul)
        folded.append(mul.name)
    for node in remove:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return {"folded": folded, "skipped": skipped}


def prepare_for_int8(source: ExportSource, folder: Path, *, fold_bn: bool = True) -> Path:
    """The float graph as ONNX Runtime's quantiser sees it: ORT's recommended pre-processing (shape
    inference + graph optimisation). Node and tensor names of the int8 graph come from this one."""
    fp32 = Path(folder) / "fp32.onnx"
    proto = onnx_fp32_proto(source)
    if fold_bn:
        (Path(folder) / "bn_fold.json").write_text(json.dumps(fold_post_relu_scales(proto)))
    fp32.write_bytes(proto.SerializeToString())
    prepared = Path(folder) / "prep.onnx"
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:
        raise ResexportError(f"ONNX int8 pre-processing failed: {type(exc).__name__}: {exc}") from exc
    return prepared


def calibration_reader(images: np.ndarray):
    q = require("onnxruntime.quantization", extra="onnx", purpose="ONNX int8 export")

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self._it = iter(range(0, len(images), 32))

        def get_next(self):
            i = next(self._it, None)
            return None if i is None else {INPUT_NAME: images[i: i + 32]}

        def rewind(self):
            self._it = iter(range(0, len(images), 32))

    return Reader()


def quantize_prepared(prepared: Path, out: Path, calibration, *, target: dict, float_layers=()) -> None:
    """ORT static quantisation of a prepared graph into `out` (a plain path, not atomic), keeping the
    nodes named in `float_layers` in float32 (nodes_to_exclude)."""
    q = require("onnxruntime.quantization", extra="onnx", purpose="ONNX int8 export")
    images = np.asarray(calibration.x, dtype=np.float32)
    try:
        q.quantize_static(str(prepared), str(out), calibration_reader(images), quant_format=q.QuantFormat.QDQ,
                          per_channel=target["per_channel"],
                          activation_type=getattr(q.QuantType, target["activation_type"]),
                          weight_type=getattr(q.QuantType, target["weight_type"]),
                          reduce_range=target["reduce_range"], calibrate_method=q.CalibrationMethod.MinMax,
                          nodes_to_exclude=list(float_layers) or None,
                          extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    except Exception as exc:
        raise ResexportError(f"ONNX int8 quantisation failed: {type(exc).__name__}: {exc}") from exc


def export_int8(source: ExportSource, out: Path, calibration=None, float_layers=None, target_cpu="auto") -> dict:
    """ONNX Runtime static quantisation: QDQ format, per-channel int8 weights, 8-bit activations
    calibrated (MinMax) on the same training-split subset as TFLite int8. Input/output stay float32.

    Settings per target CPU (ORT_INT8_TARGETS): uint8 activations (ORT's native x86 int8 path) and
    reduce_range (7-bit weights) without VNNI, where ORT's AVX2 int8 kernels saturate u8s8 products.
    Measured (S8S8) on resmini/Fashion-MNIST: agreement with
    Keras 92.8% without it, 99.3% with it (and 99.3% with the QDQ graph simulated in float), so the
    loss was the kernel's, not the quantisation's. `float_layers`: node names kept in float32."""
    if calibration is None:
        raise UsageError("onnx-int8 needs a calibration set")
    start = time.perf_counter()
    target = int8_target(target_cpu)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="resexport-q-") as tmpdir:
        prepared = prepare_for_int8(source, Path(tmpdir))
        q8 = Path(tmpdir) / "int8.onnx"
        quantize_prepared(prepared, q8, calibration, target=target, float_layers=float_layers or ())
        bn_fold = json.loads((Path(tmpdir) / "bn_fold.json").read_text())
        onnx = require("onnx", extra="onnx", purpose="ONNX export")
        proto = onnx.load(str(q8))
    proto.doc_string = ""
    record = _write(proto, out, "onnx-int8", source)
    settings = ", ".join(f"{k}={v}" for k, v in target.items() if k not in ("requested",))
    return _details(start, record, converter=f"onnxruntime.quantization.quantize_static (QDQ, MinMax, {settings}); "
                                             "post-ReLU BatchNorm scales folded into the convolution before it",
                    target_cpu=target, bn_scales_folded=len(bn_fold["folded"]), bn_fold_skipped=bn_fold["skipped"])


def export_qat_int8(qat_model, out: Path, input_shape, target_cpu: str = "auto") -> dict:
    """QDQ ONNX from a quantisation-aware model (exporter.quantize.qat): activations' FakeQuant ->
    QuantizeLinear/DequantizeLinear by tf2onnx, int8 per-channel weights and int32 biases put back by
    qat.onnx_weight_qdq, 7-bit for an AVX2 target (ORT_INT8_TARGETS' reduce_range, as export_int8).
    Float input/output like export_int8. Freezes the model's weights in place."""
    from exporter.quantize import qat

    start = time.perf_counter()
    target = int8_target(target_cpu)
    tensorflow()
    try:
        proto = qat.onnx_proto(qat_model, input_shape, input_name=INPUT_NAME, opset=OPSET,
                               reduce_range=target["reduce_range"])
    except ResexportError:
        raise
    except Exception as exc:
        raise ResexportError(f"ONNX conversion of the QAT model failed: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]}") from exc
    _tidy(proto)
    record = write_checked(out, proto.SerializeToString(), "onnx-int8", input_shape=tuple(input_shape),
                           num_classes=int(qat_model.output_shape[-1]))
    bits = "7-bit (reduce_range)" if target["reduce_range"] else "int8"
    return _details(start, conformance=record, target_cpu=target,
                    converter="tf2onnx.convert.from_function (QAT FakeQuant -> QDQ, uint8 activations) + "
                              f"{bits} per-channel weights / int32 biases (quantize.qat.onnx_weight_qdq)")


def int8_key(target_cpu: str, mode: str) -> dict:
    """What an ONNX int8 file depends on besides model, calibration and remedy: ONNX Runtime's int8 settings
    for --target-cpu (refused here if unknown), and 7-bit QAT weights for AVX2."""
    key = {"target_cpu": {k: v for k, v in int8_target(target_cpu).items() if k != "requested"}}
    if mode in ("qat", "auto") and key["target_cpu"]["reduce_range"]:
        key["qat_weights"] = "7-bit"  # QAT ONNX for AVX2 (before: 8-bit whatever the target)
    return key


def app_ready(path: Path, deploy: dict, *, name: str, version: str, num_classes=None) -> dict:
    """The metadata an app reads (APP_KEYS) in the file's metadata_props, through the conformance gate again."""
    props = app_metadata(deploy, name=name, version=version)
    return {**write_metadata(Path(path), props), "app": {"metadata_props": sorted(props)}}
