"""Issue 20, does the QAT simulation compute what the int8 files compute: how far each int8 FILE
drifts from the fake-quant Keras model it was converted from, with depth, op by op, and after
fine-tuning.

For each model of benchmarks/int8_fidelity.py (its runs under artifacts/int8-fidelity/, made there
first; residual12 is trained here the same way if missing):
- drift: the QAT rebuild, calibrated on 500 training images and not fine-tuned, converted to
  tflite-int8; every activation range's tensor read from the interpreter (preserve_all_tensors)
  and compared with the Keras simulation on 16 test images, in steps of that tensor's own scale
  (LSB); reported at the first, 25%, 50%, 75% and last matched tensor in execution order; and per
  op: the simulation fed the file's own values at every matched range, the share of each op's
  values a step or more off (what the simulation gets wrong itself, before any compounding);
- steps: QAT fine-tuned for N steps (batch 64, Adam 1e-4, on training images outside the
  calibration set), then on 5,000 test images: accuracy of the original, of the QAT model and of
  both files; agreement of each file with the QAT model (the first QAT claim, gated at 97%) and with
  the original; the QAT model's near-ties (top-2 probabilities < 0.05 apart); and the tflite file
  once more through LiteRT's built-in kernels without XNNPACK (BUILTIN_WITHOUT_DEFAULT_DELEGATES,
  what a device without the delegate runs), which round differently from the simulation.

Runs missing under artifacts/int8-fidelity/ are made the way int8_fidelity.py makes them (the user
models' recipes are in _common.user_model). Models not named keep their committed rows.

Writes results/qat_drift.{json,md}. Usage: python benchmarks/qat_drift.py [model ...] [--steps N ...]
(default: every model; 300 steps for residual12, 300 and 1500 for the mobile nets; ~15 min on 2
shared cores with --steps 300 once the runs exist, ~25 min more to train the three models)."""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

import json

from _common import ROOT, USER_MODELS, machine, save, user_model

import resexport as rx

import numpy as np  # noqa: E402

RUNS = ROOT / "artifacts" / "int8-fidelity"
PLAN = {"residual12": (300,), "mobilenetv2": (300, 1500), "efficientnetb0": (300, 1500)}
ARGS = sys.argv[1:]
STEPS = ARGS[ARGS.index("--steps") + 1:] if "--steps" in ARGS else []
NAMED = ARGS[:ARGS.index("--steps")] if "--steps" in ARGS else ARGS
if unknown := [n for n in NAMED if n not in PLAN]:
    sys.exit(f"unknown model {unknown[0]!r}: choose from {', '.join(PLAN)}")
if STEPS:  # the same step counts for every model
    PLAN = {name: tuple(int(a) for a in STEPS) for name in PLAN}
MODELS = tuple(NAMED) or tuple(PLAN)
TEST, CALIB = 5000, 500
COMMITTED = ROOT / "benchmarks" / "results" / "qat_drift.json"


def open_run(name: str):
    from exporter.run import open_for_run
    from exporter.run import Run

    run = RUNS / name
    if not (run / "manifest.json").is_file():  # made as int8_fidelity.py makes it
        if name in USER_MODELS:
            path, extra = user_model(name, RUNS / "user-models")
            rx.convert(path, run=run, format="tflite", quantize="none", **extra).check()
        else:
            rx.train(model=name, epochs=2, train_limit=12000, bn_momentum=0.9, run=run, force=True)
    run = Run.of(run)
    return run, open_for_run(run)


