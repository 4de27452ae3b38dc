"""Issue 13/33: does int8 pay? fp32 vs int8 in both runtimes (LiteRT/XNNPACK, ONNX Runtime) on the seed
nets with random weights (speed does not depend on training), 28x28x1 input, 10 classes, imported with
`convert --model` and calibrated on 50 training images. Batch 1 and 32, the same explicit thread count
for every runtime (bench's default: the physical cores), the CPU's int8 instruction sets recorded.

On a shared machine a p50 taken a minute apart from another is not comparable, so fp32 and int8 of one
runtime are timed **interleaved**: ROUNDS rounds, each timing fp32 then int8 (bench's own timing loop,
`exporter.bench.time_calls`, through the same runners as `bench`), and the speed-up is the median over
rounds of the round's p50 ratio; the p50s shown are medians over rounds. The ONNX files run on ONNX
Runtime and the TFLite files on LiteRT only (OpenVINO is a separate row in `bench --runtimes`).
Writes results/int8_speed.{json,md}.

Usage: python benchmarks/int8_speed.py [--rounds R] [MODEL ...]
(default: residual20 plain20 residual50 resnet18, 5 rounds; ~4 min a model on 2 cores)"""

import json
import statistics
import sys

from _common import ROOT, machine, save

import resexport as rx
from exporter.bench import BenchConfig, time_calls
from exporter.cpuinfo import physical_cores
from exporter.run import Run
from exporter.runtimes import load_runner

args = sys.argv[1:]
ROUNDS = 5
if "--rounds" in args:
    i = args.index("--rounds")
    ROUNDS = int(args[i + 1])
    del args[i: i + 2]
MODELS = tuple(args) or ("residual20", "plain20", "residual50", "resnet18")
PAIRS = {"litert": ("tflite-fp32", "tflite-int8"), "onnxruntime": ("onnx-fp32", "onnx-int8")}
BATCHES = (1, 32)
OUT = ROOT / "artifacts" / "int8-speed"
threads = physical_cores()
CFG = BenchConfig(batches=BATCHES, warmup=3, min_runs=10, min_time=0.5, threads=threads)


def random_model(name: str):
    import keras

    from exporter.models import build_model

    keras.utils.set_random_seed(0)
    path = OUT / f"{name}.keras"
    OUT.mkdir(parents=True, exist_ok=True)
    build_model(name, (28, 28, 1), 10).save(path)
    return path


def measure(run, images) -> list[dict]:
    """For each runtime and batch: ROUNDS x (fp32 then int8), the median p50s and the median round ratio."""
    out = []
    for runtime, pair in PAIRS.items():
        runners = {k: load_runner(Run.of(run).artifact_path(k), kind=k, runtime=runtime, threads=threads) for k in pair}
        for b in BATCHES:
            p50s = {k: [] for k in pair}
            for _ in range(ROUNDS):
                for k in pair:
                    p50s[k].append(time_calls(runners[k].predict, images, b, CFG)["p50_ms"])
            ratios = [f / q for f, q in zip(p50s[pair[0]], p50s[pair[1]])]
            out.append({"runtime": runtime, "batch": b, "fp32_p50_ms": statistics.median(p50s[pair[0]]),
                        "int8_p50_ms": statistics.median(p50s[pair[1]]), "int8_speedup": statistics.median(ratios),
                        "speedup_min": min(ratios), "speedup_max": max(ratios), "rounds": ROUNDS,
                        "threads": {k: runners[k].info.get("threads") for k in pair},
                        "provider": {k: runners[k].info.get("provider") for k in pair}})
        for r in runners.values():
            r.close()
    return out


def write(rows: list[dict], runs: dict) -> None:
    env = machine()
    doc = {"models": list(runs), "threads": threads, "rounds": ROUNDS, "calibration_samples": 50, "runs": runs,
           "speedups": rows, "machine": env, "thread_counts": sorted({t for r in rows for t in r["threads"].values()}),
           "cpu_flags": env["cpu_int8"]["flags"],
           "note": "fp32 and int8 timed interleaved in rounds on a shared 2-core machine; ratios are medians of "
                   "per-round p50 ratios within this one run"}
    target = next(iter(runs.values()))["onnx_int8_target_cpu"] or {}
    lines = [f"# int8 vs fp32 speed (random weights, 28x28x1, 10 classes; {threads} threads for every runtime)", "",
             f"CPU: {env['cpu']}, int8 instruction sets: **{env['cpu_int8']['summary']}** "
             f"(flags: {', '.join(env['cpu_int8']['flags']) or 'none'}). fp32 and int8 of each runtime timed "
             f"interleaved, {ROUNDS} rounds; speed-up = median over rounds of the round's p50 ratio (range in "
             "brackets). onnx-int8 settings (--target-cpu auto on this CPU): "
             f"{json.dumps({k: v for k, v in target.items() if k != 'requested'})}.", "",
             "| model | runtime | batch | fp32 p50 ms | int8 p50 ms | int8 speed-up (min–max) | fp32 / int8 KiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        fp, q = PAIRS[r["runtime"]]
        size = runs[r["model"]]["bytes"]
        lines.append(f"| {r['model']} | {r['runtime']} | {r['batch']} | {r['fp32_p50_ms']:.3f} | {r['int8_p50_ms']:.3f} | "
                     f"**{r['int8_speedup']:.2f}x** ({r['speedup_min']:.2f}–{r['speedup_max']:.2f}) | "
                     f"{size[fp] / 1024:.0f} / {size[q] / 1024:.0f} |")
    save("int8_speed", doc, "\n".join(lines))


if __name__ == "__main__":
    import numpy as np

    rows, runs = [], {}
    for name in MODELS:
        run = OUT / name
        rx.convert(random_model(name), run=run, force=True, format="all", quantize="none").check()
        rx.convert(run=run, format="all", quantize="int8", calib_samples=50).check()
        man = json.loads((run / "manifest.json").read_text())
        kinds = [k for pair in PAIRS.values() for k in pair]
        runs[name] = {"run": str(run.relative_to(ROOT)), "bytes": {k: man["artifacts"][k]["bytes"] for k in kinds},
                      "onnx_int8_target_cpu": man["artifacts"]["onnx-int8"].get("target_cpu")}
        images = np.random.default_rng(0).random((128, 28, 28, 1), dtype=np.float32)
        rows += [{"model": name, **r} for r in measure(run, images)]
        print(name, "done", flush=True)
        write(rows, runs)  # after each model, so a partial run is saved
