"""Reports: join manifest, validation.json and bench.json into report.md, report.png and a JSON
table. Computes no results; it only arranges what the stages measured."""

from __future__ import annotations

import json
from pathlib import Path

from exporter.bench import BENCH_FILE
from exporter.errors import InputError
from exporter.fsutil import atomic_path
from exporter.profiling import PROFILE_FILE
from exporter.run import Run
from exporter.validate import VALIDATION_FILE
from exporter import formats

REPORT_MD = "report.md"
REPORT_PNG = "report.png"


def _load_optional(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is corrupt ({exc})", hint="re-run the stage that writes it") from exc


def build_table(run) -> dict:
    """One row per artifact (Keras reference first): size, accuracy, change, agreement, p50 at
    batch 1, speed-up vs Keras. Missing stages leave their columns empty (None)."""
    run = Run.of(run)
    val = _load_optional(run / VALIDATION_FILE)
    bench = _load_optional(run / BENCH_FILE)
    vrows = {r.get("target", r["kind"]): r for r in (val or {}).get("artifacts", [])}
    brows = {}  # (target, mode) -> the batch-1 row
    for r in (bench or {}).get("results", []):
        if r["batch"] == 1:
            brows[(r["kind"] if r.get("mode") else r["target"], r.get("mode"))] = r
    others = {}  # kind -> its targets on runtimes beside the family's own, as validate and bench named them
    for r in [*(val or {}).get("artifacts", []), *(bench or {}).get("results", [])]:
        if r.get("target", r["kind"]) != r["kind"] and not r.get("mode"):
            others.setdefault(r["kind"], {})[r["target"]] = None
    ref_path = run.model_path
    ref_acc = (val or {}).get("reference", {}).get("accuracy", run.training.get("test_accuracy"))
    ref_kind = run.model_format
    ref_bench = brows.get(("keras", "compiled")) or brows.get((ref_kind, None))
    rows = [{"kind": "keras (reference, compiled call)" if ref_kind == "keras" else f"{ref_kind} (reference)",
             "file": run.model_file,
             "bytes": ref_path.stat().st_size if ref_path.is_file() else run.model.get("bytes"),
             "accuracy": ref_acc, "change_points": 0.0, "agreement": 100.0,
             "p50_ms_b1": ref_bench["p50_ms"] if ref_bench else None,
             "p50_ms_b1_predict": (brows.get(("keras", "predict")) or {}).get("p50_ms"),
             "speedup_vs_keras_predict": (ref_bench or {}).get("speedup_vs_keras_predict"),
             "batch_diff": _batch_diff((val or {}).get("reference", {})),
             "passed": None, "reference": True}]
    for target, entry in [(t, e) for k, e in run.artifacts.items() for t in (k, *others.get(k, ()))]:
        v, b = vrows.get(target, {}), brows.get((target, None), {})
        rows.append({"kind": target, "file": entry["file"], "bytes": entry["bytes"], "accuracy": v.get("accuracy"),
                     "change_points": v.get("change_points"),
                     "agreement": v.get("agreement_with_original", v.get("agreement")),  # always against yours
                     **{k: v.get(k) for k in QAT_FIELDS if k in v},
                     "p50_ms_b1": b.get("p50_ms"), "speedup_vs_keras_predict": b.get("speedup_vs_keras_predict"),
                     "speedup_vs_keras_compiled": b.get("speedup_vs_keras_compiled"),
                     "batch_diff": _batch_diff(v), "passed": v.get("passed"), "reference": False})
    for kind, v in vrows.items():  # kinds convert could not make: a failed row with no numbers
        if v["kind"] not in run.artifacts and "accuracy" not in v:
            rows.append({"kind": kind, "file": v.get("file"), "bytes": None, "accuracy": None, "change_points": None,
                         "agreement": None, "p50_ms_b1": None, "speedup_vs_keras_predict": None,
                         "speedup_vs_keras_compiled": None, "batch_diff": None, "passed": False, "reference": False})
    return {"run": str(run), "model": run.model_name, "dataset": run.dataset_name,
            "test_samples": (val or {}).get("dataset", {}).get("samples"),
            "environment": (bench or {}).get("environment"), "rows": rows,
            "bench_rows": [{"target": r["target"], "batch": r["batch"], "threads": r.get("threads")}
                           for r in (bench or {}).get("results", [])],
            "validation_passed": (val or {}).get("passed"), "skipped": (bench or {}).get("skipped", []),
            "output": (val or {}).get("reference", {}).get("output", run.output),
            "informative": (val or {}).get("informative"), "warnings": (val or {}).get("warnings", []),
            "apps": app_rows(run, vrows), "profile": _load_optional(run / PROFILE_FILE)}


def app_rows(run, vrows: dict) -> list[dict]:
    """Per artifact, what an app SDK gets: the file's app interface (manifest, conformance.app) and whether
    MediaPipe Tasks loaded it and passed the gates in `validate --runtimes mediapipe`."""
    rows = []
    for kind, entry in run.artifacts.items():
        app = (entry.get("conformance") or {}).get("app")
        if app is None:
            continue
        sdk = vrows.get(f"{kind} · mediapipe")
        rows.append({"kind": kind, "file": entry["file"], "input": app.get("input"),
                     "rgb_adapter": app.get("rgb_adapter"), "metadata_props": app.get("metadata_props"),
                     "mediapipe_ready": app.get("mediapipe_ready"),
                     "mediapipe": None if sdk is None else {"passed": sdk.get("passed"),
                                                             "same_file": sdk.get("same_file"),
                                                             "failures": sdk.get("failures", [])}})
    return rows


def _app_lines(table: dict) -> list[str]:
    lines = []
    for a in table.get("apps", []):
        if a.get("metadata_props"):
            lines.append(f"- `{a['file']}`: `metadata_props` {', '.join(a['metadata_props'])}")
            continue
        i = a.get("input") or {}
        what = f"{i.get('dtype')} {'RGB ' if i.get('color') == 'rgb' else ''}input" + (
            " (gray inside)" if a.get("rgb_adapter") else "")
        sdk = a.get("mediapipe")
        if sdk is None:
            said = "not yet loaded in MediaPipe (`resexport validate --runtimes mediapipe`)"
        elif sdk["passed"]:
            same = (sdk.get("same_file") or {}).get("top1_agreement")
            said = "**loaded and passed in MediaPipe Tasks' ImageClassifier**" + (
                f" (top-1 as LiteRT on {same:.2f}%)" if same is not None else "")
        else:
            said = f"**failed in MediaPipe Tasks**: {'; '.join(sdk['failures'])}"
        lines.append(f"- `{a['file']}`: {what}, TFLite metadata with labels; {said}" if a.get("mediapipe_ready")
                     else f"- `{a['file']}`: {what}; not an image input MediaPipe Tasks takes")
    return ["## Files for apps", "", *lines, ""] if lines else []


QAT_FIELDS = ("fine_tuned_model", "agreement_with_fine_tuned", "agreement_reference", "qat_loss", "class_shift",
              "qat_kept_step", "qat_float_stem")


def artifact_label(r: dict) -> str:
    """The artifact's name, and for a QAT file the model it was fine-tuned into (and how)."""
    name = r.get("target", r["kind"])
    if not r.get("fine_tuned_model"):
        return name
    how = "retrained on labels" if r.get("qat_loss") == "labels" else "distilled"
    kept = r.get("qat_kept_step")
    if kept:  # [step kept, steps run]
        how += " (calibrated only: no step agreed more with your model)" if kept[0] == 0 else \
            f" (step {kept[0]} of {kept[1]} kept)"
    if r.get("qat_float_stem"):
        how += f", its first {r['qat_float_stem']} layers float32"
    return f"{name} (QAT, {how} into {r['fine_tuned_model']})"


def agreement_cell(r: dict, model_file: str) -> str:
    """Top-1 agreement with the user's model; for a QAT file, with the fine-tuned model beside it."""
    with_original = r.get("agreement_with_original", r.get("agreement"))
    cell = f"{_fmt(with_original, '.2f')}%"
    if r.get("fine_tuned_model"):
        cell += (f" vs {model_file} ({_fmt(r.get('agreement_with_fine_tuned'), '.2f')}% vs "
                 f"{r['fine_tuned_model']})")
    return cell


def gate_cell(r: dict, fail: str = "FAIL") -> str:
    """pass / FAIL (with the reasons where given); for a file gated against another model than the
    user's (label QAT: the fine-tuned model), which."""
    text = {True: "pass", False: fail, None: "–"}[r.get("passed")]
    if r.get("passed") is False and r.get("failures"):
        text += " " + "; ".join(r["failures"])
    ref = r.get("agreement_reference")
    if r.get("fine_tuned_model") and ref == r["fine_tuned_model"] and r.get("passed") is not None:
        text += f" (gated against {ref}: a retrained model)"
    return text


def _batch_diff(validated: dict) -> float | None:
    """Largest output difference of the batch-invariance check (batch 1 / batch N / shuffled)."""
    b = validated.get("batch_invariance")
    return max(b["max_diff_batch_1"], b["max_diff_shuffled"]) if b else None


def _fmt(v, spec: str, none: str = "–") -> str:
    return none if v is None else format(v, spec)


# ------------------------------------------------------------------ rows: one layout for Markdown and the terminal

SUMMARY_HEADERS = ["artifact", "size", "accuracy", "vs Keras", "agreement", "batch diff", "p50 latency (b=1)",
                   "speed-up vs model.predict", "gate"]


def summary_rows(table: dict, *, bold_fail: bool = False) -> list[list[str]]:
    """The report's table as strings, one row per artifact (the Keras reference first)."""
    fail = "**FAIL**" if bold_fail else "FAIL"
    rows = []
    model_file = table["rows"][0]["file"] if table["rows"] else "the model"
    for r in table["rows"]:
        gate = "reference" if r["reference"] else gate_cell({**r, "failures": None}, fail)
        rows.append([artifact_label(r), f"{_fmt(r['bytes'] and r['bytes'] / 1024, '.1f')} KiB",
                     f"{_fmt(r['accuracy'] and 100 * r['accuracy'], '.2f')}%", f"{_fmt(r['change_points'], '+.2f')} pt",
                     agreement_cell(r, model_file), _fmt(r.get("batch_diff"), ".1e"),
                     f"{_fmt(r['p50_ms_b1'], '.3f')} ms", f"{_fmt(r['speedup_vs_keras_predict'], '.1f')}x", gate])
    return rows


CONVERT_HEADERS = ["kind", "file", "size", "status", "seconds", "float layers"]


def convert_rows(run, status: dict) -> list[dict]:
    """One row per kind convert was asked for (status: kind -> exporter.convert.KindOutcome): its file,
    size, whether it was written or kept (or why it failed), and for an int8 artifact made with
    --fallback auto or a QAT float stem how many layers stayed float."""
    run, rows = Run.of(run), []
    for kind, st in status.items():
        a = run.artifact(kind)
        if a is None or st.failed:  # the kind could not be made: its reason is its status

            rows.append({"kind": kind, "status": str(st), "file": formats.get(kind).filename, "bytes": None,
                         "size": "–", "seconds": "–"})
            continue
        rows.append({"kind": kind, "status": str(st), "file": a["file"], "bytes": a["bytes"],
                     "size": f"{a['bytes'] / 1024:.1f} KiB", "seconds": f"{a.get('seconds') or 0:.1f}",
                     **({"float_layers": len(a.get("float_layers") or [])}
                        if a.get("fallback") == "auto" or a.get("float_layers") else {})})
    return rows


INSPECT_HEADERS = ["#", "op", "output tensor", "worst channel noise/std", "tensor noise/signal", "detail", "float now"]


def inspect_rows(report: dict, top: int) -> list[list[str]]:
    """exporter.quantize.diagnose's per-layer table as strings, worst first."""
    rows = []
    for i, r in enumerate(report["layers"][:top], 1):
        detail = (f"rmse/scale {r['rmse_over_scale']:.3f}" if "rmse_over_scale" in r
                  else f"SQNR {r['sqnr_db']:.1f} dB" if r.get("sqnr_db") is not None else "")
        name = r["name"] if len(r["name"]) <= 70 else "…" + r["name"][-69:]
        rows.append([str(i), r["op"], name, f"{r['channel_noise_to_signal']:.4f}", f"{r['noise_to_signal']:.4f}",
                     detail, "yes" if r.get("float_in_artifact") else ""])
    return rows


VALIDATION_HEADERS = ["artifact", "size", "accuracy", "vs Keras", "agreement", "max |diff|", "mean |diff|",
                      "batch 1/N/shuffled", "moved most", "gate"]


def validation_rows(report: dict) -> list[list[str]]:
    """validation.json as strings: one row per artifact, failures spelled out in the gate column."""
    rows = []
    model_file = (report.get("reference") or {}).get("file") or "the model"
    for r in report["artifacts"]:
        if "accuracy" not in r:  # a kind that could not be made or run: no metrics, its reason in the gate column
            rows.append([r.get("target", r["kind"]), f"{r['bytes'] / 1024:.0f} KiB" if r.get("bytes") else "–", "–",
                         "–", "–", "–", "–",
                         "–", "–", "FAIL " + "; ".join(r["failures"])])
            continue
        moved = ", ".join(f"{m['class']} {m['change_points']:+.1f}" for m in r["moved_most"][:2]) or "-"
        b = r.get("batch_invariance") or {}
        rows.append([artifact_label(r), f"{r['bytes'] / 1024:.0f} KiB" if r.get("bytes") else "?",
                     f"{r['accuracy']:.2%}",
                     f"{r['change_points']:+.2f} pt", agreement_cell(r, model_file), f"{r['max_abs_diff']:.1e}",
                     f"{r['mean_abs_diff']:.1e}",
                     f"{max(b['max_diff_batch_1'], b['max_diff_shuffled']):.1e}" if b else "-", moved,
                     gate_cell(r)])
    return rows


BENCH_HEADERS = ["target", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms", "images/s", "cold start ms",
                 "vs predict", "vs compiled", "provider", "threads"]


def bench_rows(report: dict) -> list[list[str]]:
    """bench.json as strings: one row per (target, batch), then the skipped targets with their reason."""
    rows = [[r["target"], str(r["batch"]), f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}",
             f"{r['mean_ms']:.3f} ± {r['std_ms']:.3f}", f"{r['throughput_ips']:.0f}", f"{r['cold_start_ms']:.0f}",
             _speedup(r.get("speedup_vs_keras_predict")), _speedup(r.get("speedup_vs_keras_compiled")),
             str(r["provider"]), str(r["threads"] or "default")] for r in report["results"]]
    # the reason in full: the table wraps it, never cuts it
    rows += [[s["target"], "–", "skipped", "", "", "", "", "", "–", "–", s["reason"], ""] for s in report["skipped"]]
    return rows