def drift(model, x_cal, x) -> list[dict]:
    """Per matched activation range, in execution order: mean and max |file - simulation| in LSB with
    the simulation run from the image (cumulative drift), and the share of values a step or more off
    when every op of the simulation is fed the file's own values at the matched ranges (per op)."""
    from ai_edge_litert.interpreter import Interpreter

    import keras

    from exporter.export import tflite as tfl
    from exporter.quantize import qat

    q, _ = qat.build_qat_model(model)
    qat.calibrate(q, x_cal)
    path = Path(tempfile.mkdtemp(prefix="qat-drift-")) / "m.tflite"
    tfl.export_qat_int8(q, path, tuple(q.input_shape[1:]))
    interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    scale, zero = inp["quantization"]
    ranges = qat.act_quant_layers(q)
    sims = keras.Model(q.input, [r.output for r in ranges]).predict(x, verbose=0)
    tensors = interp.get_tensor_details()
    matched = []
    for r, sim in zip(ranges, sims):
        producer = r._inbound_nodes[0].input_tensors[0]._keras_history[0].name
        stem = producer[:-2] if producer.endswith("_q") else producer
        step = qat.range_step(r)
        hits = [t for t in tensors if t["dtype"] == np.int8 and tuple(t["shape"][1:]) == sim.shape[1:]
                and t["quantization"][0] > 0 and abs(t["quantization"][0] / step - 1) < 0.02
                and re.search(rf"/({re.escape(stem)}|{re.escape(stem)}_q|{re.escape(r.name)})_\d+/", t["name"])]
        if hits:
            matched.append((r.name, hits[-1], sim, step))
    values = {name: [] for name, *_ in matched}
    for i in range(len(x)):
        interp.set_tensor(inp["index"], np.clip(np.round(x[i:i + 1] / scale + zero), -128, 127).astype(np.int8))
        interp.invoke()
        for name, t, _, _ in matched:
            s, z = t["quantization"]
            values[name].append((interp.get_tensor(t["index"]).astype(np.float32) - z) * s)
    values = {name: np.concatenate(v) for name, v in values.items()}
    # per op: walk the simulation's graph, replacing each matched range's output by the file's values
    env, per_op = {id(q.inputs[0]): x}, {}
    for op in q.operations:
        if isinstance(op, keras.layers.InputLayer):
            continue
        node = op._inbound_nodes[0]

        def sub(t):
            return env[id(t)] if keras.utils.is_keras_tensor(t) else t

        args = keras.tree.map_structure(sub, node.arguments.args)
        kwargs = {k: v for k, v in keras.tree.map_structure(sub, node.arguments.kwargs).items() if k != "training"}
        out = np.asarray(op(*args, **kwargs, **({"training": False} if "Random" in type(op).__name__ else {})))
        if op.name in values:
            got = values[op.name].reshape(out.shape)
            per_op[op.name] = float((np.abs(out - got) / qat.range_step(op) > 0.5).mean())
            out = got
        env[id(node.outputs[0])] = out
    return [{"tensor": name, "mean_lsb": float(np.mean(np.abs(values[name] - sim) / step)),
             "max_lsb": float(np.max(np.abs(values[name] - sim) / step)), "per_op_off": per_op.get(name)}
            for name, _, sim, step in matched] + [{"ranges": len(ranges), "matched": len(matched)}]


def fine_tuned(model, x_cal, x_train, y_train, x, y, steps: int, convention: str) -> dict:
    from exporter.export import onnx as onx
    from exporter.export import tflite as tfl
    from exporter.outputs import to_probabilities
    from exporter.quantize import qat
    from exporter.runtimes import load_runner

    q, _ = qat.build_qat_model(model)
    qat.calibrate(q, x_cal)
    t0 = time.perf_counter()
    qat.fine_tune(q, x_train, y_train, epochs=100, steps=steps, batch_size=64, lr=1e-4, output=convention)
    seconds = time.perf_counter() - t0
    sim = q.predict(x, batch_size=256, verbose=0)
    orig = model.predict(x, batch_size=256, verbose=0)
    p = np.sort(to_probabilities(sim, convention), axis=1)
    row = {"steps": steps, "fine_tune_seconds": round(seconds, 1), "accuracy_original": float((orig.argmax(1) == y).mean()),
           "accuracy_qat_model": float((sim.argmax(1) == y).mean()),
           "qat_model_near_ties": float((p[:, -1] - p[:, -2] < 0.05).mean())}
    folder = Path(tempfile.mkdtemp(prefix="qat-steps-"))
    for kind, export, name in (("tflite-int8", tfl.export_qat_int8, "m.tflite"), ("onnx-int8", onx.export_qat_int8, "m.onnx")):
        export(q, folder / name, tuple(q.input_shape[1:]))
        runner = load_runner(folder / name, kind=kind)
        out = runner.predict_batched(x, 256)
        runner.close()
        row[kind] = {"accuracy": float((out.argmax(1) == y).mean()),
                     "agreement_with_qat_model": float((out.argmax(1) == sim.argmax(1)).mean()),
                     "agreement_with_original": float((out.argmax(1) == orig.argmax(1)).mean())}
    out = builtin_kernels(folder / "m.tflite", x)
    row["tflite-int8-builtin"] = {"accuracy": float((out.argmax(1) == y).mean()),
                                  "agreement_with_qat_model": float((out.argmax(1) == sim.argmax(1)).mean())}
    return row


