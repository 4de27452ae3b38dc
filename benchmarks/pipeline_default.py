"""Issue 2 + 5: the README's main job (`resexport pipeline`, defaults) timed end to end on this
machine, with the default model's accuracy and training time. Writes results/pipeline_default.*"""

import json
import subprocess
import sys
import time

from _common import RUN, machine, save

# On the CLI, not exporter.api: this measures `resexport pipeline` itself, as a user runs it (process start,
# imports and all), so its wall time is the README's "one command" figure.
t0 = time.perf_counter()
proc = subprocess.run([sys.executable, "-m", "exporter", "pipeline", "--run", str(RUN), "--force", "--json"],
                      capture_output=True, text=True)
wall = time.perf_counter() - t0
if proc.returncode not in (0, 4):
    sys.exit(proc.stderr[-3000:])
result = json.loads(proc.stdout)
man = json.loads((RUN / "manifest.json").read_text())
val = json.loads((RUN / "validation.json").read_text())
doc = {"command": "python -m exporter pipeline (defaults) --force", "wall_seconds": round(wall, 1),
       "exit_code": proc.returncode, "stages": result["stages"], "model": man["model"]["name"],
       "params": man["model"]["params"], "training": man["training"],
       "validation": {a["kind"]: {"accuracy": a["accuracy"], "agreement": a["agreement"], "passed": a["passed"]}
                      for a in val["artifacts"]}, "machine": machine()}
t = man["training"]
lines = [f"# Default pipeline on {doc['machine']['cpu']} ({doc['machine']['cores']} cores)", "",
         f"`resexport pipeline` with no flags: **{wall / 60:.1f} min** wall time (goal <= 10 min), default model "
         f"`{doc['model']}` ({doc['params']} params) at **{100 * t['test_accuracy']:.2f}%** Fashion-MNIST test "
         f"accuracy (goal >= 91%), trained in {t['seconds']:.0f} s ({t['recipe']['epochs']} epochs, batch "
         f"{t['recipe']['batch_size']}).", "", "| stage | status | seconds |", "|---|---|---:|"]
lines += [f"| {k} | {v['status']} | {v['seconds']} |" for k, v in result["stages"].items()]
lines += ["", "| artifact | accuracy | agreement | gate |", "|---|---:|---:|---|"]
lines += [f"| {k} | {100 * v['accuracy']:.2f}% | {v['agreement']:.2f}% | {'pass' if v['passed'] else 'FAIL'} |"
          for k, v in doc["validation"].items()]
save("pipeline_default", doc, "\n".join(lines))
