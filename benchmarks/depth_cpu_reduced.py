"""Issue 5: seed 003's depth study, REDUCED to fit this 2-core CPU (no GPU was lent): 9,000
stratified training images, 2 epochs (120 steps of 150), lr 1e-3 and BatchNorm momentum 0.9 so
that 120 steps converge (the seed: 60,000 images, 25 epochs, lr 1e-4, momentum 0.99), scored on
the full 10,000-image test set. Runs `resexport experiment depth`, which reuses models already
trained with these settings (exporter.api.depth_study, what `resexport experiment depth` calls), and copies depth.json/.md/.png to results/depth-cpu-reduced/.

The full study is `resexport experiment depth` with no flags (the seed's settings), on a GPU."""

import shutil

from _common import RESULTS, ROOT

from exporter.api import depth_study

OUT = ROOT / "artifacts" / "depth-cpu-reduced"
FLAGS = dict(epochs=2, lr=1e-3, bn_momentum=0.9, train_limit=9000)
NOTE = ("CPU, 2-core AMD EPYC (no GPU lent to this task); REDUCED: 9,000 stratified training images, 2 epochs "
        "(120 steps), lr 1e-3 and BatchNorm momentum 0.9 instead of the seed 1e-4/0.99 so that 120 steps converge; "
        "full 10,000-image test set")

depth_study(out=OUT, device_note=NOTE, on_model=lambda name, acc, seconds, reused: print(
    f"{name}: {acc:.2%} ({seconds:.0f}s{', reused' if reused else ''})", flush=True), **FLAGS)
dest = RESULTS / "depth-cpu-reduced"
dest.mkdir(parents=True, exist_ok=True)
for name in ("depth.json", "depth.md", "depth.png"):
    shutil.copy2(OUT / name, dest / name)
print(f"copied to {dest}")
