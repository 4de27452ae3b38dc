"""Issue 32: where a model's int8 noise enters, and what a float stem buys (exporter.quantize.qat.float_stem_plan).

For a trained model (a run made by benchmarks/qat_distill.py, artifacts/qat-distill/MODEL), the QAT simulation
(the model the int8 files compute, to within rounding) is calibrated on 500 training images and NOT fine-tuned;
its top-1 agreement with the original on all 10,000 Fashion-MNIST test images, and the standard deviation of
its output error, are measured:
- with every activation range applied (full int8);
- with one group of ranges left float at a time (by name: MobileNetV2's bottleneck outputs, residual adds,
  expansion / depthwise ReLUs; and every range up to block 5 or from block 10 on), to see where the noise
  that flips predictions enters;
- with float stems of growing length (qat.apply_float_stem on the first k ranges), with the weights of the
  convolutions they make float and the share of all weights.
The default budget (qat.FLOAT_STEM_BUDGET) picks the stem marked "default".
Writes results/qat_float_stem.{json,md}.

Usage: python benchmarks/qat_float_stem.py [MODEL ...]   (default: mobilenetv2; about a minute a model)"""

import sys

import numpy as np
from _common import ROOT, machine, save

import resexport  # noqa: F401  registers the QAT layers
from exporter import data
from exporter.quantize import qat

MODELS = tuple(sys.argv[1:]) or ("mobilenetv2",)
GROUPS = {
    "bottleneck outputs (project)": lambda n: "project" in n,
    "residual adds": lambda n: "add" in n,
    "bottleneck outputs and adds": lambda n: "project" in n or "add" in n,
    "expansion ReLUs": lambda n: "expand_relu" in n,
    "depthwise ReLUs": lambda n: "depthwise_relu" in n,
    "every range up to block 5": lambda n: n.startswith(("Conv1", "expanded_conv", "resizing"))
    or any(f"block_{i}_" in n for i in range(1, 6)),
    "every range from block 10 on": lambda n: n.startswith(("out_relu", "Conv_1", "global", "logits"))
    or any(f"block_{i}_" in n for i in range(10, 17)),
}


def measure(qm, x_test, ref) -> dict:
    qm.predict_function = None  # the ranges' switches are Python attributes: trace again
    out = qm.predict(x_test, batch_size=1000, verbose=0)
    return {"agreement": round(100 * float((out.argmax(1) == ref.argmax(1)).mean()), 2),
            "error_std": round(float(np.std(out - ref)), 4)}


if __name__ == "__main__":
    import keras

    ds = data.load_dataset("fashion_mnist")
    x_test = np.asarray(ds.x_test, np.float32)
    calib = np.asarray(ds.x_train[np.sort(np.random.default_rng(0).choice(len(ds.y_train), 500, replace=False))],
                       np.float32)
    results = {}
    for name in MODELS:
        path = ROOT / "artifacts" / "qat-distill" / name / "model.keras"
        if not path.is_file():
            sys.exit(f"{path} missing: run python benchmarks/qat_distill.py {name} first (it trains the model)")
        model = keras.saving.load_model(path, compile=False)
        ref = model.predict(x_test, batch_size=1000, verbose=0)
        qm, _ = qat.build_qat_model(model, inference_layers=True)
        qat.calibrate(qm, calib)
        aqs = qat.act_quant_layers(qm)
        doc = {"keras_accuracy": round(100 * float((ref.argmax(1) == ds.y_test).mean()), 2),
               "full_int8": measure(qm, x_test, ref), "groups": [], "stems": []}
        for label, pick in GROUPS.items():
            chosen = [a for a in aqs if pick(a.name) and a.fixed is None]
            if not chosen:
                continue
            for a in chosen:
                a.bypass = True
            doc["groups"].append({"group": label, "ranges": len(chosen), **measure(qm, x_test, ref)})
            for a in chosen:
                a.bypass = False
        default = qat.float_stem_plan(qm)
        total = default["weights"]
        seen = set()
        for budget in (0.002, 0.005, 0.01, qat.FLOAT_STEM_BUDGET, 0.025, 0.05, 0.1):
            plan = qat.float_stem_plan(qm, budget=budget)
            if not plan["ranges"] or len(plan["ranges"]) in seen:
                continue
            seen.add(len(plan["ranges"]))
            stem, _ = qat.build_qat_model(model, inference_layers=True)
            stem.set_weights(qm.get_weights())
            qat.apply_float_stem(stem, plan["ranges"])
            doc["stems"].append({"ranges": len(plan["ranges"]), "last": plan["ranges"][-1],
                                 "float_layers": len(plan["layers"]), "float_weights": plan["float_weights"],
                                 "weights_share_percent": round(100 * plan["float_weights"] / total, 2),
                                 "default": plan["ranges"] == default["ranges"], **measure(stem, x_test, ref)})
        results[name] = doc
        print(name, doc, flush=True)
    lines = ["# Where int8 noise enters, and what a float stem buys (`python benchmarks/qat_float_stem.py`)", "",
             f"Machine: {machine().get('cpu')}. The QAT simulation calibrated on 500 training images, not fine-tuned; "
             "top-1 agreement with the original on the 10,000 Fashion-MNIST test images, and the standard deviation "
             "of its output error (logits or probabilities, as the model outputs).", ""]
    for name, doc in results.items():
        full = doc["full_int8"]
        lines += [f"## {name} (Keras accuracy {doc['keras_accuracy']:.2f}%)", "",
                  f"Full int8: {full['agreement']:.2f}% agreement, output error std {full['error_std']}.", "",
                  "| left float | ranges | agreement % | error std |", "|---|---:|---:|---:|"]
        lines += [f"| {g['group']} | {g['ranges']} | {g['agreement']:.2f} | {g['error_std']} |" for g in doc["groups"]]
        lines += ["", "| float stem: first k ranges (last) | float layers | float weights (% of all) | agreement % | "
                  "error std |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {s['ranges']} ({s['last']}){' **default**' if s['default'] else ''} | {s['float_layers']} | "
                  f"{s['float_weights']:,} ({s['weights_share_percent']:.2f}%) | {s['agreement']:.2f} | {s['error_std']} |"
                  for s in doc["stems"]]
        lines.append("")
    save("qat_float_stem", {"machine": machine(), "models": results,
                            "budget_default": qat.FLOAT_STEM_BUDGET}, "\n".join(lines))
