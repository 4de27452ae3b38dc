"""Experiments. `depth`: seed 003's question, does adding residual connections help as the
network deepens? Plain vs residual at 12/20/32/50 layers, the seed's training settings by
default, with the seed's own numbers beside ours."""

from __future__ import annotations

from pathlib import Path

from exporter import data as data_mod
from exporter.fsutil import atomic_path, ensure_dir, write_json_atomic
from exporter.progress import NULL, Progress
from exporter.run import Run
from exporter.train import Recipe, existing_run, train, training_key

# Test accuracy (%) reported by seed 003 (../shared/seeds/README.md).
SEED003_REPORTED = {
    "plain": {12: 88.09, 20: 87.20, 32: 84.61, 50: 23.74},
    "residual": {12: 89.43, 20: 88.84, 32: 89.43, 50: 86.09},
}
DEPTHS = (12, 20, 32, 50)


def depth_study(*, out: Path, recipe: Recipe, dataset: data_mod.Dataset, depths=DEPTHS, seed: int = 0,
                device_note: str = "", force: bool = False, progress: Progress = NULL,
                on_model=lambda name, acc, s, reused: None) -> dict:
    """Train plain{d} and residual{d} for every depth; write depth.json, depth.md, depth.png in `out`
    (each model's run folder under out/runs/). Returns the JSON document.

    A model whose run folder already holds a run with the same recipe, data and seed is not trained
    again (so a long study can be split across several calls); a run made otherwise is an error
    unless force=True, which retrains everything."""
    import keras

    ensure_dir(out)
    plan = [(f"{kind}{depth}", kind, depth) for depth in depths for kind in ("plain", "residual")]
    if not force:  # refuse runs trained otherwise before training anything
        for name, _, _ in plan:
            existing_run(out / "runs" / name, training_key(name, dataset, recipe, seed))
    rows = []
    for name, kind, depth in plan:
        res = train(model_name=name, dataset=dataset, run=out / "runs" / name, recipe=recipe, seed=seed,
                    force=force, reuse=True, progress=progress)
        backend = (Run(res.run).training["backend"] if res.reused else keras.backend.backend())
        rows.append({"model": name, "kind": kind, "depth": depth, "test_accuracy": 100 * res.test_accuracy,
                     "seed_reported": SEED003_REPORTED[kind].get(depth), "train_seconds": round(res.seconds, 1),
                     "epochs": recipe.epochs, "backend": backend, "reused": res.reused, "run": str(res.run)})
        on_model(name, res.test_accuracy, res.seconds, res.reused)
    doc = {"study": "depth (seed 003)", "dataset": dataset.describe(), "recipe": recipe.__dict__, "seed": seed,
           "backend": keras.backend.backend(), "device": device_note, "rows": rows}
    write_json_atomic(out / "depth.json", doc)
    with atomic_path(out / "depth.md") as tmp:
        tmp.write_text(render_markdown(doc))
    render_plot(doc, out / "depth.png")
    return doc


def render_markdown(doc: dict) -> str:
    r = doc["recipe"]
    ds = doc["dataset"]
    sub = f" (subset: {ds['subset']})" if ds.get("subset") else ""
    lines = ["# Depth study: plain vs residual (seed 003)", "",
             f"{ds['name']}, {ds['train']} train / {ds['test']} test images{sub}; {r['epochs']} epochs, batch "
             f"{r['batch_size']}, Adam lr {r['lr']} ({r['schedule']})"
             f"{'' if r.get('bn_momentum') is None else ', BatchNorm momentum ' + str(r['bn_momentum'])}; "
             f"Keras backend {doc['backend']}; "
             f"device: {doc['device'] or 'not recorded'}.", "",
             "| depth | plain (ours) | plain (seed) | residual (ours) | residual (seed) |", "|---:|---:|---:|---:|---:|"]
    by = {(row["kind"], row["depth"]): row for row in doc["rows"]}
    for d in sorted({row["depth"] for row in doc["rows"]}):
        p, q = by.get(("plain", d), {}), by.get(("residual", d), {})
        lines.append(f"| {d} | {p.get('test_accuracy', float('nan')):.2f}% | {SEED003_REPORTED['plain'][d]:.2f}% | "
                     f"{q.get('test_accuracy', float('nan')):.2f}% | {SEED003_REPORTED['residual'][d]:.2f}% |")
    lines += ["", "![depth study](depth.png)", ""]
    return "\n".join(lines)


def render_plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for kind, color in (("plain", "tab:red"), ("residual", "tab:blue")):
        rows = sorted((r for r in doc["rows"] if r["kind"] == kind), key=lambda r: r["depth"])
        ax.plot([r["depth"] for r in rows], [r["test_accuracy"] for r in rows], "o-", color=color, label=f"{kind} (ours)")
        seed = SEED003_REPORTED[kind]
        ax.plot(list(seed), list(seed.values()), "s--", color=color, alpha=0.5, label=f"{kind} (seed 003)")
    ax.set_xlabel("depth (conv layers, seed 003's count)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(list(DEPTHS))
    ax.set_title(f"Depth study on {doc['dataset']['name']} ({doc['dataset']['train']:,} train images, "
                 f"{doc['recipe']['epochs']} epochs, {doc['backend']})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
