"""Issue 4a: every artifact vs Keras on this CPU at batch 1 and 64, ratios from ONE run.
Goal: deployed artifacts >= 10x faster than Keras model.predict at batch 1."""

from _common import machine, need_run, save

from exporter import data
from exporter.bench import BenchConfig, bench

run = need_run()
ds = data.load_dataset("fashion_mnist")
rep = bench(run=run, dataset=ds, cfg=BenchConfig(batches=(1, 64), warmup=10, min_runs=30, min_time=2.0), write=False)
rows = rep["results"]
doc = {"config": rep["config"], "results": rows, "machine": machine()}
lines = [f"# Every artifact vs Keras, {doc['machine']['cpu']} ({doc['machine']['cores']} cores), one run", "",
         "p50 latency of single calls on real test images; ratios are Keras p50 / artifact p50 at the same batch.", "",
         "| target | batch | p50 ms | images/s | vs Keras predict | vs Keras compiled | goal (>=10x predict, b=1) |",
         "|---|---:|---:|---:|---:|---:|---|"]
for r in rows:
    goal = ""
    if r["batch"] == 1 and r["kind"] != "keras":
        goal = "met" if r["speedup_vs_keras_predict"] >= 10 else "**missed**"
    lines.append(f"| {r['target']} | {r['batch']} | {r['p50_ms']:.3f} | {r['throughput_ips']:.0f} | "
                 f"{r['speedup_vs_keras_predict']:.1f}x | {r['speedup_vs_keras_compiled']:.1f}x | {goal} |")
fp32 = {r["batch"]: r["p50_ms"] for r in rows if r["kind"] == "tflite-fp32"}
for r in rows:
    if r["kind"].endswith("int8"):
        lines.append(f"\n{r['target']} at batch {r['batch']}: {fp32[r['batch']] / r['p50_ms']:.2f}x the speed of "
                     "tflite-fp32 (goal: best int8 >= 1.3x)")
save("cpu_vs_keras", doc, "\n".join(lines))
