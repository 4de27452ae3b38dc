"""Issue 18: do keras.applications families convert to every kind, with files every consumer accepts?

For MobileNetV2, MobileNetV3Small, EfficientNetB0, EfficientNetV2B0, ResNet50, DenseNet121 and
ConvNeXtTiny (weights=None, 32x32x3, 10 classes): train one brief epoch on real Fashion-MNIST
(padded to 32x32, grey replicated to RGB, raw 0..255 pixels), then, each step in its own
`python -m exporter` process, `convert --format all --quantize all --scale raw` and `validate`.
Recorded per kind: made or not (with the reason), the ONNX graph inputs, the write-time conformance
record, validate's verdict and numbers, and for ONNX kinds a second consumer: onnx's reference
evaluator against ONNX Runtime on 2 test images.

A brief epoch leaves these models unsure of many images (near-ties), so quantised kinds may miss
their agreement gates: the point here is that every kind is made, is valid, and gets a verdict.

Writes results/applications_sweep.{json,md}. Usage: python benchmarks/applications_sweep.py [Family ...]
(~25 min on 2 shared cores)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, fmnist_rgb32_npz, machine, save

import numpy as np  # noqa: E402

FAMILIES = ["MobileNetV2", "MobileNetV3Small", "EfficientNetB0", "EfficientNetV2B0", "ResNet50", "DenseNet121",
            "ConvNeXtTiny"]
KINDS = ["tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "onnx-fp32", "onnx-fp16", "onnx-int8"]
SHAPE = (32, 32, 3)
TRAIN, TEST, CALIB = 1000, 500, 100


def dataset_npz(folder: Path) -> Path:
    return fmnist_rgb32_npz(folder / "fmnist32rgb.npz", train_limit=TRAIN, test_limit=TEST)


def train(family: str, npz: Path, out: Path) -> dict:
    import keras

    keras.utils.set_random_seed(0)
    with np.load(npz) as d:
        x, y, xt, yt = d["x_train"].astype(np.float32), d["y_train"], d["x_test"].astype(np.float32), d["y_test"]
    model = getattr(keras.applications, family)(weights=None, input_shape=SHAPE, classes=10)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x, y, batch_size=50, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    acc = float((model.predict(xt, batch_size=100, verbose=0).argmax(1) == yt).mean())
    model.save(out)
    keras.backend.clear_session()
    return {"params": int(model.count_params()), "train_seconds": round(seconds, 1), "test_accuracy": acc}


# On the CLI, each step in its own process, not exporter.api: what is recorded is what a user of `resexport` sees
# per family (the exit code and the one-line error), and a converter that crashes natively on one
# keras.applications family (or holds gigabytes of graph) must not take the sweep down with it.
def resexport(*args) -> tuple[int, str, float]:
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "exporter", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=3600)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    return p.returncode, lines[-1] if lines else "", time.perf_counter() - start


def second_consumer(path: Path, x: np.ndarray) -> dict:
    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    proto = onnx.load(str(path))
    inits = {t.name for t in proto.graph.initializer}
    inputs = [v.name for v in proto.graph.input if v.name not in inits]
    onnx.checker.check_model(proto, full_check=True)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 19 and any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
        from onnx import version_converter  # the reference evaluator implements (De)QuantizeLinear from 19

        proto = version_converter.convert_version(proto, 19)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    ref = ReferenceEvaluator(proto).run(None, {"image": x})[0]
    return {"inputs": inputs, "checker_full": True, "ref_eval_seconds": round(time.perf_counter() - start, 1),
            "ref_eval_vs_ort_max_abs_diff": float(np.abs(ref - sess.run(None, {"image": x})[0]).max())}


def sweep_one(family: str, npz: Path, work: Path) -> dict:
    model = work / f"{family}.keras"
    run = work / "runs" / family
    if (run / "validation.json").is_file():  # SWEEP_REUSE: a run an interrupted sweep finished
        return finish(family, npz, run, {"family": family, "params": None, "train_seconds": None,
                                         "convert": {"exit": None}, "validate": {"exit": None}, "reused": True})
    rec = {"family": family, **train(family, npz, model)}
    code, last, seconds = resexport("convert", "--model", model, "--data", npz, "--scale", "raw", "--run", run,
                                    "--format", "all", "--quantize", "all", "--calib-samples", CALIB)
    rec["convert"] = {"exit": code, "seconds": round(seconds, 1), **({"error": last} if code else {})}
    code, last, seconds = resexport("validate", "--run", run, "--json")
    rec["validate"] = {"exit": code, "seconds": round(seconds, 1), **({"error": last} if code not in (0, 4) else {})}
    return finish(family, npz, run, rec)


def finish(family: str, npz: Path, run: Path, rec: dict) -> dict:
    man = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").is_file() else {"artifacts": {}}
    val = json.loads((run / "validation.json").read_text()) if (run / "validation.json").is_file() else {}
    verdicts = {r["kind"]: r for r in val.get("artifacts", [])}
    with np.load(npz) as d:
        x = d["x_test"][:1].astype(np.float32)
    kinds = {}
    for kind in KINDS:
        entry = man["artifacts"].get(kind)
        v = verdicts.get(kind, {})
        k = {"made": entry is not None,
             "export_failure": (man.get("export_failures", {}).get(kind) or {}).get("reason"),
             "verdict": None if not v else ("pass" if v["passed"] else "fail"), "failures": v.get("failures", []),
             "agreement": v.get("agreement"), "max_abs_diff": v.get("max_abs_diff"),
             "bytes": entry and entry["bytes"]}
        if entry:
            conf = entry.get("conformance", {})
            k["conformance"] = {key: conf.get(key) for key in ("opset", "ir_version", "interpreter", "inputs", "outputs")
                                if conf.get(key) is not None}
            if kind.startswith("onnx"):
                try:
                    k["second_consumer"] = second_consumer(run / entry["file"], x)
                except Exception as exc:  # recorded, never hidden
                    k["second_consumer"] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"}
        kinds[kind] = k
    rec["kinds"] = kinds
    rec["reference_near_ties_percent"] = val.get("reference", {}).get("near_ties_percent")
    rec["test_accuracy"] = val.get("reference", {}).get("accuracy")
    if rec["validate"]["exit"] is None and verdicts:
        rec["validate"]["exit"] = 0 if val.get("passed") else 4
    return rec


def cell(k: dict) -> str:
    if not k["made"]:
        return "not made: " + (k["export_failure"] or "?")[:60]
    if k["verdict"] is None:
        return "no verdict"
    text = "pass" if k["verdict"] == "pass" else f"FAIL ({k['agreement']:.1f}%)" if k.get("agreement") is not None \
        else "FAIL (" + "; ".join(k["failures"])[:50] + ")"
    sc = k.get("second_consumer")
    if sc:
        text += f", {len(sc.get('inputs', []))} input" if "inputs" in sc else ", 2nd reader error"
    return text


def markdown(doc: dict) -> str:
    env = doc["machine"]
    lines = ["# keras.applications sweep (issue 18)", "",
             f"Machine: {env['cpu']} ({env['cores']} cores, shared with other jobs). weights=None, 32x32x3, 10 classes, "
             f"one epoch on {TRAIN} real Fashion-MNIST images (padded to 32x32, RGB, raw 0..255, `--scale raw`); "
             f"`convert --format all --quantize all --calib-samples {CALIB}`, then `validate` on {TEST} test images. "
             "Each cell: validate's verdict (agreement with Keras when it failed) and, for ONNX, the number of graph "
             "inputs. Every file passed the write-time conformance gate (ONNX full checker + strict shape "
             "inference + signature; TFLite LiteRT load + allocate + signature).", "",
             *([doc["note"], ""] if doc.get("note") else []),
             "| family | params | test acc | near-ties | convert exit | validate exit | " + " | ".join(KINDS) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---|" * len(KINDS)]
    for r in doc["results"]:
        params = f"{r['params'] / 1e6:.1f} M" if r.get("params") else "–"
        lines.append(f"| {r['family']} | {params} | {100 * r['test_accuracy']:.1f}% | "
                     f"{r['reference_near_ties_percent'] or 0:.0f}% | {r['convert']['exit'] if r['convert']['exit'] is not None else '0 (log)'} | {r['validate']['exit']} | "
                     + " | ".join(cell(r["kinds"][k]) for k in KINDS) + " |")
    lines += ["", "Second ONNX consumer (onnx.reference.ReferenceEvaluator vs ONNX Runtime, 1 test image, max |diff| of "
              "outputs):", "", "| family | " + " | ".join(k for k in KINDS if k.startswith("onnx")) + " |",
              "|---|" + "---:|" * 3]
    for r in doc["results"]:
        cells = []
        for k in (k for k in KINDS if k.startswith("onnx")):
            sc = r["kinds"][k].get("second_consumer") or {}
            cells.append(f"{sc['ref_eval_vs_ort_max_abs_diff']:.1e}" if "ref_eval_vs_ort_max_abs_diff" in sc
                         else sc.get("error", "–")[:60])
        lines.append(f"| {r['family']} | " + " | ".join(cells) + " |")
    fails = [(r["family"], k, "; ".join(v["failures"])) for r in doc["results"] for k, v in r["kinds"].items()
             if v["verdict"] == "fail"]
    if fails:
        lines += ["", "Failed verdicts, in full:", ""] + [f"- {f} {k}: {why}" for f, k, why in fails]
    return "\n".join(lines)


def main() -> None:
    families = sys.argv[1:] or FAMILIES
    results = []
    reuse = os.environ.get("SWEEP_REUSE")  # the work folder of an interrupted sweep: finished runs are read back
    with (contextlib.nullcontext(reuse) if reuse else tempfile.TemporaryDirectory(prefix="resexport-sweep-")) as tmp:
        work = Path(tmp)
        npz = dataset_npz(work)
        for family in families:
            start = time.perf_counter()
            rec = sweep_one(family, npz, work)
            rec["seconds"] = round(time.perf_counter() - start, 1)
            results.append(rec)
            print(f"{family}: convert exit {rec['convert']['exit']}, validate exit {rec['validate']['exit']}, "
                  f"{rec['seconds']} s", flush=True)
    doc = {"machine": machine(), "families": families, "train_images": TRAIN, "test_images": TEST,
           "calibration": CALIB, "results": results}
    if sys.argv[1:]:  # some families: added to (or replacing their rows in) the committed results
        doc = _merged(doc)
    save("applications_sweep", doc, markdown(doc))


def _merged(doc: dict) -> dict:
    """The committed results with this invocation's families replaced or added (rows keep their own
    machine record, so rows measured in different runs say so)."""
    path = ROOT / "benchmarks" / "results" / "applications_sweep.json"
    old = json.loads(path.read_text()) if path.is_file() else {"results": []}
    for rec in doc["results"]:
        rec["measured_in_run"] = {"machine": doc["machine"], "families": doc["families"]}
    new = {r["family"]: r for r in doc["results"]}
    rows = {r["family"]: r for r in old.get("results", []) if r["family"] not in new} | new
    ordered = [rows[f] for f in FAMILIES if f in rows]
    note = (old.get("note", "") + f" {', '.join(new)} measured in a later invocation "
            "(python benchmarks/applications_sweep.py FAMILY; its machine is in the row).").strip()
    return {**old, **{k: v for k, v in doc.items() if k != "results"}, "families": [r["family"] for r in ordered],
            "results": ordered, "note": note}


if __name__ == "__main__":
    main()
