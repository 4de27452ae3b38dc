"""The QAT layer classes, at module level and registered with Keras on import
(`keras.saving.register_keras_serializable(package="resexport")`), so a QAT run's fine-tuned model
(`model_qat.keras`) opens with plain Keras after `import resexport`:

    import resexport, keras
    model = keras.saving.load_model("artifacts/<run>/model_qat.keras")

Why a module of its own: it imports Keras at the top (a class needs its base class), and Keras on its
TensorFlow backend imports TensorFlow. The edge box (validate/bench on .tflite/.onnx) has neither, so
nothing it imports may import this module at its top: `resexport/__init__.py` imports it only when Keras
imports, exporter.quantize.qat (the rebuild and fine-tuning, TensorFlow-only) imports it at its top, and
validate imports it inside the one function that opens a fine-tuned model. TensorFlow's ops are looked up
when a layer first runs (`_tf()`), not here: Keras may run another backend in a process that only loads
a model's config.
"""

from __future__ import annotations

import keras
import numpy as np

from exporter.export.source import tensorflow

EMA_DECAY = 0.99

_TF = None


def _tf():
    """TensorFlow, checked to be Keras' backend (exporter.export.source.tensorflow), once."""
    global _TF
    if _TF is None:
        _TF = tensorflow()
    return _TF


@keras.saving.register_keras_serializable(package="resexport")
class ActQuant(keras.layers.Layer):
    """Fake-quantises its input to 8 bit with one range; the range is calibrated (min/max over
    the calibration images while `calibrating`) then followed by an EMA in training."""

    def __init__(self, tied: bool = False, fixed=None, keep_float: bool = False, **kw):
        super().__init__(**kw)
        self.tied = bool(tied)  # after an interpolating pass-through op: the input's range (sync_ranges)
        # part of a float stem (qat.apply_float_stem): the tensor stays float32 in the files, so not rounded here
        self.keep_float = bool(keep_float)
        # the range the int8 kernels fix for their output (LOGISTIC, SOFTMAX, TANH): never calibrated
        self.fixed = None if fixed is None else (float(fixed[0]), float(fixed[1]))
        self.calibrating = False
        self.bypass = False  # float_twin: the range is not applied

    def get_config(self):
        return {**super().get_config(), "tied": self.tied, "fixed": None if self.fixed is None else list(self.fixed),
                **({"keep_float": True} if self.keep_float else {})}

    def build(self, shape):
        lo, hi = self.fixed or (0.0, 0.0)
        self.amin = self.add_weight(shape=(), initializer=keras.initializers.Constant(lo), trainable=False,
                                    name="amin")
        self.amax = self.add_weight(shape=(), initializer=keras.initializers.Constant(hi), trainable=False,
                                    name="amax")
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")

    def call(self, x, training=False):
        tf = _tf()
        if self.bypass or self.keep_float:
            return x
        if self.fixed is not None:
            return x if self.calibrating else tf.quantization.fake_quant_with_min_max_vars(
                x, self.fixed[0], self.fixed[1], num_bits=8, narrow_range=False)
        if self.calibrating and not self.tied:
            lo, hi = tf.reduce_min(x), tf.reduce_max(x)
            first = self.seen < 0.5
            self.amin.assign(tf.where(first, lo, tf.minimum(self.amin, lo)))
            self.amax.assign(tf.where(first, hi, tf.maximum(self.amax, hi)))
            self.seen.assign(1.0)
            return x
        if self.calibrating:
            return x
        if training and not self.tied:
            lo, hi = tf.minimum(tf.reduce_min(x), 0.0), tf.maximum(tf.reduce_max(x), 0.0)
            self.amin.assign(EMA_DECAY * self.amin + (1 - EMA_DECAY) * lo)
            self.amax.assign(EMA_DECAY * self.amax + (1 - EMA_DECAY) * hi)
        lo = tf.minimum(self.amin, 0.0)  # the range holds 0 (an exact zero point), whatever was seen
        hi = tf.maximum(tf.maximum(self.amax, 0.0), lo + 1e-6)
        if self.tied:  # interpolated ties round up in every runtime (see round_half_up_after_resize)
            x = x + (hi - lo) / (255.0 * 1024.0)
        return tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8, narrow_range=False)


def wquant(kernel, per_channel: bool):
    """Symmetric narrow-range int8 fake quant of a kernel whose last axis is the output channel."""
    tf = _tf()
    if per_channel:
        m = tf.maximum(tf.reduce_max(tf.abs(tf.reshape(kernel, (-1, tf.shape(kernel)[-1]))), axis=0), 1e-8)
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(kernel, -m, m, num_bits=8,
                                                                         narrow_range=True)
    m = tf.maximum(tf.reduce_max(tf.abs(kernel)), 1e-8)
    return tf.quantization.fake_quant_with_min_max_vars(kernel, -m, m, num_bits=8, narrow_range=True)


