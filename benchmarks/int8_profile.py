"""Issue 33: where ONNX Runtime's int8 time goes on the runs benchmarks/int8_speed.py made (random-weight seed
nets), and why the 2x2-convolution nets stop short of 3x. For each model and batch (1, 32): ONNX Runtime's
profiler (`resexport profile`, exporter.profiling) on onnx-fp32 and onnx-int8 -- the sum of kernel times per
call by op type, the convolutions' kernel time fp32 / int8 (the ratio no graph change can raise: every
convolution is already one QLinearConv), beside the call's wall time ratio through the runner bench uses.
(Time outside the kernels cannot be read from this: with the profiler on, each node's recorded time carries
the profiler's own cost, which at batch 1 exceeds the gaps between kernels.) Writes results/int8_profile.{json,md}.

Usage: python benchmarks/int8_profile.py [MODEL ...]   (after int8_speed.py; default: its four models; ~1 min)"""

import statistics
import sys
import time

import numpy as np
from _common import ROOT, machine, save

from exporter import api
from exporter.cpuinfo import physical_cores
from exporter.run import Run
from exporter.runtimes import load_runner

MODELS = tuple(sys.argv[1:]) or ("residual20", "plain20", "residual50", "resnet18")
RUNS, BATCHES, KINDS = 30, (1, 32), ("onnx-fp32", "onnx-int8")
CONV = {"onnx-fp32": ("Conv", "FusedConv"), "onnx-int8": ("QLinearConv",)}
threads = physical_cores()


def wall_ms(run, kind, images, batch) -> float:
    """The median call through the runner `bench` uses (the kernels' time plus what lies between them)."""
    runner = load_runner(Run.of(run).artifact_path(kind), kind=kind, runtime="onnxruntime", threads=threads)
    x = images[:batch]
    for _ in range(5):
        runner.predict(x)
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        runner.predict(x)
        times.append(time.perf_counter() - t0)
    runner.close()
    return 1e3 * statistics.median(times)


rows = []
images = np.random.default_rng(0).random((64, 28, 28, 1), dtype=np.float32)
for name in MODELS:
    run = ROOT / "artifacts" / "int8-speed" / name
    if not (run / "manifest.json").is_file():
        sys.exit(f"{run} missing: run python benchmarks/int8_speed.py {name} first")
    for batch in BATCHES:
        prof = api.profile(run, artifacts=KINDS, runtimes=("onnxruntime",), runs=RUNS, batch=batch, threads=threads,
                          write=False)
        per = {}
        for t in prof["targets"]:
            kernels = t["total_ms_per_call"]
            conv = sum(o["ms_per_call"] for o in t["ops"] if o["op_type"] in CONV[t["kind"]])
            per[t["kind"]] = {"kernels_ms": kernels, "conv_ms": conv, "conv_share": conv / kernels,
                              "wall_ms": wall_ms(run, t["kind"], images, batch),
                              "op_types": {k: round(v, 4) for k, v in t["op_types"].items()},
                              "top_op": max(t["ops"], key=lambda o: o["ms_per_call"])}
        f, q = per["onnx-fp32"], per["onnx-int8"]
        rows.append({"model": name, "batch": batch, **{k.replace("-", "_"): v for k, v in per.items()},
                     "conv_ratio": f["conv_ms"] / q["conv_ms"], "kernels_ratio": f["kernels_ms"] / q["kernels_ms"],
                     "wall_ratio": f["wall_ms"] / q["wall_ms"]})
        print(name, batch, "done", flush=True)

lines = ["# Where ONNX Runtime's int8 time goes (`python benchmarks/int8_profile.py`, runs of int8_speed.py)", "",
         f"CPU: {machine()['cpu']} ({machine()['cpu_int8']['summary']}), {threads} threads; ONNX Runtime's profiler, "
         f"median of {RUNS} calls per node (profiled, so each node carries the profiler's cost); 'wall': the median "
         "call through bench's runner, unprofiled.", "",
         "| model | batch | fp32 conv ms | int8 QLinearConv ms | **conv fp32 / int8** | int8: conv share | "
         "all kernels fp32 / int8 | wall fp32 / int8 |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    f, q = r["onnx_fp32"], r["onnx_int8"]
    lines.append(f"| {r['model']} | {r['batch']} | {f['conv_ms']:.3f} | {q['conv_ms']:.3f} | **{r['conv_ratio']:.2f}x** | "
                 f"{100 * q['conv_share']:.0f}% | "
                 f"{r['kernels_ratio']:.2f}x | {r['wall_ratio']:.2f}x |")
save("int8_profile", {"machine": machine(), "threads": threads, "runs": RUNS, "rows": rows}, "\n".join(lines))
