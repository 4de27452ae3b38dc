"""Issue 32: PTQ vs label-QAT vs distilled QAT, each judged against the ORIGINAL model.

For each model and each remedy -- `ptq`, `qat-labels` (`--int8 qat --qat-loss labels`: fine-tuned on the
labels, a retrained model) and `qat-distill` (`--int8 qat`, the default: the original's own outputs are
the target) -- and each int8 kind (tflite-int8, onnx-int8): test-set accuracy, the drop and the top-1
agreement against the user's model (`validate` on all 10,000 Fashion-MNIST test images), whether that
passes the kind's int8 gates against the original (the same gates PTQ files meet), the agreement with the
fine-tuned model (QAT), the class whose accuracy moved most, file size (and x the PTQ file), p50 at batch 1
and the speed-up over fp32 of the same run (`bench`), and the remedy's wall time (both kinds).
Writes results/qat_distill.{json,md} with the machine it ran on.

Models: `resmini-fixture` (the committed tests/fixtures/resmini_fmnist.keras, imported: no training; the
quickest row), registry names trained as benchmarks/int8_fidelity.py trains them (2 epochs on a stratified
12,000-image slice, BN momentum 0.9; its runs in artifacts/int8-fidelity/ are reused when present), and the
user-written keras.applications models of benchmarks/_common.py (mobilenetv2, efficientnetb0).

Usage: python benchmarks/qat_distill.py [--qat-epochs E] [model ...]
(default models: resmini-fixture residual12 plain12 residual20 mobilenetv2 efficientnetb0; the full set
takes well over an hour on 2 shared cores, residual12 ~10 min, resmini-fixture ~4 min). Rows already in
artifacts/qat-distill/partial.json are kept, so models can be added one invocation at a time."""

import json
import shutil
import sys
import time

from _common import ROOT, USER_MODELS, machine, save, user_model

import resexport as rx
from exporter import formats
from exporter.cpuinfo import physical_cores

args = sys.argv[1:]
QAT_EPOCHS = None
if "--qat-epochs" in args:
    i = args.index("--qat-epochs")
    QAT_EPOCHS = float(args[i + 1])
    del args[i: i + 2]
MODELS = tuple(args) or ("resmini-fixture", "residual12", "plain12", "residual20", "mobilenetv2", "efficientnetb0")
REMEDIES = {"ptq": dict(int8="ptq"), "qat-labels": dict(int8="qat", qat_loss="labels"),
            "qat-distill": dict(int8="qat", qat_loss="distill")}
INT8 = ("tflite-int8", "onnx-int8")
FP32 = ("tflite-fp32", "onnx-fp32")
OUT = ROOT / "artifacts" / "qat-distill"
FIDELITY = ROOT / "artifacts" / "int8-fidelity"
FIXTURE = ROOT / "tests" / "fixtures" / "resmini_fmnist.keras"
PARTIAL = OUT / "partial.json"

threads = physical_cores()
OUT.mkdir(parents=True, exist_ok=True)
doc = json.loads(PARTIAL.read_text()) if PARTIAL.is_file() else {"rows": [], "models": {}}
rows, models = doc["rows"], doc["models"]
done = {(r["model"], r["remedy"]) for r in rows}


def base_run(name: str):
    """The model's run with its fp32 files (made once)."""
    base = OUT / name
    if (FIDELITY / name / "manifest.json").is_file() and not (base / "manifest.json").is_file():
        shutil.copytree(FIDELITY / name, base)
    if not (base / "manifest.json").is_file():
        t0 = time.perf_counter()
        if name == "resmini-fixture":
            rx.convert(FIXTURE, run=base, format="all", quantize="none").check()
        elif name in USER_MODELS:
            path, extra = user_model(name, OUT / "user-models")
            rx.convert(path, run=base, format="all", quantize="none", **extra).check()
        else:
            rx.train(model=name, epochs=2, train_limit=12000, bn_momentum=0.9, run=base, force=True)
        models.setdefault(name, {})["prepare_seconds"] = round(time.perf_counter() - t0, 1)
    if not all((base / f).exists() for f in ("model_fp32.tflite", "model.onnx")):
        rx.convert(run=base, format="all", quantize="none").check()
    return base


def _stem(stem: dict | None) -> dict | None:
    """What the float-stem step did (exporter.quantize.qat.FLOAT_STEM_TRIGGER): held-back agreements, layers kept float."""
    if not stem:
        return None
    return {k: stem.get(k) for k in ("full_int8_held_back_agreement", "held_back_agreement", "kept", "layers",
                                     "float_weights", "weights", "why")}


