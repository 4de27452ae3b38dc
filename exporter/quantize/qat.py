"""Quantisation-aware fine-tuning (QAT) for Keras 3 models, on the TensorFlow backend.

Route (why): TF-MOT's quantize_model needs tf_keras models and Keras 3's own `quantize()` covers
Dense/EinsumDense only, so the model is REBUILT here as a Keras 3 functional graph whose layers call
TensorFlow's fake-quant ops, which both converters understand:
- TFLite: `TFLiteConverter.from_concrete_functions([fn])` (without the trackable object) reads the
  FakeQuant ranges and writes a full-int8 file (int8 I/O), no calibration pass.
- ONNX: tf2onnx turns FakeQuantWithMinMaxVars into QuantizeLinear/DequantizeLinear (uint8
  activations); it has no per-channel FakeQuant, so the weights are exported already rounded to their
  int8 grid and `onnx_weight_qdq` puts them back as int8 initialisers behind per-channel
  DequantizeLinear (the same int8 values and scales the fake-quant used).

The rebuild (`build_qat_model`):
- Conv2D / DepthwiseConv2D / Dense followed directly by BatchNormalization (and nothing else reading
  the conv's output): BN folded into the kernel and bias first (inference statistics, the way the
  converters fold it), then fine-tuned folded;
- a BatchNormalization that follows anything else (seed 003's Conv -> ReLU -> BN) becomes a 1x1
  depthwise convolution (per-channel scale as its kernel, shift as its bias), which both runtimes
  run in int8; BN on a 2-D tensor is refused;
- weights: symmetric, narrow range (-127..127), per output channel (convolutions and Dense: TF
  2.21's converter writes FULLY_CONNECTED per channel, re-rounding per-tensor weights); ranges =
  max |w| (recomputed every step);
- activations: one range per tensor (asymmetric 8 bit) after every op that computes new values,
  except where the op's only reader is a ReLU (fused); ranges initialised from the calibration
  images, then followed by an exponential moving average (decay EMA_DECAY) during fine-tuning;
  an interpolating Resizing/UpSampling2D rounds onto its input's grid (a tied range);
- biases: on the int32 grid the files store them on (input step x weight step, per channel);
  sync_ranges keeps those steps and the tied ranges in line with the ranges they come from.
  Without these two the int8 files drifted from the simulation by 1-2 steps at depth on mobile
  nets (benchmarks/qat_drift.py) and their predictions agreed with it at only 95-96%;
- nested functional/Sequential backbones are flattened into the one graph. Layers outside SUPPORTED
  are refused with a one-line error.

The layer classes (`ActQuant`, `QConv`) live at module level in exporter.quantize.layers, registered with
keras.saving there, so a saved QAT model opens after `import resexport`. This module imports Keras at its
top (through them): modules the edge box imports (validate) import it inside the function that needs it.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np

from exporter.errors import UsageError, require
from exporter.export.source import tensorflow
from exporter.quantize.layers import EMA_DECAY, ActQuant, QConv
from exporter.quiet import native_stderr_hidden, python_loggers_quiet

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = 1
DEFAULT_STEPS = 300          # steps of fine-tuning at most (batch DEFAULT_BATCH), whatever the epochs
DEFAULT_BATCH = 64
DEFAULT_LR = 1e-4            # the label route's Adam learning rate
# Distillation's: the model starts at the original, and the target is to stay there. On residual12 (an
# under-trained seed net) Adam at 1e-4 moved the int8 model's top-1 away from the original's (98.03% at the
# calibrated start -> 96.38-97.43% at every 50th step, test set), at 1e-5 it stayed above the start
# (98.16-98.47%): benchmarks/results/qat_distill_curve.md.
DISTILL_LR = 1e-5
BN_EPS_DEFAULT = 1e-3

COMPUTE = ("Conv2D", "DepthwiseConv2D", "Dense")
# Layers that move or select values without computing new ones (or are identity at inference, like
# the Random* augmentations): no new range after them, the converters give their output the input's.
PASS_THROUGH = ("MaxPooling2D", "Flatten", "Reshape", "Dropout", "ZeroPadding2D", "SpatialDropout2D",
                "GaussianNoise", "GaussianDropout", "ActivityRegularization", "Resizing", "Cropping2D", "CenterCrop",
                "UpSampling2D", "Identity", "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
                "RandomCrop", "RandomContrast", "RandomBrightness")
# Of those, the layers that act only while training and are the identity at inference (Dropout, noise,
# augmentation): a distilled fine-tuning leaves them out, since its targets are the original's inference
# outputs on the very same, unaugmented images. (Keras 3 lets the step's training flag win over a
# training=False fixed in the graph, so they are left out, not switched off.) RandomCrop is not among them:
# at inference it crops the centre.
TRAINING_ONLY = ("Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "RandomFlip", "RandomRotation",
                 "RandomZoom", "RandomTranslation", "RandomContrast", "RandomBrightness")
REQUANT = ("Add", "Subtract", "Multiply", "Concatenate", "Average", "AveragePooling2D", "GlobalAveragePooling2D",
           "GlobalMaxPooling2D", "Softmax", "Rescaling")
RELUS = ("ReLU",)
AFFINE = ("BatchNormalization", "Normalization")  # per-channel x * scale + shift
SUPPORTED = (*COMPUTE, *AFFINE, "Activation", *RELUS, *PASS_THROUGH, *REQUANT, "InputLayer")
FUSABLE_ACTIVATIONS = ("relu", "relu6", "linear")
# int8 kernels whose output range is fixed (TFLite: LOGISTIC and SOFTMAX 1/256 from 0, TANH 1/128 around 0);
# swish runs as LOGISTIC then MUL, so its sigmoid is rounded onto that grid before the product
FIXED_RANGES = {"sigmoid": (0.0, 255 / 256), "softmax": (0.0, 255 / 256), "tanh": (-1.0, 127 / 128)}
ACTIVATIONS = ("relu", "relu6", "linear", "softmax", "sigmoid", "tanh", "swish", "silu", "hard_swish",
               "hard_sigmoid")


def _tf():
    return tensorflow()


# ------------------------------------------------------------------------------ graph

class _Node:
    def __init__(self, op, node, inputs, outputs, ids):
        self.op, self.node, self.inputs, self.outputs, self.ids = op, node, inputs, outputs, ids

    @property
    def type(self) -> str:
        return type(self.op).__name__


def _is_model(op) -> bool:
    return isinstance(op, keras.Model)


def trace(model) -> tuple[list[_Node], list[int], list[int]]:
    """The model's graph as a flat list of layer calls (nested functional/Sequential models inlined),
    tensors numbered: (nodes in topological order, input tensor ids, output tensor ids)."""
    import sys

    if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
        raise UsageError(f"QAT needs a functional or Sequential Keras model; '{model.name}' "
                         f"({type(model).__name__}) has no graph to rebuild (a subclassed model)",
                         hint="use --int8 ptq or fallback for it")
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    nodes: list[_Node] = []
    count = [0]

    def new_id():
        count[0] += 1
        return count[0] - 1

    def visit(m, input_ids):
        if not getattr(m, "inputs", None):
            raise UsageError(f"QAT cannot rebuild the nested model '{m.name}' ({type(m).__name__}): it has no "
                             "functional graph", hint="use --int8 ptq or fallback for it")
        local = {id(t): i for t, i in zip(m.inputs, input_ids)}

        def ev(kt):
            if id(kt) in local:
                return local[id(kt)]
            op, node_index, _ = kt._keras_history
            node = op._inbound_nodes[node_index]
            ins = [ev(t) for t in node.input_tensors]
            if _is_model(op):
                outs = visit(op, ins)
            else:
                outs = [new_id() for _ in node.outputs]
                nodes.append(_Node(op, node, ins, outs, {id(t): i for t, i in zip(node.input_tensors, ins)}))
            for t, i in zip(node.outputs, outs):
                local[id(t)] = i
            return local[id(kt)]

        return [ev(t) for t in m.outputs]

    inputs = [new_id() for _ in model.inputs]
    outputs = visit(model, inputs)
    return nodes, inputs, outputs


def _activation_name(op) -> str:
    act = getattr(op, "activation", None)
    name = getattr(act, "__name__", str(act)) if act is not None else "linear"
    return {"silu": "swish"}.get(name, name)


def check_supported(model) -> None:
    """Refuse, in one line, a model the QAT rebuild cannot handle."""
    nodes, _, _ = trace(model)
    bad = sorted({n.type for n in nodes if n.type not in SUPPORTED})
    if bad:
        raise UsageError(f"QAT cannot rebuild layer type(s) {', '.join(bad)} of '{model.name}' "
                         f"(supported: Conv2D, DepthwiseConv2D, Dense, BatchNormalization, Normalization, "
                         "ReLU/Activation, Add/Multiply/Concatenate, pooling, Flatten/Reshape/Dropout, Rescaling, "
                         "Resizing/cropping, Random* augmentation, Softmax)",
                         hint="use --int8 ptq or --int8 fallback for this model")
    for n in nodes:
        if n.type == "Conv2D" and getattr(n.op, "groups", 1) != 1:
            raise UsageError(f"QAT cannot rebuild grouped Conv2D '{n.op.name}'", hint="use --int8 ptq or fallback")
        if n.type in COMPUTE or n.type == "Activation":
            act = _activation_name(n.op)
            if act not in ACTIVATIONS:
                raise UsageError(f"QAT cannot rebuild activation '{act}' of layer '{n.op.name}'",
                                 hint="use --int8 ptq or fallback")
        if n.type in AFFINE:
            rank = len(n.node.input_tensors[0].shape)
            axis = n.op.axis
            axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
            if tuple(a % rank for a in axes) != (rank - 1,):
                raise UsageError(f"QAT supports {n.type} over the last (channel) axis only ('{n.op.name}')",
                                 hint="use --int8 ptq or fallback")
            if n.type == "Normalization" and n.op.invert:
                raise UsageError(f"QAT cannot rebuild the inverted Normalization '{n.op.name}'",
                                 hint="use --int8 ptq or fallback")


def _affine(node: _Node) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization (inference statistics) or Normalization as y = x * scale + shift, per channel."""
    op = node.op
    channels = int(node.node.input_tensors[0].shape[-1])
    if node.type == "Normalization":  # Keras: (x - mean) / max(sqrt(variance), epsilon)
        mean = np.broadcast_to(np.asarray(op.mean, np.float64).reshape(-1), (channels,))
        std = np.maximum(np.sqrt(np.broadcast_to(np.asarray(op.variance, np.float64).reshape(-1), (channels,))),
                         keras.backend.epsilon())
        return 1.0 / std, -mean / std
    w = {v.path.split("/")[-1]: np.asarray(v, np.float64) for v in op.weights}
    gamma = w.get("gamma", np.ones(channels))
    beta = w.get("beta", np.zeros(channels))
    scale = gamma / np.sqrt(w["moving_variance"] + op.epsilon)
    return scale, beta - w["moving_mean"] * scale


