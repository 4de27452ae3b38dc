"""Issue 31: do the files load in the SDK apps use, and do they compute there what validate checked?

For models of the kinds users bring — the committed Fashion-MNIST resmini (grayscale, `unit`), the five
committed user models (Resizing inside, tutorial augmentation + Rescaling with logits, a keras.applications
backbone, a subclassed model, a tf_keras legacy .h5; all on Fashion-MNIST) and two RGB models of one's own
on PNG/JPEG images (`unit` softmax, `symmetric` logits) — convert to every TFLite kind with resexport and
validate each file on LiteRT and in MediaPipe Tasks' ImageClassifier (the C++ core of the Android, iOS and web
SDKs), fed uint8 RGB images as an app feeds it: loaded or refused, gates, top-1 agreement with LiteRT on the
same file, and p50 latency at batch 1 of both (one image per call, one run, 2 threads).

Writes results/app_sdk.{json,md}. Usage: python benchmarks/app_sdk.py   (~6 min on 2 cores)"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _common import ROOT, machine, save

import resexport as rx  # noqa: E402
from exporter import formats  # noqa: E402
from tests import user_models as um  # noqa: E402
from tests.owndata_helpers import write_folder  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
TFLITE = [k.name for k in formats.EXPORTABLE if k.family == "tflite"]
THREADS = 2


def models(work: Path) -> list[tuple[str, Path, dict]]:
    shapes = write_folder(work / "shapes")
    return [("resmini (gray, unit)", FIXTURES / "resmini_fmnist.keras", {"data": "fashion_mnist"}),
            *[(f"user: {p.stem}", p, {"data": "fashion_mnist"}) for p in sorted((FIXTURES / "user_models").iterdir())],
            ("own RGB softmax (unit)", FIXTURES / "own" / "softmax_unit.keras", {"data": shapes, "scale": "unit"}),
            ("own RGB logits (symmetric)", FIXTURES / "own" / "logits_symmetric.keras",
             {"data": shapes, "scale": "symmetric"})]


def one(name: str, path: Path, kwargs: dict, work: Path) -> list[dict]:
    conv = rx.convert(path, run=work / path.stem, format="tflite", **kwargs)
    val = rx.validate(conv.run, runtimes=["litert", "mediapipe"], threads=THREADS)
    timing = rx.bench(conv.run, runtimes=["litert", "mediapipe"], batches=(1,), reference=False,
                      threads=THREADS, min_runs=50, min_time=0.5, write=False).table(1)
    rows = []
    for kind in TFLITE:
        entry = conv.run.artifact(kind) or {}
        app = (entry.get("conformance") or {}).get("app") or {}
        own, sdk = val.artifacts.get(kind, {}), val.artifacts.get(f"{kind} · mediapipe", {})
        rows.append({"model": name, "kind": kind, "input": app.get("input", {}).get("dtype"),
                     "input_shape": app.get("input", {}).get("shape"), "rgb_adapter": app.get("rgb_adapter"),
                     "test_images": val.report["dataset"]["samples"],
                     "litert": {"passed": own.get("passed"), "accuracy": own.get("accuracy"),
                                "agreement": own.get("agreement"), "p50_ms": timing.get(kind)},
                     "mediapipe": {"loaded": "accuracy" in sdk, "passed": sdk.get("passed"),
                                   "accuracy": sdk.get("accuracy"), "agreement": sdk.get("agreement"),
                                   "failures": sdk.get("failures"), "same_file": sdk.get("same_file"),
                                   "p50_ms": timing.get(f"{kind} · mediapipe")}})
    return rows


def pct(v, fraction: bool = False) -> str:
    return "–" if v is None else f"{100 * v if fraction else v:.2f}%"


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# Every TFLite file in MediaPipe Tasks' ImageClassifier", "",
             f"`python benchmarks/app_sdk.py` on {m.get('cpu')} ({m.get('cores')} cores, int8 ISA: "
             f"{m.get('cpu_int8', {}).get('summary')}), {THREADS} threads, MediaPipe {doc['mediapipe']}. "
             "Each file validated on the whole test set on LiteRT and in MediaPipe (fed uint8 RGB images as an "
             "app feeds it); 'same top-1' is MediaPipe against LiteRT on the same file; p50 at batch 1, one run.", "",
             "| model | kind | input | test images | LiteRT: gates, acc. / agree. | MediaPipe: gates | MP acc. / agree. | "
             "same top-1 | p50 LiteRT / MP |", "|---|---|---|---:|---|---|---|---:|---|"]
    for r in doc["rows"]:
        lt, mp = r["litert"], r["mediapipe"]
        verdict = ("pass" if mp["passed"] else "FAIL") if mp["loaded"] else f"refused: {'; '.join(mp['failures'] or [])}"
        same = (mp.get("same_file") or {}).get("top1_agreement")
        lines.append(f"| {r['model']} | {r['kind']} | {r['input']} {r['input_shape']}"
                     f"{' (gray inside)' if r['rgb_adapter'] else ''} | {r['test_images']} | "
                     f"{'pass' if lt['passed'] else 'FAIL'}, {pct(lt['accuracy'], True)} / {pct(lt['agreement'])} | "
                     f"{verdict} | {pct(mp['accuracy'], True)} / {pct(mp['agreement'])} | "
                     f"{pct(same)} | {lt['p50_ms'] or 0:.3f} / {mp['p50_ms'] or 0:.3f} ms |")
    loaded = sum(r["mediapipe"]["loaded"] for r in doc["rows"])
    passed = sum(bool(r["mediapipe"]["passed"]) for r in doc["rows"])
    same = sum(bool(r["mediapipe"]["passed"]) == bool(r["litert"]["passed"]) for r in doc["rows"])
    lines += ["", f"{loaded} of {len(doc['rows'])} files loaded in MediaPipe; {passed} passed every gate there; the "
              f"verdict equals LiteRT's on {same} of {len(doc['rows'])}."]
    return "\n".join(lines)


def main() -> None:
    import mediapipe

    um._Subclassed()  # registers the subclassed user model's class (what --custom-objects does for a user)
    work = Path(tempfile.mkdtemp(prefix="resexport-app-sdk-"))
    rows = [row for name, path, kwargs in models(work) for row in one(name, path, kwargs, work)]
    doc = {"machine": machine(), "threads": THREADS, "mediapipe": mediapipe.__version__, "rows": rows}
    save("app_sdk", doc, markdown(doc))


if __name__ == "__main__":
    if sys.argv[1:] == ["--render"]:  # the Markdown again from the committed JSON
        import json

        save("app_sdk", (doc := json.loads((ROOT / "benchmarks/results/app_sdk.json").read_text())), markdown(doc))
    else:
        main()
