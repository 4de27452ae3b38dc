"""Issue 20: does int8 keep its accuracy, and what does each remedy cost? For each model (trained
briefly on real Fashion-MNIST: 2 epochs on a stratified 12,000-image slice, BatchNorm momentum 0.9,
like seed 003's short runs) and each remedy of `convert --quantize int8 --int8 R` (ptq, qat,
fallback, auto) and runtime (tflite-int8, onnx-int8): test-set accuracy, drop and agreement against
the Keras original and the gate verdict (`validate` on all 10,000 test images), file size, p50 at
batch 1 and the speed-up over fp32 in the same run (`bench`), the remedy's wall time, and the
hold-out judgement the remedy recorded. Writes results/int8_fidelity.{json,md}.

Two models are written the way a user writes them, outside our model zoo, and imported with
`convert --model`:
- mobilenetv2: Input (28, 28, 1) -> Resizing(32, 32) -> keras.applications.MobileNetV2 (alpha 0.35,
  weights=None, ReLU6, depthwise) -> Dense logits; 3 epochs on 12,000 images, BN momentum 0.9;
- efficientnetb0: raw 0..255 RGB (Fashion-MNIST padded to 32x32, grey replicated, an .npz of 30,000
  training and the 10,000 test images) -> keras.applications.EfficientNetB0 (its own Rescaling and
  Normalization inside, the Normalization adapted on the training images; swish, squeeze-excite)
  -> Dense softmax; 4 epochs on 20,000 images, BN momentum 0.9.

Usage: python benchmarks/int8_fidelity.py [--fresh | --redo] [model ...]   (default: residual12 plain12 resmini)
Rows already measured (artifacts/int8-fidelity/partial.json, else the committed results) are kept
unless --fresh (drop every row) or --redo (drop the named models' rows and measure them again, e.g.
after the remedies changed), so models can be added one invocation at a time (~12 min a model on 2 shared cores; efficientnetb0 ~40 min)."""

import json
import shutil
import sys
import time

from _common import ROOT, USER_MODELS, machine, save, user_model

import resexport as rx

FRESH = "--fresh" in sys.argv
REDO = "--redo" in sys.argv
MODELS = tuple(a for a in sys.argv[1:] if a not in ("--fresh", "--redo")) or ("residual12", "plain12", "resmini")
REMEDIES = ("ptq", "qat", "fallback", "auto")
INT8 = ("tflite-int8", "onnx-int8")
FP32 = ("tflite-fp32", "onnx-fp32")
OUT = ROOT / "artifacts" / "int8-fidelity"


from exporter.cpuinfo import physical_cores  # noqa: E402


def _where(m: dict) -> dict:
    """The machine a model's rows were measured on (rows of several sessions share one table)."""
    return {"cpu": m.get("cpu"), "cores": m.get("cores"), "int8_isa": (m.get("cpu_int8") or {}).get("summary")}

threads = physical_cores()
rows, models = [], {}
PARTIAL = OUT / "partial.json"
COMMITTED = ROOT / "benchmarks" / "results" / "int8_fidelity.json"
if not FRESH and (PARTIAL.is_file() or COMMITTED.is_file()):  # add to what was measured (here or committed)
    old = json.loads((PARTIAL if PARTIAL.is_file() else COMMITTED).read_text())
    rows, models = old["rows"], old["models"]
    for m in models.values():
        m.setdefault("machine", _where(old["machine"]))
    if REDO:
        rows = [r for r in rows if r["model"] not in MODELS]
