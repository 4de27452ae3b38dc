"""Issue 21: training at scale, measured.

1. Peak RSS of `resexport train --data FOLDER` on 96x96x3 PNGs (a folder of 50,000 train images +
   500 test, written once under --work, not in the repo), for a subset of --small images
   (--train-limit) and for all of them: the streamed input keeps it flat in the number of images.
   Each is a child process with a tiny model (resmini), 1 epoch capped at --max-batches batches;
   its peak RSS is os.wait4's ru_maxrss of that child alone.
2. Images/s of the input pipeline alone (exporter.stream.Batches over the same folder, decoding,
   preprocessing and flip+crop augmenting with its threads) against the images/s fit consumed in
   (1): the pipeline must not be the bottleneck.
3. Images/s on 1, 2 and 4 virtual CPU devices (KERAS_BACKEND=jax,
   XLA_FLAGS=--xla_force_host_platform_device_count=4), Fashion-MNIST, the same global batch, the
   second epoch's time (the first compiles). The virtual devices share the same cores: this shows
   the data-parallel path runs and splits the batch, not that it is faster.

    python benchmarks/train_scaling.py [--work /tmp/train-scaling] [--images 50000] [--small 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from _common import ROOT, machine, save

SIZE = 96
CLASSES = 10


def _write_chunk(args) -> int:
    from PIL import Image

    folder, split, start, n = args
    rng = np.random.default_rng(start)
    for k in range(start, start + n):
        c = k % CLASSES
        img = np.full((SIZE, SIZE, 3), 40 + 18 * c, np.uint8)
        y0, x0 = rng.integers(8, SIZE - 40, 2)
        img[y0:y0 + 32, x0:x0 + 32, c % 3] = 230
        img = np.clip(img.astype(np.int16) + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(Path(folder) / split / f"c{c}" / f"{k:06d}.png", compress_level=1)
    return n


def make_folder(folder: Path, n_train: int, n_test: int = 500) -> Path:
    done = folder / ".complete"
    if done.is_file() and done.read_text().strip() == f"{n_train},{n_test}":
        return folder
    for split in ("train", "test"):
        for c in range(CLASSES):
            (folder / split / f"c{c}").mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder), "train", s, min(5000, n_train - s)) for s in range(0, n_train, 5000)]
    jobs.append((str(folder), "test", 10_000_000, n_test))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_write_chunk, jobs))
    done.write_text(f"{n_train},{n_test}")
    print(f"wrote {n_train}+{n_test} PNGs in {time.perf_counter() - t0:.0f}s -> {folder}", file=sys.stderr)
    return folder


def rss_child(cmd: list[str], env: dict) -> dict:
    """Run cmd; its wall time and peak RSS (MiB) from wait4's rusage of that child alone."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        sys.exit(f"{' '.join(cmd)} failed ({code}):\n{err.decode()[-3000:]}")
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "summary": json.loads(out.decode())}


def pipeline_alone(folder: Path, batch: int, batches: int, threads: int) -> dict:
    """Images/s of the stream by itself: decode + preprocess + flip,crop, `threads` threads."""
    sys.path.insert(0, str(ROOT))
    from exporter.data.choose import open_data
    from exporter.stream import Batches

    ds = open_data(str(folder))
    s = Batches(ds.x_train, ds.y_train, np.arange(len(ds.y_train)), batch, seed=0, shuffle=True,
                augment=("flip", "crop"), workers=threads)
    s[0]  # start the threads
    t0 = time.perf_counter()
    for i in range(1, batches + 1):
        s[i]
    seconds = time.perf_counter() - t0
    s.close()
    return {"threads": threads, "batches": batches, "batch": batch, "seconds": round(seconds, 2),
            "images_per_s": round(batches * batch / seconds, 1)}