PROFILE_HEADERS = ["target", "#", "node", "op", "layer", "share", "ms/call", "calls", "kernel / runs in"]


def profile_rows(doc: dict, top: int) -> list[list[str]]:
    """The top ops of each profiled target (a target without per-op time: its ops' split, not their time)."""
    rows = []
    for t in doc.get("targets", []):
        if not t.get("available"):
            rows.append([t["target"], "", "", "", "", "", "", "", f"not available: {t.get('reason', '')}"])
            continue
        for i, o in enumerate(t["ops"][:top] if t.get("timed") else [], 1):
            rows.append([t["target"] if i == 1 else "", str(i), str(o.get("node") or o.get("runtime_node")),
                         o["op_type"], o.get("layer") or "–", f"{o['share']:.1%}", f"{o['ms_per_call']:.3f}",
                         str(o["calls"]), str(o.get("kernel") or "")])
        if not t.get("timed"):
            split = ", ".join(f"{n} ops in {where}" for where, n in t.get("runs_in", {}).items())
            rows.append([t["target"], "", "", "", "", "", _fmt(t.get("call_ms"), ".3f"), "", f"{split} (no per-op time)"])
    return rows


def _profile_lines(doc: dict | None, top: int = 5) -> list[str]:
    """report.md's "Where the time goes": top ops per target and the Q/DQ share of int8 files."""
    if not doc:
        return []
    lines = ["## Where the time goes", "",
             f"From `resexport profile` (batch {doc.get('batch')}, {doc.get('runs')} calls, {doc.get('threads')} "
             "threads): each target's top ops by share of its timed total.", ""]
    for t in doc.get("targets", []):
        if not t.get("available"):
            lines.append(f"- **{t['target']}**: not available ({t.get('reason', '')})")
        elif t.get("timed"):
            top_ops = ", ".join(f"{o.get('node') or o.get('runtime_node')} {o['op_type']} {o['share']:.0%}"
                                for o in t["ops"][:top])
            qdq = f"; Q/DQ share {t['qdq_share']:.1%}" if t.get("precision") == "int8" else ""
            lines.append(f"- **{t['target']}** ({t['total_ms_per_call']:.2f} ms/call in its ops{qdq}): {top_ops}")
        else:
            split = ", ".join(f"{n} ops in {where}" for where, n in t.get("runs_in", {}).items())
            lines.append(f"- **{t['target']}** ({_fmt(t.get('call_ms'), '.2f')} ms/call): {split}. "
                         f"Cannot show: {t.get('cannot_show', '')}")
    return [*lines, ""]