def weight_scale(kernel, per_channel: bool):
    """The int8 step of a kernel (last axis = output channel), as wquant's fake quant makes it."""
    tf = _tf()
    if per_channel:
        return tf.maximum(tf.reduce_max(tf.abs(tf.reshape(kernel, (-1, tf.shape(kernel)[-1]))), axis=0), 1e-8) / 127.0
    return tf.maximum(tf.reduce_max(tf.abs(kernel)), 1e-8) / 127.0


@keras.saving.register_keras_serializable(package="resexport")
class QConv(keras.layers.Layer):
    """Conv2D (groups 1), DepthwiseConv2D (kernel kh,kw,in,mult) or Dense with fake-quantised
    weights, a fused relu/relu6/linear activation, and the bias on the int32 grid both runtimes
    store it on (step = input scale x weight scale, `in_scale` kept by sync_ranges; 0 = float
    bias). Rounding the bias matters: BN folding can make that step a sizeable part of an
    output step, and on mobile nets a float bias alone moved ~4% of predictions."""

    def __init__(self, op: str, kernel=None, bias=None, strides=(1, 1), padding="valid", dilation=(1, 1),
                 activation="linear", kernel_shape=None, bias_shape=None, **kw):
        super().__init__(**kw)
        self.op, self.strides, self.padding = op, tuple(strides), padding.upper()
        self.dilation, self.activation = tuple(dilation), activation
        self._k0 = None if kernel is None else np.asarray(kernel, np.float32)
        self._b0 = None if bias is None else np.asarray(bias, np.float32)
        self.kernel_shape = tuple(kernel_shape or self._k0.shape)
        self.bias_shape = tuple(bias_shape or self._b0.shape)
        self.frozen_weights = False  # export: weights already rounded (ONNX route)

    def get_config(self):
        return {**super().get_config(), "op": self.op, "strides": list(self.strides), "padding": self.padding,
                "dilation": list(self.dilation), "activation": self.activation,
                "kernel_shape": list(self.kernel_shape), "bias_shape": list(self.bias_shape)}

    def build(self, shape):
        def init(v):
            return "zeros" if v is None else keras.initializers.Constant(v)

        self.kernel = self.add_weight(shape=self.kernel_shape, initializer=init(self._k0), name="kernel")
        self.bias = self.add_weight(shape=self.bias_shape, initializer=init(self._b0), name="bias")
        self.in_scale = self.add_weight(shape=(), initializer="zeros", trainable=False, name="in_scale")

    def load_own_variables(self, store):
        if len(store) == 2:  # saved before in_scale existed: float bias, as it was fine-tuned
            self.kernel.assign(store["0"])
            self.bias.assign(store["1"])
            self.in_scale.assign(0.0)
            return
        super().load_own_variables(store)

    def quantized_kernel(self):
        tf = _tf()
        k = self.kernel
        if self.op == "dense":  # per output unit: TFLite's converter re-quantises FC weights per channel
            return wquant(k, per_channel=True)
        if self.op == "depthwise":
            kh, kw, cin, mult = self.kernel_shape
            flat = tf.reshape(k, (kh, kw, 1, cin * mult))
            return tf.reshape(wquant(flat, per_channel=True), (kh, kw, cin, mult))
        return wquant(k, per_channel=True)

    def _flat_kernel(self, k):
        tf = _tf()
        if self.op == "depthwise":
            kh, kw, cin, mult = self.kernel_shape
            return tf.reshape(k, (kh, kw, 1, cin * mult))
        return k

    def quantized_bias(self, k):
        """The bias on its int32 grid (straight-through gradient); the float bias while in_scale is 0."""
        tf = _tf()
        b = tf.convert_to_tensor(self.bias)
        step = self.in_scale * weight_scale(self._flat_kernel(k), per_channel=True)
        safe = tf.where(step > 0, step, tf.ones_like(step))
        on_grid = tf.where(step > 0, tf.round(b / safe) * safe, b)
        return b + tf.stop_gradient(on_grid - b)

    def call(self, x):
        tf = _tf()
        k = tf.convert_to_tensor(self.kernel) if self.frozen_weights else self.quantized_kernel()
        bias = tf.convert_to_tensor(self.bias) if self.frozen_weights else self.quantized_bias(k)
        if self.op == "dense":
            y = tf.matmul(x, k)
        elif self.op == "depthwise":
            y = tf.nn.depthwise_conv2d(x, k, strides=(1, *self.strides, 1), padding=self.padding,
                                       dilations=self.dilation)
        else:
            y = tf.nn.conv2d(x, k, strides=self.strides, padding=self.padding, dilations=self.dilation)
        y = tf.nn.bias_add(y, bias)
        if self.activation == "relu":
            y = tf.nn.relu(y)
        elif self.activation == "relu6":
            y = tf.nn.relu6(y)
        return y


__all__ = ["ActQuant", "EMA_DECAY", "QConv", "weight_scale", "wquant"]
