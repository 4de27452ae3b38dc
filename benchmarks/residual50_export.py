"""Issue 5: convert and validate the residual-50 from the depth study (all seven kinds, full test
set), then bench fp32 vs int8 vs Keras in one run. residual50 has 4.3M parameters and 37x the
FLOPs of the default resmini (286 vs 7.7 MFLOP per image), so it also answers whether int8 pays
off once compute dominates (issue 4's int8 goal was missed on resmini). Writes
results/<model>_export.* (any run from the study can be passed).

Usage: python benchmarks/residual50_export.py [RUN]   (default: artifacts/depth-cpu-reduced/runs/residual50)"""

import json
import sys
from pathlib import Path

from _common import ROOT, machine, model_flops, save

import resexport as rx

run = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "artifacts" / "depth-cpu-reduced" / "runs" / "residual50"
if not (run / "manifest.json").is_file():
    sys.exit(f"{run} missing: run benchmarks/depth_cpu_reduced.py first")

rx.convert(run=run, format="all", quantize="all").check()
val_exit = 0 if rx.validate(run).passed else 4  # what `resexport validate` exits with (4: a gate failed)
rx.bench(run, batches=(1, 64), min_time=2, min_runs=30)
man = json.loads((run / "manifest.json").read_text())
val = json.loads((run / "validation.json").read_text())
ben = json.loads((run / "bench.json").read_text())
import keras  # noqa: E402

flops = model_flops(keras.saving.load_model(run / man["model"]["file"]))
doc = {"flops_per_image": flops, "run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run), "model": man["model"], "training": man["training"],
       "validate_exit_code": val_exit, "validation": val, "bench": ben["results"], "machine": machine()}

p50 = {(r["kind"], r.get("mode"), r["batch"]): r["p50_ms"] for r in ben["results"]}
name = man["model"]["name"]
lines = [f"# {name} from the depth study: export, validation, bench ({doc['machine']['cpu']}, "
         f"{doc['machine']['cores']} cores, one run)", "",
         f"Model: `{name}`, {man['model']['params']:,} params, {flops / 1e6:.1f} MFLOP per image, Keras test accuracy "
         f"{100 * man['training']['test_accuracy']:.2f}% (reduced CPU training: see depth-cpu-reduced/depth.md). "
         f"`resexport validate` exit code: {val_exit}.", "",
         "| kind | bytes | accuracy | Δ pt | agreement | agreement without near-ties | max abs diff | gate | p50 ms b=1 | "
         "p50 ms b=64 | vs Keras predict b=1 |",
         "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
speed = {(r["kind"], r.get("mode"), r["batch"]): r["speedup_vs_keras_predict"] for r in ben["results"]}
for a in val["artifacts"]:
    k = a["kind"]
    lines.append(f"| {k} | {a['bytes']:,} | {100 * a['accuracy']:.2f}% | {a['change_points']:+.2f} | "
                 f"{a['agreement']:.2f}% | {a['agreement_without_near_ties']:.2f}% | {a['max_abs_diff']:.1e} | {'pass' if a['passed'] else 'FAIL'} | "
                 f"{p50.get((k, None, 1), float('nan')):.3f} | {p50.get((k, None, 64), float('nan')):.2f} | "
                 f"{speed.get((k, None, 1), float('nan')):.0f}x |")
for mode in ("predict", "compiled"):
    lines.append(f"| keras ({mode}) | {man['model']['bytes']:,} | | | | | | | {p50.get(('keras', mode, 1), float('nan')):.3f} | "
                 f"{p50.get(('keras', mode, 64), float('nan')):.2f} | |")
near = val["artifacts"][0]["near_ties_percent"]
lines += ["", f"Near-ties: the {near:.1f}% of test images where the Keras model's top two probabilities are < 0.05 "
          "apart (reported, not gated).", ""]
for fmt in ("tflite", "onnx"):
    for b in (1, 64):
        fp32, int8 = p50.get((f"{fmt}-fp32", None, b)), p50.get((f"{fmt}-int8", None, b))
        if fp32 and int8:
            lines.append(f"- {fmt}-int8 at batch {b}: **{fp32 / int8:.2f}x** the speed of {fmt}-fp32 (goal >= 1.3x)")
save(f"{name}_export", doc, "\n".join(lines))