def build_qat_model(model, *, inference_layers: bool = False):
    """The QAT rebuild of `model` (see the module doc). Returns (qat_model, notes): notes counts what
    was folded and converted. The new model's weights start from the original's. inference_layers: the
    TRAINING_ONLY layers are left out (the identity they are at inference), for distillation.

    Over 80 lines on purpose: its steps (find BatchNorm folds, fused activations, tied and fixed ranges, then
    rebuild node by node) share the traced graph's tables (consumers, folds, ranges, the new tensors) as
    closures; split apart, each step would take most of them as arguments."""
    check_supported(model)
    nodes, input_ids, output_ids = trace(model)
    consumers: dict[int, list[_Node]] = {}
    for n in nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    outputs_set = set(output_ids)

    def only_reader(tid):
        readers = consumers.get(tid, [])
        return readers[0] if len(readers) == 1 and tid not in outputs_set else None

    folded: dict[int, int] = {}      # id(BN node) -> its conv node's output id
    fold_into: dict[int, _Node] = {}  # id(conv node) -> the BN node
    for n in nodes:
        if n.type in COMPUTE and _activation_name(n.op) == "linear":
            reader = only_reader(n.outputs[0])
            if reader is not None and reader.type == "BatchNormalization" and len(n.node.outputs[0].shape) >= 2:
                fold_into[id(n)] = reader
                folded[id(reader)] = n.outputs[0]

    def fused_into_reader(tid) -> bool:
        reader = only_reader(tid)
        if reader is None:
            return False
        if reader.type == "ReLU" and reader.op.negative_slope == 0 and reader.op.threshold == 0:
            return True
        return reader.type == "Activation" and _activation_name(reader.op) in ("relu", "relu6")

    env: dict[int, object] = {}
    notes = {"bn_folded": 0, "bn_as_depthwise": 0, "normalization_as_depthwise": 0, "weight_layers": 0,
             "activation_ranges": 0, "tied_ranges": 0, "fixed_ranges": 0}
    names: set[str] = set()

    def uname(base):
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.add(name)
        return name

    def aq(x, base, tied=False):
        notes["tied_ranges" if tied else "activation_ranges"] += 1
        return ActQuant(tied=tied, name=uname(f"{base}_aq"))(x)

    def fixed(x, act, base):
        notes["fixed_ranges"] += 1
        return ActQuant(fixed=FIXED_RANGES[act], name=uname(f"{base}_{act}_aq"))(x)

    def activation(x, act, base):
        """`act` on a quantised tensor as the int8 kernels compute it: (output, whether it already
        carries its range)."""
        if act == "swish":
            s = fixed(keras.layers.Activation("sigmoid", name=uname(f"{base}_sigmoid"))(x), "sigmoid", base)
            return keras.layers.Multiply(name=uname(f"{base}_swish"))([x, s]), False
        y = keras.layers.Activation(act, name=uname(f"{base}_act"))(x)
        return (fixed(y, act, base), True) if act in FIXED_RANGES else (y, False)

    new_inputs = []
    for t, tid in zip(model.inputs, input_ids):
        inp = keras.Input(tuple(t.shape[1:]), name=getattr(t, "name", None) or "image", dtype="float32")
        new_inputs.append(inp)
        env[tid] = aq(inp, "input")

    for n in nodes:
        x_ids = n.inputs
        name = n.op.name
        t = n.type
        if t == "BatchNormalization" and id(n) in folded:
            env[n.outputs[0]] = env[folded[id(n)]]
            continue
        if t in COMPUTE:
            op = n.op
            kernel = np.asarray(op.kernel, np.float64)
            bias = np.asarray(op.bias, np.float64) if getattr(op, "use_bias", False) and op.bias is not None \
                else np.zeros(kernel.shape[-1] if t != "DepthwiseConv2D" else kernel.shape[2] * kernel.shape[3])
            kind = {"Conv2D": "conv", "DepthwiseConv2D": "depthwise", "Dense": "dense"}[t]
            bn = fold_into.get(id(n))
            if bn is not None:
                scale, shift = _affine(bn)
                if kind == "depthwise":
                    kh, kw, cin, mult = kernel.shape
                    kernel = (kernel.reshape(kh, kw, cin * mult) * scale).reshape(kh, kw, cin, mult)
                else:
                    kernel = kernel * scale
                bias = bias * scale + shift
                notes["bn_folded"] += 1
            act = _activation_name(op)
            fused = act if act in FUSABLE_ACTIVATIONS else "linear"
            kw = {} if kind == "dense" else {"strides": op.strides, "padding": op.padding,
                                             "dilation": op.dilation_rate}
            y = QConv(kind, kernel, bias, activation=fused, name=uname(f"{name}_q"), **kw)(env[x_ids[0]])
            notes["weight_layers"] += 1
            has_range = False
            if act not in FUSABLE_ACTIVATIONS:
                y, has_range = activation(aq(y, name), act, name)
            out_id = bn.outputs[0] if bn is not None else n.outputs[0]
            env[out_id] = y if has_range or fused_into_reader(out_id) else aq(y, name)
            if bn is not None:
                env[n.outputs[0]] = env[out_id]
            continue
        if t in AFFINE:  # not after a conv (e.g. Conv -> ReLU -> BN, or Normalization at the input)
            if len(n.node.input_tensors[0].shape) != 4:
                raise UsageError(f"QAT cannot rebuild {t} '{name}' on a {len(n.node.input_tensors[0].shape)}-D "
                                 "tensor that does not follow a Conv/Dense", hint="use --int8 ptq or fallback")
            scale, shift = _affine(n)
            y = QConv("depthwise", scale.reshape(1, 1, -1, 1), shift, name=uname(f"{name}_q"))(env[x_ids[0]])
            notes["bn_as_depthwise" if t == "BatchNormalization" else "normalization_as_depthwise"] += 1
            notes["weight_layers"] += 1
            env[n.outputs[0]] = y if fused_into_reader(n.outputs[0]) else aq(y, name)
            continue
        if t == "InputLayer":
            continue
        act = _activation_name(n.op) if t == "Activation" else "softmax" if t == "Softmax" else None
        if act in (*FIXED_RANGES, "swish") and (t == "Activation" or n.op.axis in (-1, [-1], (-1,))):
            y, has_range = activation(env[x_ids[0]], act, name)
            env[n.outputs[0]] = y if has_range or fused_into_reader(n.outputs[0]) else aq(y, name)
            continue
        # everything else: call a fresh copy of the layer (same config and weights) on the new tensors
        if inference_layers and t in TRAINING_ONLY:
            env[n.outputs[0]] = env[x_ids[0]]  # the identity it is at inference
            notes["left_out_training_only"] = notes.get("left_out_training_only", 0) + 1
            continue
        clone = type(n.op).from_config({**n.op.get_config(), "name": uname(name)})
        args = _map_args(n, env)
        y = clone(*args[0], **args[1])
        if n.op.weights:
            clone.set_weights(n.op.get_weights())
        if t in PASS_THROUGH:
            # interpolation computes values between the input's steps; the runtimes round them back
            # onto the input's grid (same scale in and out), so the simulation does too
            interpolates = t in ("Resizing", "UpSampling2D") and getattr(n.op, "interpolation", "nearest") != "nearest"
            env[n.outputs[0]] = aq(y, name, tied=True) if interpolates else y
        else:
            env[n.outputs[0]] = y if fused_into_reader(n.outputs[0]) else aq(y, name)
    outs = [env[i] for i in output_ids]
    qat = keras.Model(new_inputs[0] if len(new_inputs) == 1 else new_inputs, outs[0] if len(outs) == 1 else outs,
                      name=f"{model.name}_qat")
    return qat, notes


