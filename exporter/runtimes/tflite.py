"""TFLite runner on ai-edge-litert (never TensorFlow). XNNPACK is LiteRT's default CPU delegate.
Batches by resizing the input tensor. int8 models: the float input is quantised, and the int8
output dequantised, with the parameters stored in the file itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporter.errors import MissingRuntimeError, ModelFileError, require
from exporter.export.tflite_app import app_record
from exporter.quiet import native_stderr_hidden
from exporter.runtimes.base import Runner, check_file, dequantize, quantize


def _quant(detail: dict) -> dict | None:
    scale, zero = detail.get("quantization", (0.0, 0))
    return {"scale": float(scale), "zero_point": int(zero)} if scale else None


def tflite_precision(interp, input_dtype: str) -> str:
    """What the file computes in, read from its tensors: 'int8' (int8 activations and weights),
    'dynamic-int8' (int8 weights, float activations), 'float16' (float16 weights), else 'float32'."""
    dtypes = {np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    if input_dtype in ("int8", "uint8"):
        return "int8"
    if "int8" in dtypes:
        return "dynamic-int8"
    if "float16" in dtypes:
        return "float16"
    return "float32"


def _app_record(path) -> dict | None:
    """What exporter.export.tflite_app recorded in the file (None for a file from elsewhere)."""
    try:
        return app_record(path)
    except Exception:  # noqa: BLE001  (a file the schema cannot read: the interpreter already loaded it)
        return None


class TFLiteRunner(Runner):
    engine = "litert"

    def __init__(self, path, interp, *, device, threads):
        self.interp = interp
        self._in = interp.get_input_details()[0]
        self._out = interp.get_output_details()[0]
        self._batch = None
        self._in_q, self._out_q = _quant(self._in), _quant(self._out)
        dtype = np.dtype(self._in["dtype"]).name
        self.app = _app_record(path)
        self.rgb_adapter = bool(self.app and self.app.get("rgb_adapter"))
        super().__init__(path, device=device, info={
            "provider": "XNNPACK (LiteRT default CPU delegate)", "threads": threads,
            "precision": tflite_precision(interp, dtype),
            "input_dtype": dtype, "output_dtype": np.dtype(self._out["dtype"]).name,
            "input_quantization": self._in_q, "output_quantization": self._out_q,
            **({"app": {k: self.app[k] for k in ("rgb_adapter", "mediapipe_ready") if k in self.app}}
               if self.app else {})})

    @classmethod
    def load(cls, path, *, device="cpu", threads=None, **_):
        if device != "cpu":
            raise MissingRuntimeError("TFLite (ai-edge-litert) has no GPU path on a Linux desktop/server: its GPU "
                                      "delegate is for Android/iOS", hint="benchmark .tflite with --device cpu")
        litert = require("ai_edge_litert.interpreter", extra="litert", purpose="Running .tflite files")
        check_file(Path(path), "tflite")
        try:
            with native_stderr_hidden():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                interp = litert.Interpreter(model_path=str(path), num_threads=threads)
                interp.allocate_tensors()
        except Exception as exc:  # ValueError / RuntimeError from the flatbuffer verifier
            raise ModelFileError(f"cannot load {path}: {' '.join(str(exc).split())[:300]}",
                                 hint="the file is corrupt or truncated; re-create it") from exc
        return cls(path, interp, device=device, threads=threads)

    @property
    def input_shape(self):
        return tuple(int(d) for d in self._in["shape_signature"][1:])

    @property
    def num_outputs(self):
        return int(self._out["shape_signature"][-1])

    def _resize(self, n: int) -> None:
        if n != self._batch:
            self.interp.resize_tensor_input(self._in["index"], [n, *self.input_shape], strict=False)
            with native_stderr_hidden():
                self.interp.allocate_tensors()
            self._batch = n

    def _predict(self, x):
        self._resize(len(x))
        if self._in_q:  # integer input: quantise with the file's own scale and zero point
            x = quantize(x, self._in_q, self._in["dtype"])
        self.interp.set_tensor(self._in["index"], x)
        self.interp.invoke()
        y = self.interp.get_tensor(self._out["index"])
        return dequantize(y, self._out_q) if self._out_q else y

    def profile(self, x, runs):
        """What LiteRT's Python interpreter can tell: every op of the file and whether XNNPACK (the default
        CPU delegate) or a built-in kernel runs it (from the DELEGATE nodes' inputs and outputs), and the
        whole call's time. Not per-op time: the interpreter's op profiler is not reachable from Python
        (benchmark_model --enable_op_profiling=true shows it)."""
        import time

        self._resize(len(x))
        ops = self.interp._get_ops_details()
        producer = {int(t): o for o in ops if o["op_name"] != "DELEGATE" for t in o["outputs"]}
        delegated: set[int] = set()
        for d in (o for o in ops if o["op_name"] == "DELEGATE"):
            stop, todo = {int(t) for t in d["inputs"]}, [int(t) for t in d["outputs"]]
            while todo:
                op = producer.get(todo.pop())
                if op is not None and op["index"] not in delegated:
                    delegated.add(op["index"])
                    todo += [int(t) for t in op["inputs"] if int(t) not in stop]
        names = {t["index"]: t["name"] for t in self.interp.get_tensor_details()}
        rows = [{"node": f"{o['index']}", "op_type": o["op_name"], "calls": runs,
                 "layer_hint": names.get(int(o["outputs"][0])) if len(o["outputs"]) else None,
                 "runs_in": "XNNPACK" if o["index"] in delegated else "built-in"}
                for o in ops if o["op_name"] != "DELEGATE"]
        self.predict(x)
        start = time.perf_counter()
        for _ in range(runs):
            self.predict(x)
        call_ms = (time.perf_counter() - start) * 1e3 / runs
        return {"available": True, "timed": False, "ops": rows, "runs": runs, "call_ms": call_ms,
                "shows": f"which ops XNNPACK runs ({len(delegated)} of {len(rows)}) and which built-in kernels "
                         "run, and the whole call's time",
                "cannot_show": "time per op: LiteRT's op profiler is not reachable from its Python interpreter "
                               "(benchmark_model --enable_op_profiling=true shows it); XNNPACK runs its ops as "
                               "one fused node"}

    def io_details(self):
        def one(d):
            return {"name": d["name"], "shape": [int(v) for v in d["shape_signature"]],
                    "dtype": np.dtype(d["dtype"]).name, "quantization": _quant(d)}

        return {"inputs": [one(self._in)], "outputs": [one(self._out)]}
