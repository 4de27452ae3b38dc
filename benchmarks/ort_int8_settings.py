"""Issue 13: which ONNX Runtime int8 settings pay on THIS CPU, and why. Four measurements:

1. the graphs: Transposes tf2onnx leaves in onnx-fp32, and the node types ORT runs after its own
   optimisation (saved with optimized_model_filepath) for fp32 and int8;
2. fp32 and int8 at each graph optimisation level (basic / extended / all), resnet18, batch 1 and 32;
3. int8 variants: S8S8 vs U8S8 (activation QInt8 vs QUInt8), reduce_range on/off, per-channel on/off,
   QDQ vs QOperator: speed on resnet18 (random weights), agreement with Keras on the trained plain12
   (held-out training images, ORT's real kernels and the QDQ graph simulated in float);
4. a micro-benchmark of the kernels themselves: ORT MatMulInteger (u8 x s8, u8 x u8) vs MatMul fp32 on
   a resnet18-sized GEMM, in Gop/s.
Threads: the physical cores, for every session. Writes results/ort_int8_settings.{json,md}.

Usage: python benchmarks/ort_int8_settings.py   (after int8_speed.py; needs artifacts/int8/plain12,
made by int8_fallback.py)   ~6 min on 2 cores"""

import collections
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import ROOT, machine, save

import onnx
import onnxruntime as ort
from exporter import data
from exporter import manifest as mf
from exporter.bench import BenchConfig, time_calls
from exporter.cpuinfo import physical_cores
from exporter.export import onnx as onx
from exporter.export.source import ExportSource
from exporter.quantize.diagnose import holdout
from exporter.runtimes import load_runner

SPEED_RUN = ROOT / "artifacts" / "int8-speed" / "resnet18"
ACC_RUN = ROOT / "artifacts" / "int8" / "plain12"
for r in (SPEED_RUN, ACC_RUN):
    if not (r / "manifest.json").is_file():
        sys.exit(f"{r} missing: run benchmarks/int8_speed.py and benchmarks/int8_fallback.py first")
THREADS = physical_cores()
LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
CFG = BenchConfig(warmup=2, min_runs=5, min_time=1.5, max_time=8.0, threads=THREADS)
ds = data.load_dataset("fashion_mnist")
images = np.ascontiguousarray(ds.x_test[:256])


def session(path, level="all", optimized_to=None):
    so = ort.SessionOptions()
    so.graph_optimization_level = LEVELS[level]
    so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
    so.log_severity_level = 3
    if optimized_to:
        so.optimized_model_filepath = str(optimized_to)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def p50(sess, batch):
    name = sess.get_inputs()[0].name
    return time_calls(lambda x: sess.run(None, {name: x}), images, batch, CFG)["p50_ms"]


def op_counts(path):
    return dict(collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node).most_common())


tmp = Path(tempfile.mkdtemp(prefix="ort-int8-"))
man = mf.read_manifest(SPEED_RUN)
fp32, int8 = SPEED_RUN / man["artifacts"]["onnx-fp32"]["file"], SPEED_RUN / man["artifacts"]["onnx-int8"]["file"]

# 1. graphs
graphs = {"onnx-fp32 (tf2onnx)": op_counts(fp32), "onnx-int8 (QDQ file)": op_counts(int8)}
for label, path in (("fp32", fp32), ("int8", int8)):
    session(path, "all", tmp / f"{label}_opt.onnx")
    graphs[f"{label} as ORT runs it (level all)"] = op_counts(tmp / f"{label}_opt.onnx")
print("graphs done", flush=True)

# 2. optimisation levels (fp32, and int8 as convert makes it now)
levels = []
for label, path in (("fp32", fp32), ("int8", int8)):
    for level in ("basic", "extended", "all"):
        sess = session(path, level)
        levels.append({"model": label, "level": level, "p50_ms_b1": p50(sess, 1), "p50_ms_b32": p50(sess, 32)})
        print(levels[-1], flush=True)

# 3. int8 variants
acc_man = mf.read_manifest(ACC_RUN)
cal_speed = data.calibration_set(ds, 50)
cal_acc = data.calibration_set(ds, 500)
hold, _ = holdout(ACC_RUN, ds, cal_acc, 2000)
ref = load_runner(ACC_RUN / acc_man["model"]["file"], kind="keras").predict_batched(hold.x, 256)