def _map_args(n: _Node, env):
    def sub(x):
        if keras.utils.is_keras_tensor(x):
            return env[n.ids[id(x)]]
        return x

    args = keras.tree.map_structure(sub, n.node.arguments.args)
    kwargs = keras.tree.map_structure(sub, n.node.arguments.kwargs)
    kwargs.pop("training", None)
    kwargs.pop("mask", None)
    return list(args), dict(kwargs)


def act_quant_layers(qat_model):
    return [l for l in qat_model.layers if isinstance(l, ActQuant)]


def _upstream_range(tensor):
    """The ActQuant whose grid `tensor` lies on (through pass-through layers), or None."""
    cls = ActQuant
    while True:
        op = tensor._keras_history[0]
        if isinstance(op, cls) and not op.tied:
            return op
        if not (isinstance(op, cls) or type(op).__name__ in PASS_THROUGH) or not op._inbound_nodes:
            return None
        tensor = op._inbound_nodes[0].input_tensors[0]


def range_links(qat_model) -> list[tuple]:
    """(layer, the ActQuant it takes its scale from): every QConv (its input's scale sets its bias
    grid) and every tied ActQuant (it rounds onto its input's grid)."""
    links = []
    for layer in qat_model.layers:
        if isinstance(layer, QConv) or (isinstance(layer, ActQuant) and layer.tied):
            src = _upstream_range(layer._inbound_nodes[0].input_tensors[0])
            if src is not None:
                links.append((layer, src))
    return links