def _speedup(v) -> str:
    """A speed-up as '1.5x'; '–' where there is no Keras row to compare with (a run without Keras)."""
    import math

    return "–" if v is None or not math.isfinite(v) else f"{v:.1f}x"


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
             f"device {env.get('device', '?')}). Speed-up is against Keras `model.predict` at batch 1 (the "
             "reference row: Keras' compiled `predict_on_batch` against its own `model.predict`). "
             f"The model outputs {table.get('output') or '?'}; differences are taken between probabilities. "
             "'batch diff' is the largest output difference between the same images run one at a time, in a "
             "batch, and in that batch shuffled (the batch-invariance check). Agreement is top-1 agreement with "
             f"your model `{table['rows'][0]['file'] if table['rows'] else '?'}`; a QAT file's row names the model it was "
             "fine-tuned into and its agreement with that one beside it.", "", *_cpu_lines(env, table)]
    lines += [f"> **Warning:** {w}" for w in table.get("warnings", [])] + ([""] if table.get("warnings") else [])
    lines += ["| " + " | ".join(SUMMARY_HEADERS) + " |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(table, bold_fail=True)]
    if table.get("skipped"):
        lines += ["", "Not benchmarked: " + "; ".join(f"{s['target']} ({s['reason']})" for s in table["skipped"])]
    lines += ["", f"![accuracy vs latency]({REPORT_PNG})", "", *_profile_lines(table.get("profile")), *_app_lines(table)]
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
