"""Issue 32: how a distilled fine-tuning moves the int8 model relative to the ORIGINAL, step by step.

For a trained model (a run made by benchmarks/qat_distill.py, artifacts/qat-distill/MODEL), the QAT
simulation (exporter.quantize.qat: the model the int8 files compute, to within rounding) is calibrated on
500 training images and fine-tuned by distillation (300 steps of 64 training images, the original's
inference outputs as targets) under several settings; every 50 steps its top-1 agreement with the original
on all 10,000 test images is recorded. Settings: Adam 1e-4 with the model's Dropout active (the route before
this script), Adam 1e-4 with training-only layers left out, Adam 1e-5 with them left out (the default).
This is what the defaults in exporter/quantize/qat.py (DISTILL_LR, SELECT_EVERY, TRAINING_ONLY) rest on.
Writes results/qat_distill_curve.{json,md}.

Usage: python benchmarks/qat_distill_curve.py [--settings dropout,lr1e-4,default,lr3e-5,mse] [MODEL ...]
(default: residual12, the first three settings; ~3 min a setting on 2 cores). Results of earlier invocations
in results/qat_distill_curve.json are kept (a model and setting measured again replaces its row)."""

import sys

import numpy as np
from _common import ROOT, machine, save

import resexport  # noqa: F401  registers the QAT layers
from exporter import data
from exporter.quantize import qat

# name: (Adam learning rate, training-only layers left out, loss: "kl" = qat.distill_loss at T=1, "mse" = mean
# squared error between the logits)
SETTINGS = {"dropout": (1e-4, False, "kl"), "lr1e-4": (1e-4, True, "kl"), "default": (1e-5, True, "kl"),
            "lr3e-5": (3e-5, True, "kl"), "mse": (3e-5, True, "mse")}
LABELS = {"dropout": "adam 1e-4, Dropout active", "lr1e-4": "adam 1e-4, training-only layers left out",
          "default": "adam 1e-5, training-only layers left out (default)", "lr3e-5": "adam 3e-5, left out",
          "mse": "adam 3e-5, left out, MSE on the logits"}
args = sys.argv[1:]
CHOSEN = ["dropout", "lr1e-4", "default"]
if "--settings" in args:
    i = args.index("--settings")
    CHOSEN = args[i + 1].split(",")
    del args[i: i + 2]
MODELS = tuple(args) or ("residual12",)
STEPS, EVERY, BATCH = 300, 50, 64


def curve(model, x, teacher, x_test, ref_top1, setting, output):
    import keras

    lr, inference_layers, loss = SETTINGS[setting]
    qm, _ = qat.build_qat_model(model, inference_layers=inference_layers)
    qat.calibrate(qm, x[:500])
    if loss == "kl":
        fn = qat.distill_loss(output, teacher.shape[1])
        target = np.concatenate([qat.soft_targets(teacher, output), np.zeros_like(teacher)], axis=1)
    else:
        def fn(y_true, y_pred):
            z = y_pred if output == "logits" else keras.ops.log(keras.ops.clip(y_pred, 1e-7, 1.0))
            return keras.ops.mean(keras.ops.square(z - y_true), axis=-1)
        target = qat.as_logits(teacher, output).astype(np.float32)
    qm.compile(optimizer=keras.optimizers.Adam(lr), loss=fn, jit_compile=False)
    links, order, points = qat.range_links(qm), np.random.default_rng(0).permutation(len(x)), []
    for step in range(STEPS + 1):
        if step % EVERY == 0:
            top1 = qm.predict(x_test, batch_size=500, verbose=0).argmax(1)
            points.append([step, round(100 * float((top1 == ref_top1).mean()), 2)])
        if step < STEPS:
            b = np.sort(order[step * BATCH % len(x):][:BATCH])
            qm.train_on_batch(x[b], target[b])
            qat.sync_ranges(qm, links)
    return points


if __name__ == "__main__":
    import keras

    ds = data.load_dataset("fashion_mnist")
    x_test = np.asarray(ds.x_test, np.float32)
    idx = np.sort(np.random.default_rng(0).choice(len(ds.y_train), STEPS * BATCH, replace=False))
    x = np.asarray(ds.x_train[idx], np.float32)
    import json

    from _common import RESULTS

    previous = RESULTS / "qat_distill_curve.json"
    rows = json.loads(previous.read_text())["rows"] if previous.is_file() else []
    for name in MODELS:
        path = ROOT / "artifacts" / "qat-distill" / name / "model.keras"
        if not path.is_file():
            sys.exit(f"{path} missing: run python benchmarks/qat_distill.py {name} first (it trains the model)")
        model = keras.saving.load_model(path, compile=False)
        output = "probabilities" if getattr(model.layers[-1], "activation", None) is keras.activations.softmax \
            else "logits"
        ref = model.predict(x_test, batch_size=500, verbose=0)
        teacher = model.predict(x, batch_size=500, verbose=0)
        for setting in CHOSEN:
            lr, left_out, loss = SETTINGS[setting]
            rows = [r for r in rows if (r["model"], r["setting"]) != (name, LABELS[setting])]
            rows.append({"model": name, "setting": LABELS[setting], "lr": lr, "training_only_left_out": left_out,
                         "loss": loss, "output": output,
                         "keras_accuracy": round(100 * float((ref.argmax(1) == ds.y_test).mean()), 2),
                         "agreement_by_step": curve(model, x, teacher, x_test, ref.argmax(1), setting, output)})
            print(rows[-1], flush=True)
    lines = ["# Distilled QAT, step by step: top-1 agreement of the int8 simulation with the original "
             "(`python benchmarks/qat_distill_curve.py`)", "",
             f"Machine: {machine().get('cpu')}. All 10,000 Fashion-MNIST test images; 300 steps of 64 training "
             "images, the original's inference outputs as targets (KL at T=1, or MSE on the logits where the "
             "setting says); calibrated on 500 of them first (step 0).", "",
             "| model (Keras acc.) | setting | " + " | ".join(f"step {s}" for s in range(0, STEPS + 1, EVERY)) + " |",
             "|---|---|" + "---:|" * (STEPS // EVERY + 1)]
    for r in rows:
        lines.append(f"| {r['model']} ({r['keras_accuracy']:.2f}%) | {r['setting']} | "
                     + " | ".join(f"{a:.2f}" for _, a in r["agreement_by_step"]) + " |")
    save("qat_distill_curve", {"machine": machine(), "steps": STEPS, "every": EVERY, "batch": BATCH, "rows": rows},
         "\n".join(lines))