OUT.mkdir(parents=True, exist_ok=True)
done = {(r["model"], r["remedy"]) for r in rows}
for name in MODELS:
    base = OUT / name
    if not (base / "manifest.json").is_file():
        t0 = time.perf_counter()
        if name in USER_MODELS:
            path, extra = user_model(name, OUT / "user-models")
            rx.convert(path, run=base, format="all", quantize="none", **extra).check()
        else:
            rx.train(model=name, epochs=2, train_limit=12000, bn_momentum=0.9, run=base, force=True)
        models[name] = {"train_seconds": round(time.perf_counter() - t0, 1)}
    models.setdefault(name, {})
    models[name]["machine"] = _where(machine())
    if not all((base / f).exists() for f in ("model_fp32.tflite", "model.onnx")):
        rx.convert(run=base, format="all", quantize="none").check()
    for remedy in REMEDIES:
        if (name, remedy) in done:
            continue
        run = OUT / f"{name}-{remedy}"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(base, run)
        t0 = time.perf_counter()
        rx.convert(run=run, format="all", quantize="int8", int8=remedy, force=True).check()
        wall = round(time.perf_counter() - t0, 1)
        val = rx.validate(run, artifacts=(*FP32, *INT8)).report  # a failed gate is reported, not an error
        bench = rx.bench(run, artifacts=(*FP32, *INT8), batches=(1,), threads=threads, reference=False, min_time=1,
                         min_runs=10, warmup=3).report
        man = json.loads((run / "manifest.json").read_text())
        p50 = {r["kind"]: r["p50_ms"] for r in bench["results"]}
        vals = {r["kind"]: r for r in val["artifacts"]}
        models[name]["keras_accuracy"] = val["reference"]["accuracy"]
        for kind in INT8:
            entry, v = man["artifacts"][kind], vals[kind]
            fp32 = "tflite-fp32" if kind.startswith("tflite") else "onnx-fp32"
            rows.append({
                "model": name, "remedy": remedy, "kind": kind, "chosen": entry.get("chosen", entry.get("int8")),
                "accuracy": v["accuracy"], "drop_points": -v["change_points"], "agreement": v["agreement"],
                "passed": v["passed"], "failures": v["failures"], "bytes": entry["bytes"],
                "fp32_bytes": man["artifacts"][fp32]["bytes"], "float_layers": len(entry.get("float_layers") or []),
                "p50_ms": p50[kind], "fp32_p50_ms": p50[fp32], "speedup": round(p50[fp32] / p50[kind], 2),
                "remedy_seconds_both_kinds": wall, "kind_seconds": entry.get("seconds"),
                "holdout": (entry.get("ladder") or [{}])[0].get("verdict") if remedy == "auto" else None,
                "ladder": [{k: s.get(k) for k in ("remedy", "on", "passed", "bytes", "seconds", "skipped")}
                           for s in entry.get("ladder") or []],
                "fallback_on": entry.get("fallback_on"),
                "qat": {k: (entry.get("qat") or {}).get(k) for k in ("steps", "lr", "images", "seconds", "passed")}
                if entry.get("qat") else None,
                "fallback_chosen": (entry.get("fallback_search") or {}).get("chosen"),
            })
        print(name, remedy, "done", flush=True)
        doc = {"machine": machine(), "threads": threads, "models": models, "rows": rows,
               "note": "2-core shared machine (other engineers' jobs ran at the same time): timings are noisy; "
                       "ratios within one run only"}
        PARTIAL.write_text(json.dumps(doc, indent=2, default=str))

rows.sort(key=lambda r: ([m for m in dict.fromkeys([*models, *MODELS])].index(r["model"]),
                         REMEDIES.index(r["remedy"]), r["kind"]))
pure = {(r["model"], r["kind"]): r for r in rows if r["remedy"] == "ptq"}
lines = ["# int8 fidelity: remedies per model and runtime (`python benchmarks/int8_fidelity.py`)", "",
         f"Machine: {machine().get('cpu')} ({threads} threads), shared with other jobs: timings are noisy. "
         "Accuracy, drop, agreement and gate from `validate` on the 10,000 Fashion-MNIST test images; p50 at batch 1 "
         "from `bench`; size and speed-up relative to the pure-int8 (ptq) file and to fp32 of the same run.", "",
         "| model (Keras acc.) | remedy | kind | chosen | acc. | drop pt | agree % | gate | KiB | x ptq size | p50 ms | "
         "x fp32 | % of ptq speed-up | remedy s |", "|" + "---|" * 14]
for r in rows:
    p = pure[(r["model"], r["kind"])]
    chosen = f"{r['chosen']} on {r['fallback_on']}" if r.get("fallback_on") and r["chosen"] == "fallback" else r["chosen"]
    lines.append(f"| {r['model']} ({100 * models[r['model']]['keras_accuracy']:.2f}%) | {r['remedy']} | {r['kind']} | "
                 f"{chosen} | {100 * r['accuracy']:.2f} | {r['drop_points']:.2f} | {r['agreement']:.2f} | "
                 f"{'pass' if r['passed'] else 'FAIL'} | {r['bytes'] / 1024:.0f} | {r['bytes'] / p['bytes']:.2f} | "
                 f"{r['p50_ms']:.3f} | {r['speedup']:.2f} | {100 * r['speedup'] / p['speedup']:.0f} | "
                 f"{r['remedy_seconds_both_kinds']} |")
lines += ["", "remedy s: wall time of `convert --quantize int8 --int8 R` making both kinds (qat: one fine-tuning "
          "shared by both; auto: the ladder until the first pass). chosen 'fallback on qat': float layers kept "
          "on top of the fine-tuned model (auto only).", "",
          "Models: residual12, plain12, resmini, residual20 from `resexport train` (2 epochs on 12,000 images, "
          "BN momentum 0.9); mobilenetv2 and efficientnetb0 written as users write them and imported with "
          "`convert --model` (recipes in the script's docstring). Where each model's rows were measured:", ""]
lines += [f"- {name}: {m.get('machine', {}).get('cpu')}, {m.get('machine', {}).get('cores')} cores, int8 ISA "
          f"{m.get('machine', {}).get('int8_isa')}" for name, m in models.items()]
save("int8_fidelity", {"machine": machine(), "threads": threads, "models": models, "rows": rows,
                       "note": "2-core shared machine: timings noisy"}, "\n".join(lines))
