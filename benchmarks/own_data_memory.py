"""Issue 12: peak memory of `resexport validate` on your own data as the test set grows.

Writes 96x96x3 uint8 test sets of 5,000 and 50,000 images (an .npz stored uncompressed, written in
chunks so this script never holds it either, and for 5,000 also a folder of PNGs), imports a small
model of our own (96x96x3 input, 3 classes, fp32 TFLite only), then runs `resexport validate` in a
child process and reads that child's peak resident memory (os.wait4 -> ru_maxrss). Held as float32
at once, 50,000 such images alone would be 5.5 GB; the lazy test set decodes 256 at a time.

    python benchmarks/own_data_memory.py [--sizes 5000,50000] [--work /tmp/own-data-memory]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from _common import machine, save

IMAGE = (96, 96, 3)
CLASSES = 3
CHUNK = 2000


def images(start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic images: a noisy background with the class's colour in one channel's block."""
    rng = np.random.default_rng(start)
    y = (np.arange(start, start + n) % CLASSES).astype(np.int64)
    x = rng.integers(0, 120, (n, *IMAGE), dtype=np.uint8)
    for c in range(CLASSES):
        x[y == c, 24:72, 24:72, c] = 230
    return x, y


def write_npz_stored(path: Path, n: int) -> None:
    """np.savez's layout (uncompressed .npy members) written chunk by chunk."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("x_test.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": (n, *IMAGE)})
            for i in range(0, n, CHUNK):
                fh.write(images(i, min(CHUNK, n - i))[0].tobytes())
        for name, arr in (("y_test", (np.arange(n) % CLASSES).astype(np.int64)),
                          ("class_names", np.asarray(["red", "green", "blue"]))):
            with zf.open(f"{name}.npy", "w") as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)


def write_png_folder(root: Path, n: int) -> None:
    from PIL import Image

    names = ["red", "green", "blue"]
    for c in names:
        (root / "test" / c).mkdir(parents=True, exist_ok=True)
    for i in range(0, n, CHUNK):
        x, y = images(i, min(CHUNK, n - i))
        for j, (img, label) in enumerate(zip(x, y)):
            Image.fromarray(img).save(root / "test" / names[label] / f"{i + j:06d}.png", compress_level=1)


def make_model(path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    x, y = images(10**6, 300)
    inputs = keras.Input(IMAGE, name="image")
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(h))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x.astype(np.float32) / 255, y, epochs=3, batch_size=50, verbose=0)
    model.save(path)


def child(cmd: list[str]) -> dict:
    """Run cmd; its wall time, exit code and peak RSS (MiB) from wait4's rusage of that child alone
    (this process imports no TensorFlow, so what the child inherits at fork is small: see parent_rss_mib_at_end, an upper bound of it at every spawn)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 4):
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    return {"exit_code": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def parent_rss() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5000,50000")
    ap.add_argument("--work", default="/tmp/own-data-memory")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--make-model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_model:
        return make_model(Path(args.make_model))
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = work / "m.keras"
    # In a child: this process must stay small, since a child's ru_maxrss starts from its parent's
    # resident size at fork (Linux keeps the pre-exec high-water mark).
    subprocess.run([sys.executable, __file__, "--make-model", str(model)], check=True)
    cases = []
    for n in (int(v) for v in args.sizes.split(",")):
        cases.append(("npz (stored, read lazily)", n, work / f"test_{n}.npz", write_npz_stored))
        if n <= 5000:
            cases.append(("folder of PNGs", n, work / f"png_{n}", write_png_folder))
    rows = []
    # On the CLI in a child process, not exporter.api: the figure is the peak RSS of `resexport validate` as a
    # user runs it, read from the child (os.wait4); in this process it would include this script's own memory.
    exe = [sys.executable, "-m", "exporter"]
    for kind, n, data, writer in cases:
        writer(data, n)
        size = sum(f.stat().st_size for f in data.rglob("*")) if data.is_dir() else data.stat().st_size
        run = work / f"run-{data.name}"
        conv = child([*exe, "convert", "--model", str(model), "--data", str(data), "--format", "tflite",
                      "--quantize", "none", "--run", str(run)])
        val = child([*exe, "validate", "--run", str(run)])
        rows.append({"data": kind, "images": n, "bytes_on_disk": size,
                     "float32_if_held_whole_mib": round(n * int(np.prod(IMAGE)) * 4 / 2**20, 1),
                     "validate": val, "convert_import": conv})
        print(rows[-1], flush=True)
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True) if data.is_dir() else data.unlink()
    doc = {"benchmark": "own_data_memory", "command": "resexport validate --run RUN (kinds: keras reference + "
           "tflite-fp32; batch 256)", "image_shape": list(IMAGE), "machine": machine(), "results": rows,
           "limit_mib": 1536, "parent_rss_mib_at_end": parent_rss()}
    lines = ["# Peak memory of `resexport validate` on your own data", "",
             f"96x96x3 uint8 test images, a small CNN of our own (Keras reference + tflite-fp32), batch 256. "
             f"Peak RSS of the validate process (wait4 ru_maxrss). Machine: {doc['machine']['cpu']} "
             f"({doc['machine']['cores']} cores).", "",
             "| data | images | on disk | float32 if held whole | validate peak RSS | validate time | exit |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['data']} | {r['images']:,} | {r['bytes_on_disk'] / 2**20:,.0f} MiB | "
                     f"{r['float32_if_held_whole_mib']:,.0f} MiB | {r['validate']['peak_rss_mib']:,.0f} MiB | "
                     f"{r['validate']['seconds']} s | {r['validate']['exit_code']} |")
    save("own_data_memory", doc, "\n".join(lines))


if __name__ == "__main__":
    main()
