"""Issue 13: does int8 pay? fp32 vs int8 in both runtimes (LiteRT/XNNPACK, ONNX Runtime) on
residual20 and resnet18 with random weights (speed does not depend on training), 28x28x1 input, 10
classes, imported with `convert --model` and calibrated on 50 training images. Batch 1 and 32, the
same explicit thread count for every runtime (bench's default: the physical cores), the CPU's
int8 instruction sets recorded. Writes results/int8_speed.{json,md}.

Usage: python benchmarks/int8_speed.py [MODEL ...]   (default: residual20 plain20 residual50 resnet18;
~3 min a model on 2 cores)"""

import json
import sys

from _common import ROOT, machine, save

import resexport as rx

MODELS = tuple(sys.argv[1:]) or ("residual20", "plain20", "residual50", "resnet18")
KINDS = ("tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8")
OUT = ROOT / "artifacts" / "int8-speed"


def random_model(name: str):
    import keras

    from exporter.models import build_model

    keras.utils.set_random_seed(0)
    path = OUT / f"{name}.keras"
    OUT.mkdir(parents=True, exist_ok=True)
    build_model(name, (28, 28, 1), 10).save(path)
    return path


from exporter.cpuinfo import physical_cores  # noqa: E402

threads = physical_cores()
rows, runs = [], {}


def write(done):
    p50 = {(r["model"], r["kind"], r["batch"]): r["p50_ms"] for r in rows}
    speedups = []
    for name in done:
        for rt in ("tflite", "onnx"):
            for b in (1, 32):
                speedups.append({"model": name, "runtime": rt, "batch": b,
                                 "int8_speedup": p50[(name, f"{rt}-fp32", b)] / p50[(name, f"{rt}-int8", b)]})
    env = machine()
    doc = {"models": done, "threads": threads, "calibration_samples": 50, "runs": runs, "rows": rows,
           "speedups": speedups, "machine": env, "thread_counts": sorted({r["threads"] for r in rows}),
           "cpu_flags": env["cpu_int8"]["flags"],
           "note": "2-core machine shared with other processes (other agents' jobs and test suites) while this ran; p50 of >= 10 calls; ratios are within this one run"}
    lines = [f"# int8 vs fp32 speed (random weights, 28x28x1, 10 classes; {threads} threads for every runtime)", "",
             f"CPU: {env['cpu']}, int8 instruction sets: **{env['cpu_int8']['summary']}** "
             f"(flags: {', '.join(env['cpu_int8']['flags']) or 'none'}). The machine was shared with other processes "
             "while this ran. onnx-int8 settings (--target-cpu auto on this CPU): "
             f"{json.dumps({k: v for k, v in (runs[done[0]]['onnx_int8_target_cpu'] or {}).items() if k != 'requested'})}.", "",
             "| model | kind | batch | p50 ms | mean ± std ms | threads | size KiB |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['kind']} | {r['batch']} | {r['p50_ms']:.2f} | {r['mean_ms']:.2f} ± {r['std_ms']:.2f} | "
                     f"{r['threads']} | {runs[r['model']]['bytes'][r['kind']] / 1024:.0f} |")
    lines += ["", "| model | runtime | batch | int8 speed-up over fp32 (p50) |", "|---|---|---:|---:|"]
    lines += [f"| {s['model']} | {s['runtime']} | {s['batch']} | **{s['int8_speedup']:.2f}x** |" for s in speedups]
    save("int8_speed", doc, "\n".join(lines))


for name in MODELS:
    run = OUT / name
    rx.convert(random_model(name), run=run, force=True, format="all", quantize="none").check()
    rx.convert(run=run, format="all", quantize="int8", calib_samples=50).check()
    man = json.loads((run / "manifest.json").read_text())
    bench = rx.bench(run, artifacts=KINDS, batches=(1, 32), threads=threads, reference=False, min_time=2, min_runs=10,
                     warmup=3).report
    runs[name] = {"run": str(run.relative_to(ROOT)), "bytes": {k: man["artifacts"][k]["bytes"] for k in KINDS},
                  "onnx_int8_target_cpu": man["artifacts"]["onnx-int8"].get("target_cpu")}
    for r in bench["results"]:
        rows.append({"model": name, **{k: r[k] for k in ("kind", "batch", "p50_ms", "mean_ms", "std_ms", "p90_ms",
                                                          "runs", "threads", "engine", "provider", "precision")}})
    print(name, "done", flush=True)
    write(tuple(runs))  # after each model, so a partial run is saved
