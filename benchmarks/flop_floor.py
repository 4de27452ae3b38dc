"""Issue 4b: the floor. The model's FLOPs and this machine's measured fp32 GEMM peak (numpy/
OpenBLAS, all cores); each artifact's latency divided by FLOPs/peak, in the same run."""

import time

import numpy as np
from _common import machine, model_flops, need_run, save

from exporter import data
from exporter.bench import BenchConfig, bench


def gemm_peak(n=1024, repeats=20) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


run = need_run()
import keras  # noqa: E402

model = keras.saving.load_model(run / "model.keras")
flops = model_flops(model)
peak = gemm_peak()
ds = data.load_dataset("fashion_mnist")
rep = bench(run=run, dataset=ds, include_reference=False, write=False,
            cfg=BenchConfig(batches=(1, 64), warmup=10, min_runs=30, min_time=2.0))
rows = []
for r in rep["results"]:
    floor_ms = flops * r["batch"] / peak * 1e3
    rows.append({"target": r["target"], "batch": r["batch"], "p50_ms": r["p50_ms"], "floor_ms": floor_ms,
                 "over_floor": r["p50_ms"] / floor_ms, "achieved_gflops": flops * r["batch"] / (r["p50_ms"] / 1e3) / 1e9})
doc = {"model_flops_per_image": flops, "gemm_peak_gflops": peak / 1e9, "rows": rows, "machine": machine()}
lines = [f"# Latency over the FLOP floor, {doc['machine']['cpu']} ({doc['machine']['cores']} cores)", "",
         f"Model: {flops / 1e6:.2f} MFLOP per image. Measured fp32 GEMM peak (numpy 1024x1024 matmul, best of 20): "
         f"{peak / 1e9:.1f} GFLOP/s. Floor = FLOPs x batch / peak. Goal: fp32 within 1.2x of the floor.", "",
         "| artifact | batch | p50 ms | floor ms | p50 / floor | achieved GFLOP/s |", "|---|---:|---:|---:|---:|---:|"]
lines += [f"| {r['target']} | {r['batch']} | {r['p50_ms']:.3f} | {r['floor_ms']:.3f} | {r['over_floor']:.1f}x | "
          f"{r['achieved_gflops']:.1f} |" for r in rows]
save("flop_floor", doc, "\n".join(lines))