def range_step(aq) -> float:
    """The activation step TensorFlow's fake quant (and so the converters) derive from a range."""
    lo = min(float(aq.amin.numpy()), 0.0)
    hi = max(float(aq.amax.numpy()), 0.0, lo + 1e-6)
    return float((np.float32(hi) - np.float32(lo)) / np.float32(255))


def sync_ranges(qat_model, links=None) -> None:
    """Copy each range to the layers that follow it: QConv.in_scale (bias grid) and tied ranges. A range
    kept float (a float stem) gives no grid: the convolution reading it keeps a float bias, as the files do."""
    for layer, src in range_links(qat_model) if links is None else links:
        if isinstance(layer, QConv):
            layer.in_scale.assign(0.0 if src.keep_float else range_step(src))
        else:
            layer.amin.assign(src.amin)
            layer.amax.assign(src.amax)


def calibrate(qat_model, images: np.ndarray, batch: int = 64) -> None:
    """Activation ranges = min/max over `images` (the weights' fake quant on); then the biases'
    grids and the tied ranges follow them (sync_ranges)."""
    aqs = act_quant_layers(qat_model)
    for l in aqs:
        l.calibrating = True
    try:
        for i in range(0, len(images), batch):
            qat_model(images[i: i + batch], training=False)
    finally:
        for l in aqs:
            l.calibrating = False
    sync_ranges(qat_model)


