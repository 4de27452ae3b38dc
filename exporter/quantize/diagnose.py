"""Per-layer quantisation error of an int8 artifact (`resexport inspect`), and the search that keeps
the fewest layers in float for it to pass its gate (`convert --quantize int8 --int8 fallback`, alias
`--fallback auto`). Moved here from exporter/inspect.py (removed: no module carries a standard-library name).
A trial passes when exporter.quantize.judge's confidence bounds pass validate's check_gates.

Both start from exactly what `convert` does for the kind: the same converter settings
(export/tflite.int8_converter; export/onnx.prepare_for_int8 + quantize_prepared with the same
--target-cpu settings) and the same calibration set (data.calibration_set with the manifest's
count). Errors are measured on a held-out slice of the TRAINING split (data.holdout_set: disjoint
from the calibration images and from the images the model was trained on), never the test set.

Per layer (op), the error is what quantising that layer adds on its own:
- TFLite: tf.lite.experimental.QuantizationDebugger (NumericVerify ops: each int8 op against the
  same op in float on the same, dequantised, input).
- ONNX: onnxruntime.quantization.qdq_loss_debug (collect_activations, create_activation_matching):
  each QDQ activation against its value before the QuantizeLinear/DequantizeLinear pair (the QDQ
  graph run in float, graph optimisation off). Its compute_activation_error is not used: ORT removes
  a Relu in front of a QDQ pair, so its "before" is the pre-Relu tensor; we compare with the Relu applied.
Layers are ranked by `channel_noise_to_signal` (see channel_noise_to_signal; TFLite: per image,
averaged, as the debugger's metrics run one image at a time; ONNX: over all images); `noise_to_signal` =
||quantised - float|| / ||float|| over the whole tensor (the ONNX tool's SQNR is -20 log10 of it).
Keeping a layer "in float" keeps its op and the ops that read its output in float, so the tensor
between them is never rounded to int8.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from exporter import data as data_mod
from exporter import formats
from exporter.errors import UsageError, ValidationFailed, require
from exporter.progress import NULL, Progress
from exporter.run import Run
from exporter.export import onnx as onx, tflite as tfl
from exporter.export.conformance import write_checked
from exporter.export.source import ExportSource, tensorflow
from exporter.quantize.judge import judge
from exporter.runtimes import load_runner

log = logging.getLogger(__name__)

INSPECTABLE = formats.INSPECTABLE
DEFAULT_SAMPLES = 200        # images the per-layer errors are measured on
DEFAULT_HOLDOUT = 5000       # images the fallback search measures agreement on (exporter.quantize.judge)


def channel_noise_to_signal(reference: np.ndarray, quantised: np.ndarray, axis: int = -1) -> float:
    """Worst channel's rms(quantised - reference) / std(reference), channels along `axis` (constant
    channels skipped). A per-tensor int8 scale set by a few wide channels leaves a narrow channel only a
    few steps; a following BatchNorm divides by that channel's small std and amplifies the noise, which a
    whole-tensor ratio hides (plain12's stem conv: 0.06 over the tensor, 1.4 in its worst channel).
    Tensors without a channel structure (one vector per image) use the whole-tensor ratio."""
    ref = np.moveaxis(np.asarray(reference, np.float64), axis, -1)
    q = np.moveaxis(np.asarray(quantised, np.float64), axis, -1)
    ref, q = ref.reshape(-1, ref.shape[-1]), q.reshape(-1, ref.shape[-1])
    if ref.shape[0] < 2:
        norm = np.linalg.norm(ref)
        return float(np.linalg.norm(q - ref) / norm) if norm > 0 else 0.0
    std = ref.std(0)
    noise = np.sqrt(np.mean(np.square(q - ref), 0))
    live = std > 1e-8
    return float((noise[live] / std[live]).max()) if live.any() else 0.0


def _check_kind(kind: str) -> formats.ArtifactKind:
    row = formats.get(kind)
    if kind not in INSPECTABLE:
        raise UsageError(f"--artifact {kind} is not a calibrated int8 kind: per-layer quantisation error is "
                         f"measured for {', '.join(INSPECTABLE)}", hint=f"pass --artifact {' or '.join(INSPECTABLE)}")
    return row


def excluded_training_indices(run, dataset: data_mod.Dataset) -> np.ndarray:
    """Indices into dataset.x_train of the images the run's model was trained on, when training used a
    recorded stratified subset (train --train-limit); empty when unknown or when it used all of them."""
    sub = Run.of(run).training_subset
    if not sub or sub.get("count", 0) >= len(dataset.y_train):
        return np.zeros(0, np.int64)
    idx = data_mod.stratified_indices(dataset.y_train, int(sub["count"]), seed=1)  # as data.subset draws it
    if data_mod.indices_hash(idx) != sub.get("indices_sha256"):
        log.warning("the run's training subset cannot be re-drawn (hash differs); not excluded from the hold-out")
        return np.zeros(0, np.int64)
    return idx


def holdout_seen(run, dataset: data_mod.Dataset) -> bool | None:
    """Whether the hold-out slice may hold images the model was trained on: False when the run's
    training subset is recorded (and excluded), None when unknown (an imported model), else True."""
    if Run.of(run).imported:
        return None
    return not len(excluded_training_indices(run, dataset))


def holdout(run, dataset: data_mod.Dataset, calibration, n: int):
    exclude = np.union1d(calibration.indices, excluded_training_indices(run, dataset))
    hold = data_mod.holdout_set(dataset, n, exclude=exclude)
    return hold, dataset.y_train[hold.indices]


# ------------------------------------------------------------------------------------- TFLite

class TFLiteInt8:
    """tflite-int8 as export_int8 makes it, calibrated once; quantised again with any layers in float."""

    def __init__(self, source, calibration, **_):
        self._tfl = tfl
        self.source, self.calibration = source, calibration
        self._calibrated = None

    def calibrated(self) -> bytes:
        if self._calibrated is None:
            self._calibrated = self._tfl.calibrate_only(self.source, self.calibration)
        return self._calibrated

    def layer_errors(self, images: np.ndarray) -> list[dict]:
        tf = tensorflow()
        debug_model = self._tfl.quantize_debug_model(self.calibrated())

        def rms(a):
            return float(np.sqrt(np.mean(np.square(np.asarray(a, np.float64)))))

        def channel(f, q, scale, zero):
            return channel_noise_to_signal(f, (np.asarray(q, np.float64) - zero) * scale)

        options = tf.lite.experimental.QuantizationDebugOptions(
            layer_direct_compare_metrics={"float_rms": lambda f, q, s, z: rms(f), "channel": channel})
        import warnings

        with warnings.catch_warnings():  # the debugger runs TF's deprecated tf.lite.Interpreter, which warns
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
            debugger = tf.lite.experimental.QuantizationDebugger(
                quant_debug_model_content=debug_model, debug_options=options,
                debug_dataset=lambda: ([images[i: i + 1]] for i in range(len(images))))
            debugger.run()
        buf = io.StringIO()
        debugger.layer_statistics_dump(buf)
        buf.seek(0)
        consumers = self._consumers()
        rows = []
        for r in csv.DictReader(buf):
            mse, scale, signal = float(r["mean_squared_error"]), float(r["scale"]), float(r["float_rms"])
            name = r["tensor_name"]
            rows.append({"name": name, "op": r["op_name"], "float_layers": sorted({name, *consumers.get(name, ())}),
                         "channel_noise_to_signal": float(r["channel"]),
                         "noise_to_signal": float(np.sqrt(mse) / signal) if signal > 0 else float("inf"),
                         "rmse_over_scale": float(np.sqrt(mse) / scale) if scale > 0 else float("inf"),
                         "rmse": float(np.sqrt(mse)), "scale": scale, "mean_error": float(r["mean_error"]),
                         "max_abs_error": float(r["max_abs_error"])})
        return rows

    def _consumers(self) -> dict[str, list[str]]:
        """Output tensor name -> the output tensor names of the ops that read it (denylisted_nodes names
        an op by its output), from the fully quantised model."""
        litert = require("ai_edge_litert.interpreter", extra="litert", purpose="TFLite inspection")
        interp = litert.Interpreter(model_content=self._tfl.quantize_calibrated(self.calibrated(), []))
        names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
        consumers: dict[str, list[str]] = {}
        for op in interp._get_ops_details():
            outs = [names[i] for i in op["outputs"] if i in names]
            for i in op["inputs"]:
                if i in names and outs:
                    consumers.setdefault(names[i], []).extend(outs)
        return consumers

    def quantize(self, float_layers: list[str], out: Path) -> None:
        out.write_bytes(self._tfl.quantize_calibrated(self.calibrated(), float_layers))

    def details(self) -> dict:
        return {"converter": "tf.lite.TFLiteConverter.from_saved_model (calibrate only) + mlir_quantize "
                             "(denylisted_nodes; int8 input/output)"}

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------- ONNX

class OnnxInt8:
    """onnx-int8 as export_int8 makes it (same pre-processing, --target-cpu settings, calibration)."""

    def __init__(self, source, calibration, target_cpu: str = "auto", **_):
        self._onx = onx
        self.calibration = calibration
        self.target = onx.int8_target(target_cpu)
        self._tmp = tempfile.TemporaryDirectory(prefix="resexport-inspect-")
        self.folder = Path(self._tmp.name)
        self.prepared = onx.prepare_for_int8(source, self.folder)

    def _graph(self, path: Path):
        onnx = require("onnx", extra="onnx", purpose="ONNX inspection")
        return onnx.load(str(path))

    def _matched_activations(self, images: np.ndarray) -> dict:
        """ONNX Runtime's QDQ debugger: each quantised tensor's float, pre- and post-QDQ values on `images`."""
        dbg = require("onnxruntime.quantization.qdq_loss_debug", extra="onnx", purpose="ONNX inspection")
        qdq = self.folder / "qdq.onnx"
        self._onx.quantize_prepared(self.prepared, qdq, self.calibration, target=self.target)
        acts = {}
        for name, path in (("float", self.prepared), ("qdq", qdq)):
            aug = self.folder / f"{name}_aug.onnx"
            dbg.modify_model_output_intermediate_tensors(str(path), str(aug))
            acts[name] = dbg.collect_activations(str(aug), self._onx.calibration_reader(images))
        return dbg.create_activation_matching(acts["qdq"], acts["float"])

    def layer_errors(self, images: np.ndarray) -> list[dict]:
        matched = self._matched_activations(images)
        onnx = require("onnx", extra="onnx", purpose="ONNX inspection")
        model = onnx.shape_inference.infer_shapes(self._graph(self.prepared))
        graph = model.graph
        shapes = {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
                  for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
        producer = {o: n for n in graph.node for o in n.output}
        consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        def flat(arrays):
            return np.concatenate([np.ravel(a) for a in arrays]).astype(np.float64)

        def channels(tensor, ref, q):
            shape = shapes.get(tensor) or []
            if len(shape) >= 2 and all(d > 0 for d in shape[1:]) and ref.size % int(np.prod(shape[1:])) == 0:
                # graph tensors are NCHW (tf2onnx moved the convolutions there): channels on axis 1
                full = (-1, *shape[1:])
                return channel_noise_to_signal(ref.reshape(full), q.reshape(full), axis=1)
            norm = np.linalg.norm(ref)
            return float(np.linalg.norm(q - ref) / norm) if norm > 0 else 0.0

        stats = {}
        for tensor, match in matched.items():
            if not match.get("pre_qdq") or not match.get("post_qdq"):
                continue
            node = producer.get(tensor)
            pre, post = flat(match["pre_qdq"]), flat(match["post_qdq"])
            if node is not None and node.op_type == "Relu":
                # ORT drops a Relu in front of a QDQ pair (the zero point clips at 0): its "pre" is the
                # tensor before the Relu, so compare against the Relu's result
                pre = np.maximum(pre, 0)
            signal = np.linalg.norm(pre)
            model = None
            if match.get("float"):
                ref = flat(match["float"])
                if ref.shape == post.shape:
                    model = channels(tensor, ref, post)
            stats[tensor] = {"node": node, "local": channels(tensor, pre, post), "model": model,
                             "ratio": float(np.linalg.norm(post - pre) / signal) if signal > 0 else float("inf")}

        def upstream(tensor, seen=()):
            """Largest accumulated (whole-model) error among the QDQ tensors feeding `tensor`'s producer."""
            node = producer.get(tensor)
            if node is None or tensor in seen:
                return 0.0
            worst = 0.0
            for i in node.input:
                if i in stats and stats[i]["model"] is not None:
                    worst = max(worst, stats[i]["model"])
                elif i in producer:
                    worst = max(worst, upstream(i, (*seen, tensor)))
            return worst

        rows = []
        for tensor, st in stats.items():
            node = st["node"]
            # the error this layer adds: its own rounding (local), or, where larger, the growth of the
            # accumulated error across it, which includes its weights' quantisation (the local
            # comparison starts after the weights)
            added = max(0.0, st["model"] - upstream(tensor)) if st["model"] is not None else 0.0
            touching = ([node] if node is not None else []) + consumers.get(tensor, [])
            if node is not None and node.op_type == "Relu" and node.input[0] in producer:
                touching.append(producer[node.input[0]])  # the Conv/Gemm whose Relu ORT folds into the QDQ pair
            ratio = st["ratio"]
            rows.append({"name": tensor, "op": node.op_type if node is not None else "input",
                         "node": node.name if node is not None else None,
                         "float_layers": sorted({n.name for n in touching}),
                         "channel_noise_to_signal": max(st["local"], added), "channel_local": st["local"],
                         "channel_added_end_to_end": added,
                         "noise_to_signal": ratio, "sqnr_db": float(-20 * np.log10(ratio)) if ratio > 0 else None})
        return rows

    def quantize(self, float_layers: list[str], out: Path) -> None:
        self._onx.quantize_prepared(self.prepared, out, self.calibration, target=self.target,
                                    float_layers=float_layers)
        onnx = require("onnx", extra="onnx", purpose="ONNX export")
        proto = onnx.load(str(out))
        proto.doc_string = ""
        out.write_bytes(proto.SerializeToString())

    def details(self) -> dict:
        settings = ", ".join(f"{k}={v}" for k, v in self.target.items() if k != "requested")
        return {"converter": f"onnxruntime.quantization.quantize_static (QDQ, MinMax, {settings}; nodes_to_exclude)",
                "target_cpu": self.target}

    def close(self) -> None:
        self._tmp.cleanup()


def _backend(kind: formats.ArtifactKind, source, calibration, target_cpu: str):
    """The family's diagnosis (formats.FAMILIES names it): TFLiteInt8 or OnnxInt8 above."""
    return formats.FAMILIES[kind.family].load_diagnosis()(source, calibration, target_cpu=target_cpu)


# ------------------------------------------------------------------------------------ inspect

def layer_table(kind: formats.ArtifactKind, source, calibration, images: np.ndarray, *,
                target_cpu: str = "auto") -> list[dict]:
    """Per-layer errors of `kind` made from `source` with `calibration`, worst first."""
    backend = _backend(kind, source, calibration, target_cpu)
    try:
        rows = backend.layer_errors(np.asarray(images, np.float32))
    finally:
        backend.close()
    for r in rows:
        if not np.isfinite(r["channel_noise_to_signal"]):
            log.warning("layer %s: non-finite error", r["name"])
    def key(r):
        v = r["channel_noise_to_signal"]
        return -v if np.isfinite(v) else -np.inf

    return sorted(rows, key=key)


def inspect(*, run: Path, kind: str, dataset: data_mod.Dataset, samples: int = DEFAULT_SAMPLES,
            unsafe: bool = False, progress: Progress = NULL) -> dict:
    """Per-layer quantisation error of the run's `kind` artifact, re-made the way convert made it
    (its manifest entry gives the calibration count, --target-cpu settings and float layers)."""
    row = _check_kind(kind)
    run = Run.of(run)
    entry = run.artifact(kind)
    if entry is None:
        raise UsageError(f"{run} has no {kind} artifact", hint="make it with `resexport convert --quantize int8`")
    if "count" not in (entry.get("calibration") or {}):  # an artifact from before the count was recorded
        raise UsageError(f"{run}: {kind} does not record the calibration set it was made with",
                         hint="make it again with `resexport convert --quantize int8 --force`")
    calibration = data_mod.calibration_set(dataset, int(entry["calibration"]["count"]))
    if (entry.get("calibration") or {}).get("indices_sha256") not in (None, calibration.hash):
        log.warning("the calibration set differs from the one %s was made with", kind)
    hold, _ = holdout(run, dataset, calibration, samples)
    target_cpu = (entry.get("target_cpu") or {}).get("target_cpu", "auto")
    source = ExportSource(run.model_path, run.model_format, tuple(dataset.input_shape), unsafe=unsafe)
    start = time.perf_counter()
    try:
        with progress.task(f"inspecting {kind}"):
            rows = layer_table(row, source, calibration, hold.x, target_cpu=target_cpu)
    finally:
        source.cleanup()
    kept_float = set(entry.get("float_layers") or [])
    for r in rows:
        r["float_in_artifact"] = (r.get("node") or r["name"]) in kept_float  # this layer's own op
    return {"run": str(run), "kind": kind, "file": entry["file"], "layers": rows, "count": len(rows),
            "images": {"split": "train (held out from calibration and training)", "count": int(len(hold.indices)),
                       "indices_sha256": hold.hash},
            "calibration": calibration.describe(), "metric": "channel_noise_to_signal (the ranking) = worst channel's "
            "rms(int8 - float) / std(float) of each layer's output, the layer run on the same input in both; "
            "noise_to_signal = the same over the whole tensor, ||int8 - float|| / ||float||", "seconds": round(time.perf_counter() - start, 1),
            "float_layers": entry.get("float_layers", []), "fallback": entry.get("fallback", "none")}


# ------------------------------------------------------------------------------ fallback search

def fallback_search(*, kind: formats.ArtifactKind, source, out: Path, calibration, dataset: data_mod.Dataset,
                    run, gates: formats.Gates | None = None, target_cpu: str = "auto",
                    holdout_count: int = DEFAULT_HOLDOUT, samples: int = DEFAULT_SAMPLES,
                    reference: np.ndarray | None = None, also=None, difficulty: np.ndarray | None = None) -> dict:
    """Write `kind` to `out` with the fewest layers kept in float32 that make it pass its gate,
    judged by the confidence bounds of exporter.quantize.judge on a held-out training slice. Layers are ranked by their own quantisation
    error (layer_table); the float set is the worst k, k = 0, 1, 2, 4, ... until one passes, then
    bisected between the last k that failed and the first that passed. Returns the manifest details.
    `also(outputs) -> verdict`: a second claim a trial must pass too (fallback on top of QAT: the
    drop against the original, while `reference` is the fine-tuned model's outputs). `difficulty`:
    the reference's top-2 margins on the deployment inputs (judge.difficulty_matched)."""
    gates = gates or kind.gates
    start = time.perf_counter()
    run = Run.of(run)
    hold, labels = holdout(run, dataset, calibration, holdout_count)
    seen = holdout_seen(run, dataset)
    convention = run.output or "probabilities"
    if reference is None:
        ref_runner = load_runner(source.path, kind=source.family)
        reference = ref_runner.predict_batched(hold.x, 256)
        ref_runner.close()
    ref = reference
    backend = _backend(kind, source, calibration, target_cpu)
    trials: list[dict] = []

    with tempfile.TemporaryDirectory(prefix="resexport-fallback-") as tmpdir:
        cache: dict[int, tuple[dict, Path]] = {}

        def trial(k: int, order: list[dict]) -> bool:
            if k in cache:
                return cache[k][0]["passed"]
            names = sorted({n for r in order[:k] for n in r["float_layers"]})
            path = Path(tmpdir) / f"k{k}{Path(kind.filename).suffix}"
            backend.quantize(names, path)
            runner = load_runner(path, kind=kind.name)
            outputs = runner.predict_batched(hold.x, 256)
            runner.close()
            m = judge(ref, outputs, labels, dataset.class_names, gates, convention=convention, seen=seen,
                      difficulty=difficulty)
            if also is not None:
                second = also(outputs)
                m = {**m, "passed": m["passed"] and second["passed"], "failures": m["failures"] + second["failures"],
                     "also": second}
            m.update({"float_set": k, "float_layers": len(names), "bytes": path.stat().st_size})
            trials.append(m)
            cache[k] = (m, path)
            log.info("fallback %s: worst %d layers float (%d nodes): agreement %.2f%%, drop %.2f pt -> %s",
                     kind.name, k, len(names), m["agreement"], m["drop_points"], "pass" if m["passed"] else "fail")
            return m["passed"]

        try:
            order: list[dict] = []
            chosen = 0
            if not trial(0, order):
                order = layer_table(kind, source, calibration, hold.x[:samples], target_cpu=target_cpu)
                chosen = _fewest(lambda k: trial(k, order), len(order), kind, trials)
            m, path = cache[chosen]
            names = sorted({n for r in order[:chosen] for n in r["float_layers"]})

            conformance = write_checked(out, path.read_bytes(), kind.name, input_shape=source.input_shape,
                                        num_classes=source.num_classes)
        finally:
            backend.close()
    return {**backend.details(), "fallback": "auto", "float_layers": names, "conformance": conformance,
            "fallback_search": _search_record(hold, seen, gates, order, m, trials, start)}


def _fewest(trial, n: int, kind, trials: list[dict]) -> int:
    """The fewest of the n ranked layers to keep float for `trial(k)` to pass: k = 1, 2, 4, ... until one
    passes, then bisected between the last k that failed and the first that passed."""
    lo, hi, k = 0, None, 1
    while hi is None:
        k = min(k, n)
        if trial(k):
            hi = k
        elif k == n:
            raise ValidationFailed(
                f"{kind.name}: even with all {n} quantised layers in float the hold-out agreement is "
                f"{trials[-1]['agreement']:.2f}% ({'; '.join(trials[-1]['failures'])}, as bounded)",
                hint="the loss is not in the layers (check the input/output quantisation)")
        else:
            lo, k = k, k * 2
    while hi - lo > 1:  # fewest: bisect between the last failing and the first passing size
        mid = (lo + hi) // 2
        if trial(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _search_record(hold, seen, gates, order, chosen: dict, trials: list[dict], start: float) -> dict:
    """The manifest's `fallback_search`: the hold-out, how trials were judged, every trial and the chosen one."""
    return {"holdout": {"split": "train", "count": int(len(hold.indices)), "indices_sha256": hold.hash,
                        "excludes": "calibration images and the model's training subset (if recorded)"},
            "judged_by": "exporter.quantize.judge: validate.check_gates on the hold-out's confidence bounds "
                         "(Wilson lower bound of agreement, paired upper bound of the drop; when the slice may "
                         "hold training images, also reweighted to the test inputs' difficulty)",
            "seen_in_training": seen, "gates": {"min_agreement": gates.min_agreement, "max_drop": gates.max_drop},
            "ranked_layers": len(order),
            "ranking": "channel_noise_to_signal per layer output (exporter.quantize.diagnose); a layer's float set is "
                       "its op and the ops reading its output, so the tensor between them stays float",
            "chosen": dict(chosen), "trials": trials, "seconds": round(time.perf_counter() - start, 1)}
