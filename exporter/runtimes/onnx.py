"""ONNX Runtime runner with explicit providers. --device gpu asks for TensorRT or CUDA and fails
clearly where onnxruntime-gpu is not installed; it never falls back to the CPU silently."""

from __future__ import annotations

from pathlib import Path


from exporter.errors import MissingRuntimeError, ModelFileError, require
from exporter.runtimes.base import Runner, check_file

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def choose_providers(device: str, available: list[str], provider: str | None = None) -> list[str]:
    if provider:
        if provider not in available:
            raise MissingRuntimeError(f"ONNX Runtime provider {provider} is not available here "
                                      f"(available: {', '.join(available)})",
                                      hint="install onnxruntime-gpu for CUDA/TensorRT")
        return [provider]
    if device == "gpu":
        gpu = [p for p in GPU_PROVIDERS if p in available]
        if not gpu:
            raise MissingRuntimeError(f"--device gpu: this onnxruntime has no GPU provider "
                                      f"(available: {', '.join(available)})",
                                      hint="pip install onnxruntime-gpu (CUDA/TensorRT), or use --device cpu")
        return [gpu[-1]]  # CUDA by default; TensorRT via provider=
    return ["CPUExecutionProvider"]


def onnx_precision(path) -> str:
    """What the graph computes in, read from the file: 'int8' (QuantizeLinear/QLinear nodes),
    'float16' (float16 initializers), else 'float32'; 'unknown' without the onnx package."""
    try:
        import onnx
    except ImportError:
        return "unknown"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001  (the session loaded it; the precision is only a label)
        return "unknown"
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}:
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "float16"
    return "float32"


class OnnxRunner(Runner):
    engine = "onnxruntime"

    def __init__(self, path, session, *, device, threads):
        self.session = session
        self._in = session.get_inputs()[0]
        self._out = session.get_outputs()[0]
        used = session.get_providers()[0]
        super().__init__(path, device=device, info={"provider": used, "threads": threads,
                                                    "precision": onnx_precision(path)})

    @classmethod
    def load(cls, path, *, device="cpu", threads=None, provider=None, **_):
        ort = require("onnxruntime", extra="onnx", purpose="Running .onnx files")
        check_file(Path(path), "onnx")
        providers = choose_providers(device, ort.get_available_providers(), provider)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:
            raise ModelFileError(f"cannot load {path}: {' '.join(str(exc).split())[:300]}",
                                 hint="the file is corrupt or truncated; re-create it") from exc
        if session.get_providers()[0] != providers[0]:  # ORT fell back: refuse to pretend
            raise MissingRuntimeError(f"ONNX Runtime could not start {providers[0]} for {path} "
                                      f"(it offered {session.get_providers()[0]})")
        return cls(path, session, device=device, threads=threads)

    @property
    def input_shape(self):
        return tuple(d if isinstance(d, int) else None for d in self._in.shape[1:])

    @property
    def num_outputs(self):
        last = self._out.shape[-1]
        return last if isinstance(last, int) else None

    def _predict(self, x):
        return self.session.run([self._out.name], {self._in.name: x})[0]

    def io_details(self):
        return {"inputs": [{"name": self._in.name, "shape": list(self._in.shape), "dtype": self._in.type}],
                "outputs": [{"name": self._out.name, "shape": list(self._out.shape), "dtype": self._out.type}]}
