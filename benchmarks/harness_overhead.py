"""Issue 4c: resexport's timing loop (Runner.predict through bench.time_calls) vs a bare loop
calling the runtime directly, same artifact, same images, same run, interleaved."""

import time

import numpy as np
from _common import machine, need_run, save

from exporter import data
from exporter.bench import BenchConfig, latency_stats, time_calls
from exporter.runtimes import load_runner

run = need_run()
x = data.load_dataset("fashion_mnist").x_test[:512]
cfg = BenchConfig(warmup=20, min_runs=300, min_time=2.0)


def bare_tflite(runner, batch):
    it, d, o = runner.interp, runner._in, runner._out
    it.resize_tensor_input(d["index"], [batch, 28, 28, 1])
    it.allocate_tensors()
    runner._batch = None  # the Runner must resize again after us

    def call(xb):
        it.set_tensor(d["index"], xb)
        it.invoke()
        return it.get_tensor(o["index"])
    return call


def bare_onnx(runner, batch):
    s = runner.session
    name = s.get_inputs()[0].name
    return lambda xb: s.run(None, {name: xb})[0]


def bare_time(call, batch, runs=300):
    for i in range(20):
        call(x[:batch])
    lat = []
    for i in range(runs):
        xb = x[(i * batch) % (512 - batch + 1):][:batch]
        t = time.perf_counter()
        call(xb)
        lat.append(time.perf_counter() - t)
    return latency_stats(lat, batch)


rows = []
for kind, bare in (("tflite-fp32", bare_tflite), ("onnx-fp32", bare_onnx)):
    runner = load_runner(run / {"tflite-fp32": "model_fp32.tflite", "onnx-fp32": "model.onnx"}[kind], kind=kind)
    for batch in (1, 64):
        for rep in range(2):  # interleave: harness, bare, harness, bare
            h = time_calls(runner.predict, x, batch, cfg)
            b = bare_time(bare(runner, batch), batch)
            rows.append({"artifact": kind, "batch": batch, "repeat": rep, "harness_p50_ms": h["p50_ms"],
                         "bare_p50_ms": b["p50_ms"], "overhead_us": 1e3 * (h["p50_ms"] - b["p50_ms"]),
                         "ratio": h["p50_ms"] / b["p50_ms"]})
doc = {"rows": rows, "machine": machine()}
lines = [f"# Harness overhead, {doc['machine']['cpu']} ({doc['machine']['cores']} cores)", "",
         "resexport's loop (Runner.predict: dtype/contiguity check, batch resize, output reshape) vs a bare loop "
         "calling the runtime directly; p50 of single calls, interleaved in one run.", "",
         "| artifact | batch | repeat | resexport p50 ms | bare p50 ms | overhead us | ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
lines += [f"| {r['artifact']} | {r['batch']} | {r['repeat']} | {r['harness_p50_ms']:.4f} | {r['bare_p50_ms']:.4f} | "
          f"{r['overhead_us']:+.1f} | {r['ratio']:.3f} |" for r in rows]
save("harness_overhead", doc, "\n".join(lines))
