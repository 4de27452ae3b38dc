"""Issue 5: seed 003's depth study, REDUCED to fit this 2-core CPU (no GPU was lent): 9,000
stratified training images, 2 epochs (120 steps of 150), lr 1e-3 and BatchNorm momentum 0.9 so
that 120 steps converge (the seed: 60,000 images, 25 epochs, lr 1e-4, momentum 0.99), scored on
the full 10,000-image test set. Runs `resexport experiment depth`, which reuses models already
trained with these settings, and copies depth.json/.md/.png to results/depth-cpu-reduced/.

The full study is `resexport experiment depth` with no flags (the seed's settings), on a GPU."""

import shutil
import subprocess
import sys

from _common import RESULTS, ROOT

OUT = ROOT / "artifacts" / "depth-cpu-reduced"
FLAGS = ["--epochs", "2", "--lr", "1e-3", "--bn-momentum", "0.9", "--train-limit", "9000"]
NOTE = ("CPU, 2-core AMD EPYC (no GPU lent to this task); REDUCED: 9,000 stratified training images, 2 epochs "
        "(120 steps), lr 1e-3 and BatchNorm momentum 0.9 instead of the seed 1e-4/0.99 so that 120 steps converge; "
        "full 10,000-image test set")

proc = subprocess.run([sys.executable, "-m", "exporter", "experiment", "depth", *FLAGS, "--out", str(OUT),
                       "--device-note", NOTE], cwd=ROOT)
if proc.returncode:
    sys.exit(proc.returncode)
dest = RESULTS / "depth-cpu-reduced"
dest.mkdir(parents=True, exist_ok=True)
for name in ("depth.json", "depth.md", "depth.png"):
    shutil.copy2(OUT / name, dest / name)
print(f"copied to {dest}")