def agreement(path, level):
    sess = session(path, level)
    out = np.concatenate([sess.run(None, {"image": hold.x[i: i + 256]})[0] for i in range(0, len(hold.x), 256)])
    return float(100 * (out.argmax(1) == ref.argmax(1)).mean())


def prepared(run):
    m = mf.read_manifest(run)
    src = ExportSource(run / m["model"]["file"], "keras", tuple(ds.input_shape))
    folder = Path(tempfile.mkdtemp(dir=tmp))
    try:
        return onx.prepare_for_int8(src, folder)
    finally:
        src.cleanup()


prep_speed, prep_acc = prepared(SPEED_RUN), prepared(ACC_RUN)
q = __import__("onnxruntime.quantization", fromlist=["quantize_static"])
VARIANTS = [  # (label, activation, reduce_range, per_channel, format)
    ("S8S8 reduce_range per-channel QDQ (the old default)", "QInt8", True, True, "QDQ"),
    ("S8S8 per-channel QDQ", "QInt8", False, True, "QDQ"),
    ("U8S8 reduce_range per-channel QDQ (--target-cpu avx2)", "QUInt8", True, True, "QDQ"),
    ("U8S8 per-channel QDQ (--target-cpu vnni)", "QUInt8", False, True, "QDQ"),
    ("S8S8 reduce_range per-tensor QDQ", "QInt8", True, False, "QDQ"),
    ("U8S8 reduce_range per-channel QOperator", "QUInt8", True, True, "QOperator"),
]
variants = []
for label, act, rr, pc, fmt in VARIANTS:
    row = {"variant": label, "activation_type": act, "reduce_range": rr, "per_channel": pc, "format": fmt}
    for which, prep, cal in (("speed", prep_speed, cal_speed), ("acc", prep_acc, cal_acc)):
        out = tmp / f"{which}_{len(variants)}.onnx"
        q.quantize_static(str(prep), str(out), onx.calibration_reader(np.asarray(cal.x, np.float32)),
                          quant_format=getattr(q.QuantFormat, fmt), per_channel=pc,
                          activation_type=getattr(q.QuantType, act), weight_type=q.QuantType.QInt8, reduce_range=rr,
                          calibrate_method=q.CalibrationMethod.MinMax,
                          extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        if which == "speed":
            sess = session(out, "all", tmp / f"opt_{len(variants)}.onnx")
            ops = op_counts(tmp / f"opt_{len(variants)}.onnx")
            row["ort_graph"] = {k: ops.get(k, 0) for k in ("QLinearConv", "Conv", "Transpose", "QuantizeLinear",
                                                           "DequantizeLinear")}
            row.update(p50_ms_b1=p50(sess, 1), p50_ms_b32=p50(sess, 32))
        else:
            row.update(plain12_agreement_ort=agreement(out, "all"),
                       plain12_agreement_simulated=agreement(out, "disabled") if fmt == "QDQ" else None)
    variants.append(row)
    print(row, flush=True)
fp32_sess = session(fp32)
fp32_ref = {"p50_ms_b1": p50(fp32_sess, 1), "p50_ms_b32": p50(fp32_sess, 32)}


# 4. kernels: MatMulInteger vs MatMul on a resnet18 3x3 conv as GEMM (M = 7x7 positions x 32 images, K = 3x3x256, N = 256)
def gemm_model(kind, m, k, n):
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        w = helper.make_tensor("B", TensorProto.FLOAT, (k, n), rng.normal(size=(k, n)).astype(np.float32).ravel())
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    else:
        b_dtype = np.int8 if kind == "u8s8" else np.uint8
        w = helper.make_tensor("B", TensorProto.INT8 if kind == "u8s8" else TensorProto.UINT8, (k, n),
                               rng.integers(-60, 60, (k, n)).astype(b_dtype).ravel() if kind == "u8s8"
                               else rng.integers(0, 255, (k, n)).astype(b_dtype).ravel())
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", a_type, (m, k))],
                              [helper.make_tensor_value_info("Y", y_type, (m, n))], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp / f"gemm_{kind}.onnx"
    onnx.save(model, str(path))
    return path


M, K, N = 7 * 7 * 32, 3 * 3 * 256, 256
kernels = []
for kind in ("fp32", "u8s8", "u8u8"):
    sess = session(gemm_model(kind, M, K, N))
    a = (np.random.default_rng(1).random((M, K)) * (1 if kind == "fp32" else 255)).astype(np.float32 if kind == "fp32" else np.uint8)
    stats = time_calls(lambda x: sess.run(None, {"A": a}), np.zeros((8, 1)), 1, BenchConfig(warmup=3, min_runs=20, min_time=2.0))
    kernels.append({"kernel": "MatMul fp32" if kind == "fp32" else f"MatMulInteger {kind}", "p50_ms": stats["p50_ms"],
                    "gops": 2 * M * K * N / (stats["p50_ms"] / 1e3) / 1e9})
    print(kernels[-1], flush=True)

env = machine()
doc = {"threads": THREADS, "speed_run": str(SPEED_RUN.relative_to(ROOT)), "accuracy_run": str(ACC_RUN.relative_to(ROOT)),
       "graphs": graphs, "levels": levels, "variants": variants, "fp32_reference": fp32_ref,
       "gemm": {"m": M, "k": K, "n": N, "rows": kernels}, "machine": env,
       "note": "2-core machine shared with other processes while this ran; p50 of >= 5 calls"}
fp = {r["kernel"]: r for r in kernels}
lines = [f"# ONNX Runtime int8 settings on {env['cpu']} ({env['cpu_int8']['summary']}), {THREADS} threads", "",
         "The machine was shared with other processes while this ran; p50 of at least 5 calls.", "",
         "## Kernels: int8 GEMM vs fp32 GEMM (ORT MatMulInteger / MatMul)", "",
         f"A resnet18 3x3 conv as a GEMM: M={M} (7x7 positions x 32 images), K={K}, N={N}.", "",
         "| kernel | p50 ms | Gop/s |", "|---|---:|---:|"]
lines += [f"| {r['kernel']} | {r['p50_ms']:.2f} | {r['gops']:.1f} |" for r in kernels]
lines += ["", f"int8 GEMM over fp32 GEMM on this CPU: u8s8 **{fp['MatMulInteger u8s8']['gops'] / fp['MatMul fp32']['gops']:.2f}x**, "
          f"u8u8 {fp['MatMulInteger u8u8']['gops'] / fp['MatMul fp32']['gops']:.2f}x.", "",
          "## int8 variants: resnet18 speed (random weights) and plain12 agreement (2,000 held-out training images)", "",
          f"onnx-fp32 reference: p50 {fp32_ref['p50_ms_b1']:.2f} ms at batch 1, {fp32_ref['p50_ms_b32']:.1f} ms at batch 32.", "",
          "| variant | p50 ms b=1 | p50 ms b=32 | vs fp32 b=1 | vs fp32 b=32 | plain12 agreement (ORT kernels) | (QDQ simulated in float) | ORT runs: QLinearConv / float Conv / Transpose |",
          "|---|---:|---:|---:|---:|---:|---:|---|"]
for v in variants:
    sim = "–" if v["plain12_agreement_simulated"] is None else f"{v['plain12_agreement_simulated']:.2f}%"
    lines.append(f"| {v['variant']} | {v['p50_ms_b1']:.2f} | {v['p50_ms_b32']:.1f} | {fp32_ref['p50_ms_b1'] / v['p50_ms_b1']:.2f}x | "
                 f"{fp32_ref['p50_ms_b32'] / v['p50_ms_b32']:.2f}x | {v['plain12_agreement_ort']:.2f}% | {sim} | "
                 f"{v['ort_graph']['QLinearConv']} / {v['ort_graph']['Conv']} / {v['ort_graph']['Transpose']} |")
lines += ["", "## Graph optimisation level (resnet18)", "", "| model | level | p50 ms b=1 | p50 ms b=32 |", "|---|---|---:|---:|"]
lines += [f"| {r['model']} | {r['level']} | {r['p50_ms_b1']:.2f} | {r['p50_ms_b32']:.1f} |" for r in levels]
lines += ["", "## Graphs (node counts by type)", ""]
for label, counts in graphs.items():
    lines.append(f"- {label}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
save("ort_int8_settings", doc, "\n".join(lines))
