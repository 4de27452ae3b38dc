"""Issue 34: the run's files in headless Chromium (onnxruntime-web and LiteRT.js on WASM) against the native
runtimes (ONNX Runtime, LiteRT/XNNPACK) on the same files.

The committed Fashion-MNIST resmini (the demo's model on its data) is converted to every kind; each file is
validated on a stratified 500-image sample natively and in the browser, then timed at batch 1 with one
thread everywhere: `bench`'s p50 (what a caller sees: for the browser this includes the Python -> page round
trip through playwright) and the browser's in-page p50 (performance.now() around each model call, what a
web app sees), from 200 single-image calls after 20 warm-up calls.

Writes results/browser.{json,md}. Usage: python benchmarks/browser.py   (~3 min on 2 cores)"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from _common import ROOT, machine, save

import resexport as rx  # noqa: E402
from exporter import formats  # noqa: E402
from exporter.runtimes import load_runner  # noqa: E402
from exporter.runtimes.chromium import host  # noqa: E402
from exporter.run import open_for_run  # noqa: E402

MODEL = ROOT / "tests" / "fixtures" / "resmini_fmnist.keras"
KINDS = [k.name for k in formats.EXPORTABLE if k.family in ("onnx", "tflite")]
THREADS, LIMIT, CALLS, WARMUP = 1, 500, 200, 20


def in_page_p50(path: Path, kind: str, x) -> float:
    runner = load_runner(path, kind=kind, runtime="browser", threads=THREADS)
    for i in range(WARMUP):
        runner.predict(x[i: i + 1])
    runner.ms.clear()
    for i in range(CALLS):
        runner.predict(x[i % len(x): i % len(x) + 1])
    runner.close()
    return statistics.median(runner.ms)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="browser-bench-"))
    conv = rx.convert(MODEL, run=work / "resmini", data="fashion_mnist")
    run = conv.run
    runtimes = ["litert", "onnxruntime", "browser"]
    val = rx.validate(run, runtimes=runtimes, limit=LIMIT, threads=THREADS)
    timing = rx.bench(run, runtimes=runtimes, batches=(1,), reference=False, threads=THREADS, min_runs=50,
                      min_time=0.5, write=False).table(1)
    x = open_for_run(run, test_limit=LIMIT).x_test
    rows = []
    for kind in KINDS:
        label = f"{kind} · browser"
        native, web = val.artifacts.get(kind, {}), val.artifacts.get(label, {})
        rows.append({"kind": kind, "native_runtime": formats.get(kind).runtime,
                     "native": {"passed": native.get("passed"), "accuracy": native.get("accuracy"),
                                "agreement": native.get("agreement"), "p50_ms": timing.get(kind)},
                     "browser": {"passed": web.get("passed"), "accuracy": web.get("accuracy"),
                                 "agreement": web.get("agreement"), "failures": web.get("failures"),
                                 "provider": (web.get("runner") or {}).get("provider"),
                                 "served_as": (web.get("runner") or {}).get("served_as"),
                                 "p50_ms_via_python": timing.get(label),
                                 "p50_ms_in_page": in_page_p50(run.artifact_path(kind), kind, x)}})
    b = host()
    doc = {"machine": machine(), "chromium": b.version, "js_packages": b.packages, "threads": THREADS,
           "test_images": LIMIT, "model": "tests/fixtures/resmini_fmnist.keras (resmini, Fashion-MNIST)",
           "reference_accuracy": val.reference_accuracy, "rows": rows}
    save("browser", doc, markdown(doc))


def pct(v) -> str:
    return "–" if v is None else f"{v:.2f}%"


def acc(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def ms(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# The run's files in headless Chromium (WASM) against native", "",
             f"`python benchmarks/browser.py` on {m.get('cpu')} ({m.get('cores')} cores), {doc['threads']} thread "
             f"everywhere; Chromium {doc['chromium']}, "
             + ", ".join(f"{k} {v}" for k, v in doc["js_packages"].items())
             + f"; {doc['model']}, validated on {doc['test_images']} test images (Keras "
             f"{100 * doc['reference_accuracy']:.2f}%). p50 at batch 1 in ms: native = `bench` on ONNX Runtime / "
             "LiteRT; browser in page = performance.now() around each call in the page (what a web app sees); "
             "browser via Python = `bench --runtimes browser` (adds the playwright round trip).", "",
             "| kind | native | native acc. / agree. | browser | browser acc. / agree. | p50 native | "
             "p50 browser in page | p50 browser via Python |", "|---|---|---|---|---|---:|---:|---:|"]
    for r in doc["rows"]:
        n, w = r["native"], r["browser"]
        verdict = "pass" if w["passed"] else f"FAIL: {'; '.join(w['failures'] or [])}"
        lines.append(f"| {r['kind']} | {r['native_runtime']} | {acc(n['accuracy'])} / {pct(n['agreement'])} | {verdict} | "
                     f"{acc(w['accuracy'])} / {pct(w['agreement'])} | {ms(n['p50_ms'])} | {ms(w['p50_ms_in_page'])} | "
                     f"{ms(w['p50_ms_via_python'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