# A float stem (issue 32): when a distilled fine-tuning's best checkpoint still agrees with the original on
# fewer than FLOAT_STEM_TRIGGER % of the held-back images (the int8 gate, 97%, plus half a point: those
# images may have been trained on, and the best of several checkpoints is an optimistic pick), the first
# activations in graph order are kept float32 and the fine-tuning is run again. Keeping the first layers
# in higher precision is the usual remedy of quantisation-aware training: noise that enters early passes
# through every later layer. How far the stem goes is set by size, not by trial: the longest prefix whose
# convolutions' weights (stored float32, 4x) are at most FLOAT_STEM_BUDGET of all the weights, so the file
# grows by at most ~3 x that (4.5%), and at most half the activation ranges. Measured on MobileNetV2 (alpha
# 0.35, the only model of benchmarks/qat_distill.py below the trigger): full int8 96.75%, with the stem
# 97.98% (TFLite) / 97.97% (ONNX) agreement with the original on the test set (results/qat_distill.md).
FLOAT_STEM_TRIGGER = 97.5
FLOAT_STEM_BUDGET = 0.015
FLOAT_STEMS = ("auto", "off")


def check_float_stem(policy: str) -> str:
    if policy not in FLOAT_STEMS:
        raise UsageError(f"unknown --qat-float-stem '{policy}'", hint=f"choose one of: {', '.join(FLOAT_STEMS)}")
    return policy


def _reads_input(aq) -> bool:
    return type(aq._inbound_nodes[0].input_tensors[0]._keras_history[0]).__name__ == "InputLayer"