# Each training is `resexport train` in a child process, not an exporter.api call: the figures are the child's
# peak RSS (os.wait4), and --devices N needs KERAS_BACKEND=jax and XLA_FLAGS set before Keras is imported.
def devices_run(n: int, work: Path, train_limit: int, batch: int) -> dict:
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    run = work / f"devices-{n}"
    cmd = [sys.executable, "-m", "exporter", "train", "--devices", str(n), "--epochs", "2", "--batch-size", str(batch),
           "--train-limit", str(train_limit), "--test-limit", "500", "--run", str(run), "--force", "--json"]
    rss_child(cmd, env)
    man = json.loads((run / "manifest.json").read_text())["training"]
    hist = json.loads((run / "history.json").read_text())
    images = man["streaming"]["batches_per_epoch"] * batch
    return {"devices": n, "per_device_batch": man["per_device_batch"], "global_batch": batch,
            "kind": man["devices"]["kind"], "epoch2_seconds": hist[1]["seconds"],
            "images_per_s": round(images / hist[1]["seconds"], 1), "epoch2_loss": round(hist[1]["loss"], 4),
            "test_accuracy": round(man["test_accuracy"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/train-scaling")
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--max-batches", type=int, default=20)
    ap.add_argument("--device-images", type=int, default=4096)
    ap.add_argument("--skip-devices", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    folder = make_folder(work / f"png{args.images}", args.images)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    rss = []
    for n in (args.small, args.images):
        run = work / f"run-{n}"
        cmd = [sys.executable, "-m", "exporter", "train", "--data", str(folder), "--model", "resmini", "--epochs", "1",
               "--batch-size", str(args.batch), "--max-batches", str(args.max_batches), "--augment", "flip,crop",
               "--run", str(run), "--force", "--json"]
        if n < args.images:
            cmd[cmd.index("--epochs"):cmd.index("--epochs")] = ["--train-limit", str(n)]
        res = rss_child(cmd, env)
        man = json.loads((run / "manifest.json").read_text())["training"]
        hist = json.loads((run / "history.json").read_text())
        trained = man["streaming"]["batches_per_epoch"] * args.batch
        rss.append({"images_in_split": n, "peak_rss_mib": res["peak_rss_mib"], "wall_seconds": res["seconds"],
                    "trained_images": trained, "fit_epoch_seconds": hist[0]["seconds"],
                    "fit_images_per_s": round(trained / hist[0]["seconds"], 1), "backend": man["backend"],
                    "streaming": man["streaming"]})
        print(rss[-1], file=sys.stderr)
    alone = [pipeline_alone(folder, args.batch, args.max_batches, t) for t in (1, 2)]
    devices = [] if args.skip_devices else [devices_run(n, work, args.device_images, 128) for n in (1, 2, 4)]
    doc = {"machine": machine(), "shared_cpu": "2 cores shared with 4 other engineers' jobs while measured",
           "folder": {"images": args.images, "test_images": 500, "shape": [SIZE, SIZE, 3], "format": "PNG",
                      "classes": CLASSES},
           "settings": {"model": "resmini", "batch": args.batch, "max_batches": args.max_batches, "epochs": 1,
                        "augment": "flip,crop"},
           "peak_rss": rss, "pipeline_alone": alone, "devices": devices}
    md = ["# Training at scale (issue 21)\n",
          f"Machine: {doc['machine'].get('cpu', '')} — {doc['shared_cpu']}. "
          f"Folder of {args.images:,} {SIZE}x{SIZE}x3 PNGs (+500 test), `resexport train --data FOLDER` with resmini, "
          f"1 epoch of {args.max_batches} batches of {args.batch}, `--augment flip,crop`, each run a child process.\n",
          "| images in the training split | peak RSS (MiB) | fit images/s | wall (s) |", "|---|---|---|---|"]
    md += [f"| {r['images_in_split']:,} | {r['peak_rss_mib']:.0f} | {r['fit_images_per_s']} | {r['wall_seconds']} |"
           for r in rss]
    md += ["", "Input pipeline alone (decode + preprocess + flip,crop, `exporter.stream.Batches`):", "",
           "| threads | images/s |", "|---|---|"] + [f"| {a['threads']} | {a['images_per_s']} |" for a in alone]
    if devices:
        md += ["", f"Data-parallel on virtual CPU devices (JAX, `--devices N`, global batch 128, "
               f"{args.device_images} Fashion-MNIST images, epoch 2). The devices share the same 2 cores, so "
               "this proves the path runs and splits the batch, not speed:", "",
               "| devices | per-device batch | images/s | epoch-2 loss |", "|---|---|---|---|"]
        md += [f"| {d['devices']} | {d['per_device_batch']} | {d['images_per_s']} | {d['epoch2_loss']} |" for d in devices]
    save("train_scaling", doc, "\n".join(md))


if __name__ == "__main__":
    main()
