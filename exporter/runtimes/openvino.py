"""OpenVINO runner: the run's .onnx and .tflite files through OpenVINO's own frontends and CPU kernels,
beside ONNX Runtime and LiteRT (a second opinion on the same file).

Every file is compiled with INFERENCE_PRECISION_HINT=f32: on a CPU with AVX-512 BF16 or AMX,
OpenVINO's default is bf16, which would move a float file's accuracy by itself (bf16 is the
runtime's choice, not the artifact's). int8 files still run on OpenVINO's int8 kernels (its
low-precision transformations do not depend on the hint); the hint keeps their float parts f32.
A full-integer .tflite takes and gives int8: the float input is quantised, and the output
dequantised, with the parameters its FakeQuantize nodes carry (the file's own). The batch is
made dynamic once at load, so any batch runs without recompiling."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporter.errors import MissingRuntimeError, ModelFileError, require
from exporter.export.tflite_app import app_record
from exporter.runtimes.base import Runner, check_file, dequantize, median_ops, quantize

FAMILY_BY_SUFFIX = {".onnx": "onnx", ".tflite": "tflite"}
PASS_THROUGH = ("Convert", "Transpose", "Reshape")  # ops between an int8 input/output and its FakeQuantize


def _fake_quantize(node, downstream: bool):
    """The FakeQuantize next to an int8 Parameter (downstream) or Result (upstream), across layout and
    type conversions; None if there is none."""
    for _ in range(8):
        if node.get_type_name() == "FakeQuantize":
            return node
        if downstream:
            consumers = list(node.output(0).get_target_inputs())
            if len(consumers) != 1:
                return None
            node = consumers[0].get_node()
        else:
            node = node.input_value(0).get_node()
        if node.get_type_name() not in (*PASS_THROUGH, "FakeQuantize"):
            return None
    return None


def _quant_params(fq, integer_side_is_input: bool) -> dict | None:
    """scale and zero point from a FakeQuantize that maps the integer range to reals (or back)."""
    lo_in, hi_in, lo_out, hi_out = (float(np.ravel(v.get_node().get_data())[0]) for v in fq.input_values()[1:])
    (q_lo, q_hi, r_lo, r_hi) = (lo_in, hi_in, lo_out, hi_out) if integer_side_is_input else (lo_out, hi_out, lo_in, hi_in)
    if q_hi <= q_lo or r_hi <= r_lo:
        return None
    scale = (r_hi - r_lo) / (q_hi - q_lo)
    return {"scale": scale, "zero_point": int(round(q_lo - r_lo / scale))}


def _int8_io(model) -> tuple[dict | None, dict | None]:
    """The quantisation of an int8 input and output (None for a float one)."""
    import openvino as ov

    def side(port, downstream):
        if port.get_element_type() != ov.Type.i8:
            return None
        node = port.get_node()
        fq = _fake_quantize(node if downstream else node.input_value(0).get_node(), downstream)
        params = _quant_params(fq, integer_side_is_input=downstream) if fq is not None else None
        if params is None:
            raise ModelFileError(f"OpenVINO reads an integer {'input' if downstream else 'output'} but finds no "
                                 "quantisation parameters next to it", hint="run this file on its own runtime")
        return params

    return side(model.inputs[0], True), side(model.outputs[0], False)


def _app_io(app: dict) -> tuple[dict | None, dict | None]:
    """An app-ready .tflite file's integer input/output quantisation, as exporter.export.tflite_app recorded it."""
    def side(d):
        return {**d["quantization"], "dtype": d["dtype"]} if d.get("quantization") else None

    return side(app["input"]), side(app["output"])


