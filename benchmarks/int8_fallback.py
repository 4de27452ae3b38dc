"""Issue 13: a model that fails the int8 gate, passing with `convert --fallback auto`. plain12 (seed
003's plain net: Conv-ReLU-BN, the BN cannot fold) trained briefly like the reduced depth study
(9,000 training images, 2 epochs = 120 steps, lr 1e-3, BN momentum 0.9), converted to fp32 and
plain int8 in one run and to int8 with --fallback auto in a copy, all validated on the full test set
and benched at batch 1 and 32 with the same explicit threads. Records how many layers stayed float
and what that cost in size and latency. Writes results/int8_fallback.{json,md}.

Usage: python benchmarks/int8_fallback.py   (~8 min on 2 cores)"""

import json
import shutil

from _common import ROOT, machine, save

import resexport as rx

BASE = ROOT / "artifacts" / "int8" / "plain12"
FALLBACK = ROOT / "artifacts" / "int8" / "plain12-fallback"
TRAIN = dict(model="plain12", recipe="seed", epochs=2, lr=1e-3, bn_momentum=0.9, train_limit=9000)
KINDS = ("tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8")


def validated(run, kinds) -> tuple[int, dict]:
    """validate.json's content, and the exit code `resexport validate` would give (4: a gate failed)."""
    result = rx.validate(run, artifacts=kinds)
    return (0 if result.passed else 4), result.report


if not (BASE / "model.keras").is_file():
    rx.train(run=BASE, force=True, **TRAIN)
rx.convert(run=BASE, format="all", quantize="none").check()
rx.convert(run=BASE, format="all", quantize="int8", force=True).check()  # current int8 settings
plain_exit, plain = validated(BASE, KINDS)
if FALLBACK.exists():
    shutil.rmtree(FALLBACK)
FALLBACK.mkdir(parents=True)
for name in ("model.keras", "history.json", "manifest.json", "model_fp32.tflite", "model.onnx"):
    shutil.copy2(BASE / name, FALLBACK / name)
man = json.loads((FALLBACK / "manifest.json").read_text())
man["artifacts"] = {k: v for k, v in man["artifacts"].items() if k in ("tflite-fp32", "onnx-fp32")}
(FALLBACK / "manifest.json").write_text(json.dumps(man, indent=2))
rx.convert(run=FALLBACK, format="all", quantize="int8", fallback="auto").check()
fb_exit, fallback = validated(FALLBACK, ("tflite-int8", "onnx-int8"))
bench_options = rx.BenchOptions(batches=(1, 32), reference=False, min_time=2, min_runs=20)
bench_plain = rx.bench(BASE, options=bench_options, artifacts=KINDS).report
bench_fb = rx.bench(FALLBACK, options=bench_options, artifacts=("tflite-int8", "onnx-int8")).report

base_man = json.loads((BASE / "manifest.json").read_text())
fb_man = json.loads((FALLBACK / "manifest.json").read_text())
val = {("plain", r["kind"]): r for r in plain["artifacts"]} | {("fallback", r["kind"]): r for r in fallback["artifacts"]}
lat = {("plain", r["kind"], r["batch"]): r for r in bench_plain["results"]}
lat |= {("fallback", r["kind"], r["batch"]): r for r in bench_fb["results"]}
rows = []
for variant, kind in [("plain", k) for k in KINDS] + [("fallback", "tflite-int8"), ("fallback", "onnx-int8")]:
    entry = (fb_man if variant == "fallback" else base_man)["artifacts"][kind]
    v = val[(variant, kind)]
    rows.append({"variant": variant, "kind": kind, "bytes": entry["bytes"], "agreement": v["agreement"],
                 "change_points": v["change_points"], "passed": v["passed"],
                 "float_layers": len(entry.get("float_layers") or []) if variant == "fallback" else None,
                 "p50_ms_b1": lat[(variant, kind, 1)]["p50_ms"], "p50_ms_b32": lat[(variant, kind, 32)]["p50_ms"],
                 "threads": lat[(variant, kind, 1)]["threads"],
                 "io": [entry["inputs"][0]["dtype"], entry["outputs"][0]["dtype"]]})
quantised = {k: fb_man["artifacts"][k]["fallback_search"]["ranked_layers"] for k in ("tflite-int8", "onnx-int8")}
doc = {"model": "plain12", "train_flags": TRAIN, "keras_test_accuracy": plain["reference"]["accuracy"],
       "validate_exit_plain": plain_exit, "validate_exit_fallback": fb_exit, "rows": rows,
       "fallback": {k: {"float_layers": fb_man["artifacts"][k]["float_layers"], "quantised_layers": quantised[k],
                        "search": fb_man["artifacts"][k]["fallback_search"],
                        "target_cpu": fb_man["artifacts"][k].get("target_cpu")} for k in ("tflite-int8", "onnx-int8")},
       "machine": machine(), "note": "2-core machine shared with other processes while this ran"}
lines = [f"# int8 fallback on plain12 (Keras test accuracy {100 * plain['reference']['accuracy']:.2f}%)", "",
         "plain12 trained for 120 steps (9,000 images, 2 epochs, lr 1e-3, BN momentum 0.9). Agreement and accuracy "
         "change vs Keras on the 10,000 test images; `--fallback auto` measured only held-out TRAINING images "
         f"(2,000, disjoint from calibration and training). Latency: p50, {rows[0]['threads']} threads for every "
         "runtime, machine shared with other processes.", "",
         "| variant | kind | size KiB | agreement | Δ accuracy pt | gate | float layers | p50 ms b=1 | p50 ms b=32 | I/O |",
         "|---|---|---:|---:|---:|---|---:|---:|---:|---|"]
for r in rows:
    fl = "–" if r["float_layers"] is None else f"{r['float_layers']} of {quantised[r['kind']]}"
    lines.append(f"| {r['variant']} | {r['kind']} | {r['bytes'] / 1024:.0f} | {r['agreement']:.2f}% | {r['change_points']:+.2f} | "
                 f"{'pass' if r['passed'] else '**FAIL**'} | {fl} | {r['p50_ms_b1']:.3f} | {r['p50_ms_b32']:.2f} | {'/'.join(r['io'])} |")
lines += ["", "Float layers: TFLite counts op outputs kept float (denylisted_nodes: each chosen layer's op and the ops "
          "reading its output); ONNX counts nodes excluded from quantisation (nodes_to_exclude), out of the layers "
          "the ranking saw. Search trials (held-out agreement per float-set size):", ""]
for k in ("tflite-int8", "onnx-int8"):
    trials = doc["fallback"][k]["search"]["trials"]
    lines.append(f"- {k}: " + ", ".join(f"{t['float_set']} → {t['agreement']:.2f}%{' ✓' if t['passed'] else ''}" for t in trials))
save("int8_fallback", doc, "\n".join(lines))
