"""Why the reduced depth study changed lr and BatchNorm momentum: plain12 trained for the same 120
steps (9,000 stratified images, 2 epochs, batch 150) with the seed's lr 1e-4 and Keras' BN
momentum 0.99, then each change on its own and both. Scored in inference mode on the full test
set. Writes results/bn_momentum_short_runs.*"""

import json

from _common import ROOT, machine, save

import resexport as rx

CONFIGS = [("seed: lr 1e-4, BN momentum 0.99", {}),
           ("lr 1e-4, BN momentum 0.9", {"bn_momentum": 0.9}),
           ("lr 1e-3, BN momentum 0.99", {"lr": 1e-3}),
           ("lr 1e-3, BN momentum 0.9 (the reduced study)", {"lr": 1e-3, "bn_momentum": 0.9})]
rows = []
for i, (label, flags) in enumerate(CONFIGS):
    run = ROOT / "artifacts" / "bn-momentum" / f"cfg{i}"
    result = rx.train(model="plain12", recipe="seed", epochs=2, train_limit=9000, **flags, run=run, force=True)
    history = json.loads((run / "history.json").read_text())
    rows.append({"config": label, "flags": flags, "test_accuracy": result.test_accuracy,
                 "train_accuracy_last_epoch": history[-1]["accuracy"]})
    print(rows[-1], flush=True)
doc = {"model": "plain12", "steps": 120, "rows": rows, "machine": machine()}
lines = ["# plain12 after 120 steps: learning rate and BatchNorm momentum", "",
         "9,000 stratified training images, 2 epochs, batch 150; test accuracy in inference mode (moving "
         "BatchNorm statistics) on the 10,000 test images, train accuracy as seen during the last epoch.", "",
         "| config | test accuracy | train accuracy (last epoch) |", "|---|---:|---:|"]
lines += [f"| {r['config']} | {100 * r['test_accuracy']:.2f}% | {100 * r['train_accuracy_last_epoch']:.2f}% |"
          for r in rows]
save("bn_momentum_short_runs", doc, "\n".join(lines))
