"""Reports: join manifest, validation.json and bench.json into report.md, report.png and a JSON
table. Computes no results; it only arranges what the stages measured."""

from __future__ import annotations

import json
from pathlib import Path

from exporter import manifest as mf
from exporter.bench import BENCH_FILE
from exporter.errors import InputError
from exporter.fsutil import atomic_path
from exporter.validate import VALIDATION_FILE

REPORT_MD = "report.md"
REPORT_PNG = "report.png"


def _load_optional(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is corrupt ({exc})", hint="re-run the stage that writes it") from exc


def build_table(run: Path) -> dict:
    """One row per artifact (Keras reference first): size, accuracy, change, agreement, p50 at
    batch 1, speed-up vs Keras. Missing stages leave their columns empty (None)."""
    man = mf.read_manifest(run)
    val = _load_optional(run / VALIDATION_FILE)
    bench = _load_optional(run / BENCH_FILE)
    vrows = {r["kind"]: r for r in (val or {}).get("artifacts", [])}
    brows = {}
    for r in (bench or {}).get("results", []):
        if r["batch"] == 1:
            brows[r["target"]] = r
    ref_path = run / man["model"]["file"]
    ref_acc = (val or {}).get("reference", {}).get("accuracy", man.get("training", {}).get("test_accuracy"))
    ref_bench = brows.get("keras (compiled)") or brows.get(man["model"].get("format", "keras"))
    rows = [{"kind": "keras (reference)", "file": man["model"]["file"],
             "bytes": ref_path.stat().st_size if ref_path.is_file() else man["model"].get("bytes"),
             "accuracy": ref_acc, "change_points": 0.0, "agreement": 100.0,
             "p50_ms_b1": ref_bench["p50_ms"] if ref_bench else None,
             "p50_ms_b1_predict": (brows.get("keras (predict)") or {}).get("p50_ms"),
             "speedup_vs_keras_predict": (ref_bench or {}).get("speedup_vs_keras_predict"),
             "passed": None, "reference": True}]
    for kind, entry in man["artifacts"].items():
        v, b = vrows.get(kind, {}), brows.get(kind, {})
        rows.append({"kind": kind, "file": entry["file"], "bytes": entry["bytes"], "accuracy": v.get("accuracy"),
                     "change_points": v.get("change_points"), "agreement": v.get("agreement"),
                     "p50_ms_b1": b.get("p50_ms"), "speedup_vs_keras_predict": b.get("speedup_vs_keras_predict"),
                     "speedup_vs_keras_compiled": b.get("speedup_vs_keras_compiled"),
                     "passed": v.get("passed"), "reference": False})
    return {"run": str(run), "model": man["model"].get("name"), "dataset": man["dataset"].get("name"),
            "test_samples": (val or {}).get("dataset", {}).get("samples"),
            "environment": (bench or {}).get("environment"), "rows": rows,
            "bench_rows": [{"target": r["target"], "batch": r["batch"], "threads": r.get("threads")}
                           for r in (bench or {}).get("results", [])],
            "validation_passed": (val or {}).get("passed"), "skipped": (bench or {}).get("skipped", [])}


def _fmt(v, spec: str, none: str = "–") -> str:
    return none if v is None else format(v, spec)


def _cpu_lines(env: dict, table: dict) -> list[str]:
    """The CPU's int8-relevant instruction sets and the threads every runtime got (from bench.json)."""
    if not env:
        return []
    int8 = (env.get("cpu_int8") or {}).get("summary", "not recorded")
    threads = sorted({r.get("threads") for r in table.get("bench_rows", []) if r.get("threads") is not None})
    return [f"CPU instruction sets for int8: **{int8}**. Threads per runtime: "
            f"{', '.join(map(str, threads)) or 'not recorded'} (physical cores: {env.get('physical_cores', '?')}).", ""]


def render_markdown(table: dict) -> str:
    env = table.get("environment") or {}
    lines = [f"# resexport report: {table['model']} on {table['dataset']}", "",
             f"Run `{table['run']}`. Accuracy on {table['test_samples'] or '?'} test images; latency is the "
             f"median of single calls at batch 1 on {env.get('cpu', '?')} ({env.get('cores', '?')} cores, "
             f"device {env.get('device', '?')}). Speed-up is against Keras `model.predict` at batch 1.", "",
             *_cpu_lines(env, table),
             "| artifact | size | accuracy | vs Keras | agreement | p50 latency (b=1) | speed-up vs Keras | gate |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in table["rows"]:
        gate = "reference" if r["reference"] else {True: "pass", False: "**FAIL**", None: "–"}[r["passed"]]
        lines.append(f"| {r['kind']} | {_fmt(r['bytes'] and r['bytes'] / 1024, '.1f')} KiB | "
                     f"{_fmt(r['accuracy'] and 100 * r['accuracy'], '.2f')}% | {_fmt(r['change_points'], '+.2f')} pt | "
                     f"{_fmt(r['agreement'], '.2f')}% | {_fmt(r['p50_ms_b1'], '.3f')} ms | "
                     f"{_fmt(r['speedup_vs_keras_predict'], '.1f')}x | {gate} |")
    if table.get("skipped"):
        lines += ["", "Not benchmarked: " + "; ".join(f"{s['target']} ({s['reason']})" for s in table["skipped"])]
    lines += ["", f"![accuracy vs latency]({REPORT_PNG})", ""]
    return "\n".join(lines)


def render_plot(table: dict, path: Path) -> bool:
    """Accuracy vs p50 latency, one point per artifact, marker area by file size. False if there
    is nothing to plot (no validation or bench yet) or matplotlib is missing."""
    pts = [r for r in table["rows"] if r["accuracy"] is not None and r["p50_ms_b1"]]
    if not pts:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    biggest = max(r["bytes"] or 1 for r in pts)
    sizes = {}
    for r in pts:
        size = 60 + 1400 * (r["bytes"] or 0) / biggest
        sizes[r["kind"]] = size * 1.3 if r["reference"] else size
        if r["reference"]:
            style = dict(marker="*", color="black", s=size * 1.3, zorder=3)
        elif r["passed"] is False:  # failed a gate: hollow, red edge
            style = dict(marker="o", facecolors="none", edgecolors="tab:red", linewidths=1.5, s=size, zorder=2)
        else:
            style = dict(marker="o", alpha=0.65, s=size, zorder=2)
        ax.scatter(r["p50_ms_b1"], 100 * r["accuracy"], **style)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.margins(x=0.12, y=0.12)
    _place_labels(ax, fig, pts, sizes)
    ax.set_xlabel("p50 latency at batch 1 (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{table['model']} on {table['dataset']}: accuracy vs latency\n(marker area ~ file size; "
                 "★ Keras; hollow red = failed its validation gate)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def _place_labels(ax, fig, pts: list[dict], sizes: dict) -> None:
    """Name every point just right of its marker; a label that would overlap one already placed
    moves down a line."""
    fig.canvas.draw()
    px = fig.dpi / 72  # pixels per point
    placed = []  # display-space boxes (x0, y0, x1, y1): the markers, then each label placed
    for r in pts:
        x, y = ax.transData.transform((r["p50_ms_b1"], 100 * r["accuracy"]))
        rad = (sizes[r["kind"]] ** 0.5) / 2 * px
        placed.append((x - rad, y - rad, x + rad, y + rad))
    for r in sorted(pts, key=lambda r: (-r["accuracy"], r["p50_ms_b1"])):
        label = "Keras (reference)" if r["reference"] else r["kind"]
        x, y = ax.transData.transform((r["p50_ms_b1"], 100 * r["accuracy"]))
        gap = (sizes[r["kind"]] ** 0.5) / 2 + 3  # marker radius + 3, in points
        width, height = (4.6 * len(label) + 2) * px, 10 * px  # 8 pt text, roughly
        dy = -4.0  # points: centred on the marker
        for _ in range(12):
            box = (x + gap * px, y + dy * px, x + gap * px + width, y + dy * px + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
            dy -= 10
        placed.append(box)
        leader = dict(arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5")) if dy != -4.0 else {}
        ax.annotate(label, (r["p50_ms_b1"], 100 * r["accuracy"]), textcoords="offset points",
                    xytext=(gap, dy), fontsize=8, **leader)


def write_report(run: Path) -> dict:
    table = build_table(run)
    with atomic_path(run / REPORT_MD) as tmp:
        tmp.write_text(render_markdown(table))
    table["plot"] = str(run / REPORT_PNG) if render_plot(table, run / REPORT_PNG) else None
    table["markdown"] = str(run / REPORT_MD)
    return table