class OpenVINORunner(Runner):
    engine = "openvino"

    def __init__(self, path, compiled, in_q, out_q, in_shape, out_dim, *, device, threads, info, model=None,
                 config=None):
        self.compiled = compiled
        self._model, self._config = model, config or {}
        self._request = compiled.create_infer_request()
        self._in_q, self._out_q, self._in, self._out = in_q, out_q, in_shape, out_dim
        super().__init__(path, device=device, info={"threads": threads, **info})

    @classmethod
    def load(cls, path, *, device="cpu", threads=None, **_):
        ov = require("openvino", extra="openvino", purpose="Running files on OpenVINO")
        path = Path(path)
        family = FAMILY_BY_SUFFIX.get(path.suffix.lower())
        if family is None:
            raise ModelFileError(f"{path}: OpenVINO runs .onnx and .tflite files here")
        check_file(path, family)
        core = ov.Core()
        if device != "cpu" and not any(d.startswith("GPU") for d in core.available_devices):
            raise MissingRuntimeError(f"--device gpu: OpenVINO sees no GPU here (devices: "
                                      f"{', '.join(core.available_devices)})", hint="use --device cpu")
        try:
            model = core.read_model(str(path))
            app = app_record(path) if family == "tflite" else None
            in_q, out_q = _app_io(app) if app else _int8_io(model)
            shape = model.inputs[0].get_partial_shape()
            if shape.rank.is_static and not shape[0].is_dynamic:  # a fixed batch: make it dynamic once
                model.reshape({model.inputs[0]: ov.PartialShape([-1, *list(shape)[1:]])})
            config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})}
            compiled = core.compile_model(model, "GPU" if device == "gpu" else "CPU", config)
        except (ModelFileError, MissingRuntimeError):
            raise
        except Exception as exc:  # RuntimeError / OVException from a frontend that cannot read the file
            raise ModelFileError(f"OpenVINO cannot load {path}: {' '.join(str(exc).split())[:300]}",
                                 hint="the file is corrupt or truncated; re-create it") from exc
        in_shape = tuple(d.get_length() if d.is_static else None for d in list(shape)[1:])
        out_last = model.outputs[0].get_partial_shape()[-1]
        info = {"provider": f"OpenVINO {'GPU' if device == 'gpu' else 'CPU'} plugin",
                "precision": "int8" if in_q or _has_fake_quantize(model) else _float_precision(model, ov),
                "precision_hint": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
                "openvino": ov.get_version(), "frontend": family,
                "input_quantization": in_q, "output_quantization": out_q}
        runner = cls(path, compiled, in_q, out_q, in_shape, out_last.get_length() if out_last.is_static else None,
                     device=device, threads=threads, info=info, model=model, config=config)
        runner.rgb_adapter = bool(app and app.get("rgb_adapter"))
        return runner

    @property
    def input_shape(self):
        return self._in

    @property
    def num_outputs(self):
        return self._out

    def _predict(self, x):
        if self._in_q:  # integer input: quantise with the file's own scale and zero point
            x = quantize(x, self._in_q, self._in_q.get("dtype", "int8"))
        y = self._request.infer({0: x})[self.compiled.output(0)]
        return dequantize(y, self._out_q) if self._out_q else y

    def profile(self, x, runs):
        """OpenVINO's per-layer counters (PERF_COUNT, InferRequest.get_profiling_info) from the same model
        compiled again with them on: each executed layer's real time and the kernel that ran it (its
        exec_type names the precision, e.g. ..._I8 or ..._FP32). The first call is a warm-up and left out."""
        import openvino as ov

        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.rgb_adapter and x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        if self._in_q:
            x = quantize(x, self._in_q, self._in_q.get("dtype", "int8"))
        compiled = ov.Core().compile_model(self._model, "GPU" if self.device == "gpu" else "CPU",
                                           {**self._config, "PERF_COUNT": True})
        request = compiled.create_infer_request()
        request.infer({0: x})
        ops: dict[str, dict] = {}
        for _ in range(runs):
            request.infer({0: x})
            for p in request.get_profiling_info():
                if p.status != p.Status.EXECUTED:
                    continue
                op = ops.setdefault(p.node_name, {"node": p.node_name, "op_type": p.node_type, "durations": [],
                                                  "kernel": p.exec_type})
                op["durations"].append(p.real_time.total_seconds() * 1e6)
        return {"available": True, "timed": True, "ops": median_ops(ops), "runs": runs,
                "shows": "real time of every layer OpenVINO executes (its PERF_COUNT counters; the median call), "
                         "and the kernel that ran it",
                "cannot_show": "layers OpenVINO fused away are not listed (their time is in the layer they joined)"}

    def io_details(self):
        def one(port, q):
            return {"name": port.get_any_name(), "shape": str(port.get_partial_shape()),
                    "dtype": port.get_element_type().get_type_name(), "quantization": q}

        return {"inputs": [one(self.compiled.input(0), self._in_q)],
                "outputs": [one(self.compiled.output(0), self._out_q)]}


def _has_fake_quantize(model) -> bool:
    return any(op.get_type_name() in ("FakeQuantize", "FakeConvert") for op in model.get_ops())


def _float_precision(model, ov) -> str:
    """What the file stores its weights in: 'float16' where it has float16 constants, 'dynamic-int8' for
    int8 weights with float activations, else 'float32'."""
    types = {op.get_element_type() for op in model.get_ops() if op.get_type_name() == "Constant"}
    if ov.Type.i8 in types:
        return "dynamic-int8"
    return "float16" if ov.Type.f16 in types else "float32"
