"""Issue 32: how a distilled fine-tuning moves the int8 model relative to the ORIGINAL, step by step.

For a trained model (a run made by benchmarks/qat_distill.py, artifacts/qat-distill/MODEL), the QAT
simulation (exporter.quantize.qat: the model the int8 files compute, to within rounding) is calibrated on
500 training images and fine-tuned by distillation (300 steps of 64 training images, the original's
inference outputs as targets) under several settings; every 50 steps its top-1 agreement with the original
on all 10,000 test images is recorded. Settings: Adam 1e-4 with the model's Dropout active (the route before
this script), Adam 1e-4 with training-only layers left out, Adam 1e-5 with them left out (the default).
This is what the defaults in exporter/quantize/qat.py (DISTILL_LR, SELECT_EVERY, TRAINING_ONLY) rest on.
Writes results/qat_distill_curve.{json,md}.

Usage: python benchmarks/qat_distill_curve.py [MODEL ...]   (default residual12; ~3 min a setting on 2 cores)"""

import sys

import numpy as np
from _common import ROOT, machine, save

import resexport  # noqa: F401  registers the QAT layers
from exporter import data
from exporter.quantize import qat

MODELS = tuple(sys.argv[1:]) or ("residual12",)
SETTINGS = {"adam 1e-4, Dropout active": (1e-4, False), "adam 1e-4, training-only layers left out": (1e-4, True),
            "adam 1e-5, training-only layers left out (default)": (1e-5, True)}
STEPS, EVERY, BATCH = 300, 50, 64


def curve(model, x, teacher, x_test, ref_top1, lr, inference_layers):
    qm, _ = qat.build_qat_model(model, inference_layers=inference_layers)
    qat.calibrate(qm, x[:500])
    import keras

    qm.compile(optimizer=keras.optimizers.Adam(lr), loss=qat.distill_loss("probabilities", teacher.shape[1]),
               jit_compile=False)
    target = np.concatenate([qat.soft_targets(teacher, "probabilities"), np.zeros_like(teacher)], axis=1)
    links, order, points = qat.range_links(qm), np.random.default_rng(0).permutation(len(x)), []
    for step in range(STEPS + 1):
        if step % EVERY == 0:
            top1 = qm.predict(x_test, batch_size=1000, verbose=0).argmax(1)
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
    rows = []
    for name in MODELS:
        path = ROOT / "artifacts" / "qat-distill" / name / "model.keras"
        if not path.is_file():
            sys.exit(f"{path} missing: run python benchmarks/qat_distill.py {name} first (it trains the model)")
        model = keras.saving.load_model(path, compile=False)
        if model.output.shape[-1] != 10 or getattr(model.layers[-1], "activation", None) is not keras.activations.softmax:
            sys.exit(f"{name}: this script handles the seed nets (10-class softmax) only")
        ref = model.predict(x_test, batch_size=1000, verbose=0)
        teacher = model.predict(x, batch_size=1000, verbose=0)
        for label, (lr, left_out) in SETTINGS.items():
            rows.append({"model": name, "setting": label, "lr": lr, "training_only_left_out": left_out,
                         "keras_accuracy": round(100 * float((ref.argmax(1) == ds.y_test).mean()), 2),
                         "agreement_by_step": curve(model, x, teacher, x_test, ref.argmax(1), lr, left_out)})
            print(rows[-1], flush=True)
    lines = ["# Distilled QAT, step by step: top-1 agreement of the int8 simulation with the original "
             "(`python benchmarks/qat_distill_curve.py`)", "",
             f"Machine: {machine().get('cpu')}. All 10,000 Fashion-MNIST test images; 300 steps of 64 training "
             "images, the original's inference outputs as targets (T=1); calibrated on 500 of them first (step 0).", "",
             "| model (Keras acc.) | setting | " + " | ".join(f"step {s}" for s in range(0, STEPS + 1, EVERY)) + " |",
             "|---|---|" + "---:|" * (STEPS // EVERY + 1)]
    for r in rows:
        lines.append(f"| {r['model']} ({r['keras_accuracy']:.2f}%) | {r['setting']} | "
                     + " | ".join(f"{a:.2f}" for _, a in r["agreement_by_step"]) + " |")
    save("qat_distill_curve", {"machine": machine(), "steps": STEPS, "every": EVERY, "batch": BATCH, "rows": rows},
         "\n".join(lines))
