"""Experiments. `depth`: seed 003's question, does adding residual connections help as the
network deepens? Plain vs residual at 12/20/32/50 layers, the seed's training settings by
default, with the seed's own numbers beside ours."""

from __future__ import annotations

import json
from pathlib import Path

from exporter import data as data_mod
from exporter.fsutil import atomic_path, ensure_dir, write_json_atomic
from exporter.progress import NULL, Progress
from exporter.train import Recipe, train

# Test accuracy (%) reported by seed 003 (../shared/seeds/README.md).
SEED003_REPORTED = {
    "plain": {12: 88.09, 20: 87.20, 32: 84.61, 50: 23.74},
    "residual": {12: 89.43, 20: 88.84, 32: 89.43, 50: 86.09},
}
DEPTHS = (12, 20, 32, 50)


def _same_data(a: dict, b: dict) -> bool:
    """Same images: `source` (where the files were found) may differ between machines, and `convert`
    adds the test split's `content_hash` to a run's manifest later."""
    strip = lambda d: json.loads(json.dumps({k: v for k, v in d.items()  # noqa: E731
                                             if k not in ("source", "content_hash")}))
    return strip(a) == strip(b)


def _reusable(run: Path, name: str, recipe: Recipe, dataset: data_mod.Dataset, seed: int) -> dict | None:
    """The manifest of an existing run of `name` trained exactly as asked (same recipe, data and
    seed), else None. Raises OutputExistsError for a run made some other way."""
    from dataclasses import asdict

    from exporter import manifest as mf
    from exporter.errors import OutputExistsError, ResexportError

    if not (run.exists() and any(run.iterdir())):
        return None
    try:
        man = mf.read_manifest(run)
        same = (man["model"]["name"] == name and man["training"]["recipe"] == json.loads(json.dumps(asdict(recipe)))
                and man["training"]["seed"] == seed and _same_data(man["dataset"], dataset.describe()))
    except (ResexportError, KeyError, TypeError):
        same, man = False, None
    if not same:
        raise OutputExistsError(f"{run} holds a run trained with other settings (or is not a run)",
                                hint="pass --force to retrain it, or choose another --out")
    return man


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
    reuse = {} if force else {name: _reusable(out / "runs" / name, name, recipe, dataset, seed) for name, _, _ in plan}
    rows = []
    for name, kind, depth in plan:
        man = reuse.get(name)
        if man is not None:
            acc, seconds, run = man["training"]["test_accuracy"], man["training"]["seconds"], out / "runs" / name
            backend = man["training"]["backend"]
        else:
            res = train(model_name=name, dataset=dataset, run=out / "runs" / name, recipe=recipe, seed=seed,
                        force=True, progress=progress)
            acc, seconds, run, backend = res.test_accuracy, res.seconds, res.run, keras.backend.backend()
        rows.append({"model": name, "kind": kind, "depth": depth, "test_accuracy": 100 * acc,
                     "seed_reported": SEED003_REPORTED[kind].get(depth), "train_seconds": round(seconds, 1),
                     "epochs": recipe.epochs, "backend": backend, "reused": man is not None, "run": str(run)})
        on_model(name, acc, seconds, man is not None)
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


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())