def float_stem_plan(qat_model, budget: float | None = None) -> dict:
    """The longest float stem within `budget`: the first activation ranges in graph order (never the input's:
    the files take the image as uint8; never a tied or fixed range, which follow another) such that the
    convolutions computing in float (before the stem's last range, or reading a range of it) hold at most
    `budget` (default FLOAT_STEM_BUDGET) of the weights, and at most half the ranges. Returns {ranges, layers,
    float_weights, weights}."""
    budget = FLOAT_STEM_BUDGET if budget is None else budget
    layers = qat_model.layers
    pos = {id(layer): i for i, layer in enumerate(layers)}
    convs = [layer for layer in layers if isinstance(layer, QConv)]
    total = sum(int(np.prod(c.kernel_shape)) for c in convs)
    src = {id(c): _upstream_range(c._inbound_nodes[0].input_tensors[0]) for c in convs}
    candidates = [a for a in act_quant_layers(qat_model) if not a.tied and a.fixed is None and not _reads_input(a)]
    plan = {"ranges": [], "layers": [], "float_weights": 0, "weights": total}
    for k in range(1, len(candidates) // 2 + 1):
        ids = {id(a) for a in candidates[:k]}
        last = pos[id(candidates[k - 1])]
        floating = [c for c in convs if pos[id(c)] < last or (src[id(c)] is not None and id(src[id(c)]) in ids)]
        weights = sum(int(np.prod(c.kernel_shape)) for c in floating)
        if weights > budget * total:
            break
        plan = {"ranges": [a.name for a in candidates[:k]], "layers": [c.name for c in floating],
                "float_weights": weights, "weights": total}
    return plan


def apply_float_stem(qat_model, ranges) -> None:
    """Keep the named activation ranges float32, the fixed ranges among them, and the tied ranges that copy
    one of them, then re-sync the bias grids: the simulation then computes what the files compute with those
    tensors float. A tied range copying an int8 range stays: an interpolating resize of the int8 input runs
    in int8 in the files, and rounds, before the float stem begins."""
    names = set(ranges)
    aqs = act_quant_layers(qat_model)
    last = max((i for i, a in enumerate(aqs) if a.name in names), default=-1)
    for i, a in enumerate(aqs):
        if a.name in names or (i < last and a.fixed is not None):
            a.keep_float = True
    for layer, src in range_links(qat_model):
        if isinstance(layer, ActQuant) and src.keep_float:
            layer.keep_float = True
    sync_ranges(qat_model)


# The fine-tuning loss (issue 32). 'distill' (default): the target is the ORIGINAL model's own output on
# each image (the teacher, run once in inference mode before fine-tuning), so the int8 model is pulled
# back onto the model the user brought, not onto the labels: QAT then needs images only, and the file is
# judged against the original like a PTQ file. 'labels': sparse cross-entropy on the labels (the route
# before issue 32): a RETRAINED model, which may gain accuracy and disagree with the original (on an
# under-trained model, one test image in eight).
LOSSES = ("distill", "labels")
DEFAULT_LOSS = "distill"
# Temperature 1: the int8 gates compare the file's top-1 and probabilities with the original's at T=1, so
# the loss matches the original's probabilities exactly as they are measured (a higher T spreads the
# weight onto the non-top classes, which the gates never read). A probabilities model's teacher logits are
# log(p) (softmax(log p / T) = p^(1/T) normalised, so any T is defined for both conventions).
DISTILL_TEMPERATURE = 1.0
# Weight of an extra label term in the distilled loss: 0 by default, because any weight on the labels pulls
# the model away from the original exactly where it disagrees with them (the images whose predictions the
# user's model has, right or wrong, and the file should keep); and with 0 no labels are needed at all.
DEFAULT_LABEL_WEIGHT = 0.0
# A distilled fine-tuning keeps its best checkpoint, judged every SELECT_EVERY steps (and before the first:
# the calibrated model) on SELECT_IMAGES fine-tuning images held back from the steps. On an under-trained
# seed net, 300 steps of distillation moved the int8 model's top-1 AWAY from the original's (98.03% ->
# 96.99% agreement on the test set, residual12), so "no step" must stay a candidate.
SELECT_EVERY = 25
SELECT_IMAGES = 2000
_EPS = 1e-7


def default_lr(loss: str) -> float:
    return DISTILL_LR if loss == "distill" else DEFAULT_LR


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise UsageError(f"unknown --qat-loss '{loss}'", hint=f"choose one of: {', '.join(LOSSES)}")
    return loss


def as_logits(outputs: np.ndarray, output: str) -> np.ndarray:
    """Logits of a model's outputs: as they are (logits), or log p (probabilities; up to a per-image
    constant that softmax ignores)."""
    outputs = np.asarray(outputs, np.float64)
    return outputs if output == "logits" else np.log(np.clip(outputs, _EPS, 1.0))


def soft_targets(teacher_outputs: np.ndarray, output: str, temperature: float = DISTILL_TEMPERATURE) -> np.ndarray:
    """The teacher's temperature-softened probabilities softmax(logits / T)."""
    z = as_logits(teacher_outputs, output) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def distill_loss(output: str, classes: int, temperature: float = DISTILL_TEMPERATURE, label_weight: float = 0.0):
    """Keras loss on y_true = [soft targets (classes) | one-hot labels (classes)]: T^2 x cross-entropy of
    the student's softmax(logits / T) with the soft targets (KL divergence up to the targets' entropy,
    the same gradients), plus label_weight x cross-entropy with the labels at T=1."""
    ops = keras.ops

    def loss(y_true, y_pred):
        z = y_pred if output == "logits" else ops.log(ops.clip(y_pred, _EPS, 1.0))
        soft, onehot = y_true[:, :classes], y_true[:, classes:]
        kd = -ops.sum(soft * ops.log_softmax(z / temperature, axis=-1), axis=-1) * (temperature ** 2)
        if label_weight:
            kd = kd - label_weight * ops.sum(onehot * ops.log_softmax(z, axis=-1), axis=-1)
        return kd

    return loss


def fine_tune(qat_model, x: np.ndarray, y: np.ndarray | None = None, *, epochs: int = DEFAULT_EPOCHS,
              steps: int | None = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH, lr: float = DEFAULT_LR,
              output: str = "probabilities", seed: int = 0, loss: str = "labels",
              teacher_outputs: np.ndarray | None = None, temperature: float = DISTILL_TEMPERATURE,
              label_weight: float = DEFAULT_LABEL_WEIGHT, select: tuple | None = None,
              check_every: int = SELECT_EVERY) -> dict:
    """Fine-tune with simulated int8: Adam at `lr`, `epochs` passes over x capped at `steps` steps in all.
    loss='labels': sparse cross-entropy with `y` on the model's own output convention. loss='distill': the
    original's outputs on x (`teacher_outputs`, same convention) softened at `temperature` are the target
    (distill_loss), with `label_weight` x cross-entropy on `y` added when it is > 0. select=(images, the
    original's outputs on them), images not in x: the weights kept are those of the checkpoint (before
    the first step, every `check_every` steps, after the last) whose top-1 agrees most with the original
    on them (ties: the earliest). Returns what was done."""
    check_loss(loss)
    keras.utils.set_random_seed(seed)
    n = len(x)
    per_epoch = max(1, int(np.ceil(n / batch_size)))
    total = per_epoch * max(1, epochs)
    if steps:
        total = min(total, steps)
    if loss == "labels":
        if y is None:
            raise UsageError("--qat-loss labels needs labelled images", hint="use --qat-loss distill (images only)")
        fn = keras.losses.SparseCategoricalCrossentropy(from_logits=(output == "logits"))
        target = np.asarray(y)
    else:
        if teacher_outputs is None or len(teacher_outputs) != n:
            raise ValueError("distillation needs the original's outputs on every fine-tuning image")
        if label_weight and y is None:
            raise UsageError("a label weight needs labelled images", hint="leave the label weight at 0")
        classes = int(teacher_outputs.shape[1])
        onehot = np.eye(classes, dtype=np.float32)[np.asarray(y)] if label_weight else np.zeros((n, classes), np.float32)
        target = np.concatenate([soft_targets(teacher_outputs, output, temperature), onehot], axis=1)
        fn = distill_loss(output, classes, temperature, label_weight)
    qat_model.compile(optimizer=keras.optimizers.Adam(lr), loss=fn, jit_compile=False)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    done = 0
    losses = []
    links = range_links(qat_model)
    checkpoints = _Checkpoints(qat_model, select)
    while done < total:
        order = rng.permutation(n)
        for i in range(0, n, batch_size):
            if done >= total:
                break
            checkpoints.offer(done, every=check_every)
            idx = np.sort(order[i: i + batch_size])
            out = qat_model.train_on_batch(np.asarray(x[idx], np.float32), target[idx], return_dict=True)
            losses.append(float(out["loss"]))
            sync_ranges(qat_model, links)  # the EMA moved the ranges: biases and tied ranges follow
            done += 1
    checkpoints.offer(done, every=1)
    selection = checkpoints.restore(links)
    return {"steps": done, "epochs": round(done / per_epoch, 3), "batch_size": batch_size, "lr": lr,
            **({"selection": selection} if selection else {}),
            "images": int(min(n, done * batch_size)), "optimizer": "Adam",
            "loss": loss, **({"temperature": temperature, "label_weight": label_weight,
                              "target": "the original model's outputs (inference mode), softened at the temperature"}
                             if loss == "distill" else {"target": "the labels"}),
            "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None,
            "seconds": round(time.perf_counter() - start, 1)}


class _Checkpoints:
    """The fine-tuning's checkpoints judged on held-back images by top-1 agreement with the original; keeps
    the best weights (activation ranges included: they are the ActQuant layers' weights)."""

    def __init__(self, qat_model, select: tuple | None):
        self.model, self.select = qat_model, select
        self.by_step: list[tuple[int, float]] = []
        self.best: tuple[float, int, list] | None = None
        if select is not None:
            self.teacher_top1 = np.asarray(select[1]).argmax(1)

    def offer(self, step: int, every: int) -> None:
        if self.select is None or step % max(1, every) or any(s == step for s, _ in self.by_step):
            return
        x = self.select[0]
        top1 = np.concatenate([np.asarray(self.model(np.asarray(x[i: i + 256], np.float32), training=False))
                               for i in range(0, len(x), 256)]).argmax(1)
        agreement = float((top1 == self.teacher_top1).mean() * 100)
        self.by_step.append((step, round(agreement, 2)))
        if self.best is None or agreement > self.best[0]:
            self.best = (agreement, step, self.model.get_weights())

    def restore(self, links) -> dict | None:
        if self.best is None:
            return None
        self.model.set_weights(self.best[2])
        sync_ranges(self.model, links)
        return {"kept_step": self.best[1], "images": len(self.select[0]),
                "agreement_by_step": [list(p) for p in self.by_step],
                "rule": "the checkpoint whose top-1 agrees most with the original on held-back fine-tuning "
                        "images (not trained on; ties: the earliest)"}


# ------------------------------------------------------------------------------ export

def concrete_function(qat_model, input_shape, input_name: str = "image"):
    tf = _tf()
    spec = tf.TensorSpec((None, *input_shape), tf.float32, name=input_name)

    @tf.function(input_signature=[spec])
    def serve(x):
        return {"probabilities": qat_model(x, training=False)}

    return serve.get_concrete_function()


def tflite_bytes(qat_model, input_shape) -> bytes:
    """The full-int8 TFLite file of a QAT model: int8 input and output, every op int8, the ranges
    the fake-quant ops carry (no calibration pass). from_concrete_functions WITHOUT the trackable
    object: with it the converter misses the QAT graph."""
    tf = _tf()
    with python_loggers_quiet("absl", "tensorflow"):  # "consider providing the trackable_obj argument": see above
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete_function(qat_model, input_shape)])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        with native_stderr_hidden():
            return converter.convert()