for name in MODELS:
    base = base_run(name)
    m = models.setdefault(name, {})
    m["machine"] = {k: machine().get(k) for k in ("cpu", "cores")}
    for remedy, flags in REMEDIES.items():
        if (name, remedy) in done:
            continue
        run = OUT / f"{name}-{remedy}"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(base, run)
        t0 = time.perf_counter()
        rx.convert(run=run, format="all", quantize="int8", force=True,
                   **({"qat_epochs": QAT_EPOCHS} if QAT_EPOCHS and remedy != "ptq" else {}), **flags).check()
        wall = round(time.perf_counter() - t0, 1)
        val = rx.validate(run, artifacts=(*FP32, *INT8), runtimes=None).report
        bench = rx.bench(run, artifacts=(*FP32, *INT8), batches=(1,), threads=threads, reference=False, min_time=1,
                         min_runs=10, warmup=3).report
        man = json.loads((run / "manifest.json").read_text())
        p50 = {r["target"]: r["p50_ms"] for r in bench["results"]}
        vals = {r.get("target", r["kind"]): r for r in val["artifacts"]}
        m["keras_accuracy"] = val["reference"]["accuracy"]
        for kind in INT8:
            entry, v = man["artifacts"][kind], vals[kind]
            gates = formats.get(kind).gates
            with_original = v.get("agreement_with_original", v["agreement"])
            drop = -v["change_points"]
            passes = with_original >= gates.min_agreement and drop <= gates.max_drop and v["finite"]
            fp32 = "tflite-fp32" if kind.startswith("tflite") else "onnx-fp32"
            moved = (v.get("moved_most") or [{}])[0]
            rows.append({
                "model": name, "remedy": remedy, "kind": kind, "accuracy": v["accuracy"], "drop_points": drop,
                "agreement_with_original": with_original, "agreement_with_fine_tuned": v.get("agreement_with_fine_tuned"),
                "passes_against_original": bool(passes), "validate_passed": v["passed"],
                "gated_against": v.get("agreement_reference", "model"), "moved_most": moved,
                "bytes": entry["bytes"], "p50_ms": p50.get(kind), "fp32_p50_ms": p50.get(fp32),
                "speedup": round(p50[fp32] / p50[kind], 2) if p50.get(kind) and p50.get(fp32) else None,
                "remedy_seconds_both_kinds": wall,
                "qat": {k: (entry.get("qat") or {}).get(k) for k in ("loss", "steps", "images", "seconds", "passed")}
                | {"float_stem": _stem(entry["qat"].get("float_stem"))} if entry.get("qat") else None})
        print(name, remedy, "done", flush=True)
        PARTIAL.write_text(json.dumps({"machine": machine(), "threads": threads, "models": models, "rows": rows},
                                      indent=2, default=str))

def _stem_note(r) -> str:
    stem = (r.get("qat") or {}).get("float_stem") or {}
    return f", first {len(stem['layers'])} layers float32" if stem.get("kept") else ""


order = list(dict.fromkeys([*models, *MODELS]))
rows.sort(key=lambda r: (order.index(r["model"]), list(REMEDIES).index(r["remedy"]), r["kind"]))
pure = {(r["model"], r["kind"]): r for r in rows if r["remedy"] == "ptq"}
lines = ["# PTQ vs label-QAT vs distilled QAT, against the original (`python benchmarks/qat_distill.py`)", "",
         f"Machine: {machine().get('cpu')} ({threads} threads), shared with other jobs: timings are noisy. "
         "Accuracy, drop and agreement with the user's model from `validate` on the 10,000 Fashion-MNIST test images; "
         "'gates vs original': the kind's int8 gates (agreement and drop) applied against the original, as for a PTQ "
         "file; p50 at batch 1 from `bench`; size relative to the PTQ file of the same model."
         + (f" QAT: {QAT_EPOCHS} epoch(s) over its images." if QAT_EPOCHS else " QAT: its default 300 steps of 64."), "",
         "| model (Keras acc.) | remedy | kind | acc. | drop pt | agree vs original % | agree vs fine-tuned % | "
         "gates vs original | moved most | KiB | x ptq size | p50 ms | x fp32 | remedy s |", "|" + "---|" * 14]
for r in rows:
    p = pure.get((r["model"], r["kind"]))
    mm = r["moved_most"] or {}
    lines.append(
        f"| {r['model']} ({100 * models[r['model']]['keras_accuracy']:.2f}%) | {r['remedy']}{_stem_note(r)} | {r['kind']} | "
        f"{100 * r['accuracy']:.2f} | {r['drop_points']:.2f} | {r['agreement_with_original']:.2f} | "
        f"{'–' if r['agreement_with_fine_tuned'] is None else format(r['agreement_with_fine_tuned'], '.2f')} | "
        f"{'pass' if r['passes_against_original'] else 'FAIL'} | "
        f"{mm.get('class', '–')} {format(mm['change_points'], '+.1f') if mm else ''} | {r['bytes'] / 1024:.0f} | "
        f"{r['bytes'] / p['bytes']:.2f} | {r['p50_ms']:.3f} | {r['speedup']:.2f} | {r['remedy_seconds_both_kinds']} |"
        if p else f"| {r['model']} | {r['remedy']} | {r['kind']} | (no ptq row) |")
stems = [(r["model"], r["qat"]["float_stem"]) for r in rows
         if r["remedy"] == "qat-distill" and r["kind"] == "tflite-int8" and (r.get("qat") or {}).get("float_stem")]
if stems:
    lines += ["", "Float stem (`--qat-float-stem auto`, the default): the full-int8 fine-tuning's best top-1 agreement "
              "with the original on the held-back fine-tuning images; below 97.5% it is run again with the first layers "
              "float32 (at most 1.5% of the weights) and kept if it agrees more there.", ""]
    for name, st in stems:
        lines.append(f"- {name}: full int8 {st['full_int8_held_back_agreement']:.2f}%"
                     + (f"; with the first {len(st['layers'])} layers float32 ({st['float_weights']:,} of "
                        f"{st['weights']:,} weights) {st['held_back_agreement']:.2f}%, kept" if st.get("kept") else
                        f"; {st.get('why')}") + (f": {', '.join(st['layers'])}" if st.get("kept") else ""))
lines += ["", "Where each model's rows were measured:", ""]
lines += [f"- {n}: {mm.get('machine', {}).get('cpu')}, {mm.get('machine', {}).get('cores')} cores" for n, mm in models.items()]
save("qat_distill", {"machine": machine(), "threads": threads, "qat_epochs": QAT_EPOCHS, "models": models, "rows": rows,
                     "note": "2-core shared machine: timings noisy"}, "\n".join(lines))