def builtin_kernels(path: Path, x: np.ndarray) -> np.ndarray:
    """The tflite file's float outputs through LiteRT's built-in kernels, XNNPACK not applied (the
    standard runner, on an interpreter made with that resolver)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from exporter.runtimes.tflite import TFLiteRunner

    interp = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    return TFLiteRunner(path, interp, device="cpu", threads=None).predict_batched(x, 256)


results = {}
if COMMITTED.is_file() and set(MODELS) != set(PLAN):  # models not named keep their committed rows
    old = json.loads(COMMITTED.read_text())
    results = {n: {"machine": old["machine"], **r} for n, r in old["models"].items() if n not in MODELS}
for name in MODELS:
    plan = PLAN[name]
    run, ds = open_run(name)
    from exporter.runtimes.keras import load_keras_model

    model = load_keras_model(run.model_path)
    n_train = len(ds.y_train)
    x_cal = np.asarray(ds.x_train[n_train - CALIB:], np.float32)
    take = np.arange(min(n_train - CALIB, 25000))
    x_train, y_train = np.asarray(ds.x_train[take], np.float32), np.asarray(ds.y_train[take])
    x, y = np.asarray(ds.x_test[:TEST], np.float32), np.asarray(ds.y_test[:TEST])
    convention = run.output or "probabilities"
    d = drift(model, x_cal, x[:16])
    rows = [fine_tuned(model, x_cal, x_train, y_train, x, y, steps, convention) for steps in plan]
    results[name] = {"machine": machine(), "drift": d, "fine_tuned": rows}
    print(name, "done", flush=True)

lines = ["# QAT: the int8 file against its fake-quant Keras model (`python benchmarks/qat_drift.py`)", "",
         f"Machine: {machine().get('cpu')}, {machine().get('cores')} cores ({(machine().get('cpu_int8') or {}).get('summary')}), "
         "shared: timings noisy.", "",
         "## Drift with depth (calibrated, not fine-tuned; tflite-int8 vs the simulation, 16 test images)", "",
         "| model | ranges matched | first | 25% | 50% | 75% | last (mean / max LSB) | per op: values off, mean / worst op |",
         "|---|---|---|---|---|---|---|---|"]
for name, r in results.items():
    layers, info = r["drift"][:-1], r["drift"][-1]
    pick = [layers[min(int(f * (len(layers) - 1)), len(layers) - 1)] for f in (0, 0.25, 0.5, 0.75, 1)]
    cells = " | ".join(f"{p['mean_lsb']:.2f} / {p['max_lsb']:.0f}" for p in pick)
    offs = [(p["per_op_off"], p["tensor"]) for p in layers if p.get("per_op_off") is not None]
    worst = max(offs) if offs else (0.0, "-")
    lines.append(f"| {name} | {info['matched']} of {info['ranges']} | {cells} | "
                 f"{100 * np.mean([o for o, _ in offs]):.3f}% / {100 * worst[0]:.2f}% ({worst[1]}) |")
lines += ["", "## Fine-tuning steps (5,000 test images)", "",
          "| model | steps | s | acc. original | acc. QAT model | QAT near-ties % | tflite acc. | tflite vs QAT model % | "
          "tflite vs original % | onnx acc. | onnx vs QAT model % | tflite, built-in kernels: vs QAT model % |",
          "|" + "---|" * 12]
for name, r in results.items():
    for row in r["fine_tuned"]:
        t, o = row["tflite-int8"], row["onnx-int8"]
        b = row.get("tflite-int8-builtin")
        builtin = f"{100 * b['agreement_with_qat_model']:.2f}" if b else "-"
        lines.append(f"| {name} | {row['steps']} | {row['fine_tune_seconds']} | {100 * row['accuracy_original']:.2f} | "
                     f"{100 * row['accuracy_qat_model']:.2f} | {100 * row['qat_model_near_ties']:.1f} | "
                     f"{100 * t['accuracy']:.2f} | {100 * t['agreement_with_qat_model']:.2f} | "
                     f"{100 * t['agreement_with_original']:.2f} | {100 * o['accuracy']:.2f} | "
                     f"{100 * o['agreement_with_qat_model']:.2f} | {builtin} |")
lines += ["", "The first QAT claim gates 'vs QAT model' at 97% (int8 agreement gate). 'built-in kernels': the same "
          "tflite file through LiteRT's BUILTIN_WITHOUT_DEFAULT_DELEGATES resolver (no XNNPACK), whose int8 kernels "
          "round differently from the simulation (which follows XNNPACK, `validate`'s and `bench`'s path).", "",
          "Where each model was measured:", ""]
lines += [f"- {name}: {r.get('machine', {}).get('cpu')}, {r.get('machine', {}).get('cores')} cores, int8 ISA "
          f"{(r.get('machine', {}).get('cpu_int8') or {}).get('summary')}" for name, r in results.items()]
save("qat_drift", {"machine": machine(), "models": results}, "\n".join(lines))