def freeze_weights(qat_model) -> None:
    """Round every kernel to its int8 grid in place (fake quant applied once, then off): the form
    tf2onnx exports, whose weights onnx_weight_qdq turns back into int8 initialisers."""
    for layer in qat_model.layers:
        if isinstance(layer, QConv) and not layer.frozen_weights:
            k = layer.quantized_kernel()
            layer.bias.assign(layer.quantized_bias(k))
            layer.kernel.assign(k)
            layer.frozen_weights = True


def float_twin(qat_model):
    """The fine-tuned model computed in float: a copy of `qat_model` whose kernels sit on their int8
    grid and whose activation ranges are not applied. The base of a float fallback on top of QAT
    (the converters quantise it again from calibration, with some layers kept float)."""
    twin = keras.Model.from_config(qat_model.get_config())
    twin.set_weights(qat_model.get_weights())
    for layer in twin.layers:
        if isinstance(layer, QConv):
            layer.kernel.assign(layer.quantized_kernel())
            layer.in_scale.assign(0.0)  # float bias: the converters put it on their own grid again
            layer.frozen_weights = True
        elif isinstance(layer, ActQuant):
            layer.bypass = True
    return twin


def onnx_proto(qat_model, input_shape, input_name: str = "image", opset: int = 17, reduce_range: bool = False):
    """The QDQ ONNX graph of a QAT model: tf2onnx on the frozen model (activations' FakeQuant ->
    QuantizeLinear/DequantizeLinear, uint8), then onnx_weight_qdq (int8 weights, int32 biases). The
    model's kernels are rounded to their int8 grid in place (which changes nothing it computes).
    reduce_range: 7-bit weights (-63..63) for ONNX Runtime on AVX2 CPUs without VNNI, whose u8 x s8
    kernels saturate full-range weights (--target-cpu avx2): the fine-tuned weights re-rounded."""
    tf = _tf()
    tf2onnx = require("tf2onnx", extra="full", purpose="ONNX export")
    freeze_weights(qat_model)
    spec = (tf.TensorSpec((None, *input_shape), tf.float32, name=input_name),)

    @tf.function(input_signature=spec)
    def serve(x):
        return {"probabilities": qat_model(x, training=False)}

    try:
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset)
    finally:  # the kernels stay on their grid; fake quant on again (idempotent) for later exports
        for layer in qat_model.layers:
            if isinstance(layer, QConv):
                layer.frozen_weights = False
    onnx_weight_qdq(proto, levels=63 if reduce_range else 127)
    round_half_up_after_resize(proto)
    return proto


