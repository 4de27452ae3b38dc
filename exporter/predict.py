"""Predict: top-k classes of image files with any artifact of a run, preprocessed exactly as the run
records (manifest["preprocessing"]), never as the command line would have to repeat.

Which artifact, unless one is named: the smallest (in bytes) that passed validation according to the
run's validation.json and is unchanged since (sha256 as in the manifest); with no validation.json, the
float32 TFLite file, else the float32 ONNX file, else the reference model. If validation ran and
nothing passed, predict refuses (name one with --artifact to use it anyway)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from exporter import formats
from exporter.errors import DataError, UsageError
from exporter.fsutil import sha256_file
from exporter.data.own import decode_image
from exporter.run import VALIDATION_FILE, Run
from exporter.runtimes import load_runner

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
REFERENCE_NAMES = ("keras", "reference", "savedmodel")
FALLBACK_ORDER = ("tflite-fp32", "onnx-fp32")
BATCH = 64


def choose_artifact(run: Run, kind: str | None = None) -> tuple[str, Path, str]:
    """(kind, path, why) of the artifact predict uses."""
    ref_kind = run.model_format
    if kind:
        if kind in REFERENCE_NAMES:
            return ref_kind, run.model_path, "the reference model (--artifact)"
        formats.get(kind)
        if kind not in run.artifacts:
            raise UsageError(f"{run} has no artifact {kind}",
                             hint=f"available: {', '.join([*run.artifacts, 'keras'])}")
        return kind, run.artifact_path(kind), "named with --artifact"
    if (run / VALIDATION_FILE).is_file():
        rows = [r for r in (run.validation or {}).get("artifacts") or [] if isinstance(r, dict)]
        passing = []
        for r in rows:
            entry = run.artifact(r.get("kind"))
            path = run.artifact_path(r["kind"]) if entry else None
            if r.get("passed") and entry and path.is_file() and sha256_file(path) == entry.get("sha256"):
                passing.append((entry.get("bytes") or path.stat().st_size, list(run.artifacts).index(r["kind"]),
                                r["kind"], path))
        if passing:
            _, _, name, path = min(passing)
            return name, path, "the smallest artifact that passed validation"
        if rows:
            raise UsageError(f"no artifact of {run} passed validation (validation.json)",
                             hint="fix and re-validate, or name one with --artifact KIND to use it anyway")
    for name in FALLBACK_ORDER:
        if name in run.artifacts and run.artifact_path(name).is_file():
            return name, run.artifact_path(name), "not validated yet: the float32 artifact"
    return ref_kind, run.model_path, "no exported artifact: the reference model"


def image_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise UsageError(f"{p} holds no image files ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"{p} does not exist", hint="pass image files or folders of images")
    if not files:
        raise UsageError("no images given", hint="pass image files or folders of images")
    return files


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(*, run: Run | Path, paths: list[Path], kind: str | None = None, top_k: int,
            threads: int | None = None, unsafe: bool = False) -> dict:
    if top_k <= 0:
        raise UsageError(f"--top-k must be positive, got {top_k}")
    run = Run.of(run)
    pp = run.preprocessing
    class_names = run.class_names
    files = image_files(paths)
    name, path, why = choose_artifact(run, kind)
    runner = load_runner(path, kind=name, threads=threads, unsafe=unsafe)
    logits = run.output == "logits"
    rows = []
    try:
        for i in range(0, len(files), BATCH):
            chunk = files[i: i + BATCH]
            x = pp.from_pixels(np.stack([decode_image(_read(f), str(f), pp) for f in chunk]))
            out = runner.predict(x)
            probs = softmax(out) if logits else out
            for f, p in zip(chunk, probs):
                order = np.argsort(-p, kind="stable")[: min(top_k, len(p))]
                rows.append({"file": str(f), "top": [
                    {"class": class_names[j] if j < len(class_names) else str(j), "index": int(j),
                     "probability": float(p[j])} for j in order]})
    finally:
        runner.close()
    return {"run": str(run), "artifact": {"kind": name, "file": path.name, "why": why},
            "output": "softmax of logits" if logits else "probabilities", "preprocessing": pp.to_dict(),
            "predictions": rows}


def _read(f: Path) -> bytes:
    try:
        return f.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {f}: {exc.strerror or exc}") from exc
