"""ONNX Runtime runner with explicit providers. --device gpu asks for TensorRT or CUDA and fails
clearly where onnxruntime-gpu is not installed; it never falls back to the CPU silently."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from exporter.errors import MissingRuntimeError, ModelFileError, require
from exporter.runtimes.base import Runner, check_file, median_ops

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

    @staticmethod
    def session_options(ort, threads):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        return opts

    @classmethod
    def load(cls, path, *, device="cpu", threads=None, provider=None, **_):
        ort = require("onnxruntime", extra="onnx", purpose="Running .onnx files")
        check_file(Path(path), "onnx")
        providers = choose_providers(device, ort.get_available_providers(), provider)
        opts = cls.session_options(ort, threads)
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

    def profile(self, x, runs):
        """ONNX Runtime's own profiler (SessionOptions.enable_profiling) on a second session of the same file,
        settings and provider: the kernel time of every node ORT runs, after its graph optimisations (a fused
        node, e.g. QLinearConv for DequantizeLinear -> Conv -> QuantizeLinear, is named after the file's node
        it replaced). The first call is a warm-up and left out."""
        import onnxruntime as ort

        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.rgb_adapter and x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        with tempfile.TemporaryDirectory(prefix="resexport-ortprof-") as tmp:
            opts = self.session_options(ort, self.info.get("threads"))
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / "ort")
            session = ort.InferenceSession(str(self.path), sess_options=opts, providers=self.session.get_providers())
            for _ in range(runs + 1):
                session.run([self._out.name], {self._in.name: x})
            events = json.loads(Path(session.end_profiling()).read_text())
        file_nodes = _file_node_names(self.path)
        model_runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                            if e.get("cat") == "Session" and e.get("name") == "model_run")
        after = model_runs[0][1] if len(model_runs) > 1 else -1
        ops: dict[str, dict] = {}
        for e in events:
            if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < after:
                continue
            name = e["name"][: -len("_kernel_time")]
            op = ops.setdefault(name, {"node": _file_node(name, file_nodes), "runtime_node": name,
                                       "op_type": e["args"].get("op_name", "?"), "durations": [],
                                       "kernel": e["args"].get("provider")})
            op["durations"].append(float(e["dur"]))
        return {"available": True, "timed": True, "ops": median_ops(ops), "runs": runs,
                "shows": "kernel time of every node ONNX Runtime runs (its profiler; the median call of each node), "
                         "after graph optimisation",
                "cannot_show": "time between kernels (thread scheduling, memory) is not in the per-node numbers"}

    def io_details(self):
        return {"inputs": [{"name": self._in.name, "shape": list(self._in.shape), "dtype": self._in.type}],
                "outputs": [{"name": self._out.name, "shape": list(self._out.shape), "dtype": self._out.type}]}


def _file_node_names(path) -> dict[str, str]:
    """The file's own names, each node's name and its output tensors' names -> the node's name (empty
    without the onnx package)."""
    try:
        import onnx
    except ImportError:
        return {}
    names = {}
    for n in onnx.load(str(path), load_external_data=False).graph.node:
        names.update({o: n.name for o in n.output if o})
        names[n.name] = n.name
    return names


def _file_node(runtime_name: str, file_nodes: dict[str, str]) -> str | None:
    """The file's node an ORT node comes from: the same name, or the longest file name (of a node or of
    its output) it contains (ORT names a fused node '<node>_token_<n>', an NCHWc one '<output>_nchwc');
    None for nodes ORT added."""
    if runtime_name in file_nodes:
        return file_nodes[runtime_name]
    padded = f"_{runtime_name}_"  # a name inside ORT's own: 'InsertedPrecisionFreeCast_t65_0_nchwc'
    best = [n for n in file_nodes if runtime_name.startswith(n + "_") or f"_{n}_" in padded]
    return file_nodes[max(best, key=len)] if best else None