def round_half_up_after_resize(proto) -> int:
    """Interpolation lands exactly half-way between two int8 steps on many pixels (a 28 -> 32 resize:
    fractions of 1/16). TensorFlow's fake quant and TFLite round those ties up, ONNX's
    QuantizeLinear to even; one pixel in a few hundred then differs by a step and, through a deep
    int8 net, moves predictions (measured: ~3% on MobileNetV2). A QuantizeLinear fed by a Resize
    gets step/1024 added first, far below the 1/256-step granularity of the interpolated values,
    so ties round up and nothing else moves. Returns how many were changed."""
    from onnx import helper, numpy_helper

    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    nodes, changed = [], 0
    for n in g.node:
        p = producer.get(n.input[0]) if n.op_type == "QuantizeLinear" else None
        if p is not None and p.op_type == "Resize" and n.input[1] in inits:
            scale = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
            name = f"{n.name}_tie_up"
            g.initializer.append(numpy_helper.from_array((scale / np.float32(1024)).astype(np.float32), f"{name}_eps"))
            nodes.append(helper.make_node("Add", [n.input[0], f"{name}_eps"], [f"{name}_out"], name=name))
            n.input[0] = f"{name}_out"
            changed += 1
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    return changed


def onnx_weight_qdq(proto, levels: int = 127) -> dict:
    """Put the int8 weights back behind DequantizeLinear: each Conv's weight initializer (on its int8
    grid, per output channel: axis 0) and each MatMul's (per output column: axis 1) becomes int8 values + scale; a
    Conv's bias becomes int32 with scale input_scale x weight_scale when its input comes from a
    DequantizeLinear. ONNX Runtime then runs those nodes in int8 (QLinearConv/QLinearMatMul).
    levels: the weights' symmetric range, 127 (8 bit, narrow) or 63 (7 bit, reduce_range)."""
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    new_nodes, counts = [], {"weights": 0, "biases": 0}

    def dq(name, q, scale, zero, axis, dtype):
        base = f"{name}_q"
        g.initializer.extend([numpy_helper.from_array(q, base), numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale"),
                              numpy_helper.from_array(zero, f"{base}_zero")])
        out = f"{name}_dq"
        attrs = {"axis": axis} if scale.ndim else {}
        new_nodes.append(helper.make_node("DequantizeLinear", [base, f"{base}_scale", f"{base}_zero"], [out],
                                          name=f"{name}_DequantizeLinear", **attrs))
        return out

    def input_scale(tensor):
        p = producer.get(tensor)
        while p is not None and p.op_type in ("Reshape", "Transpose", "MaxPool", "Flatten") and p.input:
            p = producer.get(p.input[0])
        if p is not None and p.op_type == "DequantizeLinear" and p.input[1] in inits:
            return float(numpy_helper.to_array(inits[p.input[1]]))
        return None

    for n in list(g.node):
        if n.op_type not in ("Conv", "MatMul") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        if n.op_type == "Conv":
            m = np.abs(w.reshape(w.shape[0], -1)).max(1)
            scale = np.where(m > 0, m / levels, 1.0)
            q = np.clip(np.round(w / scale.reshape(-1, *([1] * (w.ndim - 1)))), -levels, levels).astype(np.int8)
            zero = np.zeros(len(scale), np.int8)
            axis = 0
        else:  # MatMul (in, out): per output column, as the QAT model quantises Dense
            m = np.abs(w).max(0)
            scale = np.where(m > 0, m / levels, 1.0)
            q = np.clip(np.round(w / scale), -levels, levels).astype(np.int8)
            zero = np.zeros(len(scale), np.int8)
            axis = 1
        n.input[1] = dq(f"{n.name}_w", q, scale, zero, axis, TensorProto.INT8)
        counts["weights"] += 1
        if n.op_type == "Conv" and len(n.input) > 2 and n.input[2] in inits:
            s_in = input_scale(n.input[0])
            if s_in is not None:
                b = numpy_helper.to_array(inits[n.input[2]]).astype(np.float64)
                bscale = s_in * scale
                qb = np.round(b / bscale).astype(np.int32)
                n.input[2] = dq(f"{n.name}_b", qb, bscale, np.zeros(len(bscale), np.int32), 0, TensorProto.INT32)
                counts["biases"] += 1
    # DequantizeLinear nodes first: they read only initializers, so topological order holds
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return counts
