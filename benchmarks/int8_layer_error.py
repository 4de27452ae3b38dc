"""Issue 4/5 follow-up: where does tflite-int8 lose agreement? TensorFlow's QuantizationDebugger
runs the int8 model with each op's output compared against float, on 200 real test images, and
reports per-op RMSE in units of that op's quantisation step (rmse/scale). Plain rounding noise is
1/sqrt(12) = 0.29; an op far above that is a badly quantised layer. Writes results/int8_layer_error.*

Usage: python benchmarks/int8_layer_error.py [RUN]   (default: the depth study's plain12)"""

import csv
import io
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from _common import ROOT, machine, save

from exporter import data
from exporter import manifest as mf
from exporter.convert import DEFAULT_CALIBRATION
from exporter.export.source import ExportSource, tensorflow

run = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "artifacts" / "depth-cpu-reduced" / "runs" / "plain12"
man = mf.read_manifest(run)
ds = data.load_dataset(man["dataset"]["name"])
calib = data.calibration_set(ds, DEFAULT_CALIBRATION).x.astype(np.float32)
tf = tensorflow()
source = ExportSource(run / man["model"]["file"], "keras", tuple(ds.input_shape))
try:
    conv = tf.lite.TFLiteConverter.from_saved_model(str(source.saved_model_dir()))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib[i: i + 1]] for i in range(len(calib)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=conv, debug_dataset=lambda: ([ds.x_test[i: i + 1].astype(np.float32)] for i in range(200)))
    debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
finally:
    source.cleanup()
buf.seek(0)
rows = [{"op": r["op_name"], "tensor": r["tensor_name"], "scale": float(r["scale"]),
         "rmse_over_scale": float(np.sqrt(float(r["mean_squared_error"])) / float(r["scale"])),
         "mean_error": float(r["mean_error"])} for r in csv.DictReader(buf)]
ops = Counter(r["op"] for r in rows)
doc = {"run": str(run), "model": man["model"]["name"], "images": 200, "calibration": DEFAULT_CALIBRATION,
       "ops": dict(ops), "rows": rows, "machine": machine()}
worst = sorted(rows, key=lambda r: -r["rmse_over_scale"])[:5]
lines = [f"# Per-op int8 error of {man['model']['name']} (TFLite QuantizationDebugger, 200 test images)", "",
         f"Quantised ops: {', '.join(f'{k} x{v}' for k, v in ops.items())}.",
         f"rmse/scale over all ops: median {np.median([r['rmse_over_scale'] for r in rows]):.3f}, "
         f"max {max(r['rmse_over_scale'] for r in rows):.3f} (rounding noise alone: 0.289).", "",
         "| worst ops | tensor | rmse/scale |", "|---|---|---:|"]
lines += [f"| {r['op']} | `{r['tensor'][-70:]}` | {r['rmse_over_scale']:.3f} |" for r in worst]
requant = sum(v for k, v in ops.items() if k not in ("MAX_POOL_2D", "RESHAPE"))
bn_ops = sum("batchnorm" in r["tensor"] for r in rows)
lines += ["", f"Each op's error is measured on its own (float op on the dequantised input vs the int8 op). With no "
          f"op far above rounding noise, the agreement lost end to end is accumulated noise over {requant} "
          f"requantising ops; {bn_ops} of them are the MUL/ADD of BatchNorm layers that sit after a ReLU (the "
          "seed-003 block is Conv-ReLU-BN), which the converter cannot fold into a conv."]
save("int8_layer_error", doc, "\n".join(lines))
