"""Training: fit a registry model on a dataset and create the run folder's first entries
(model.keras, history.json, manifest.json). Exports nothing.

The run folder is built in a temporary sibling folder and renamed into place at the end, so an
interrupted or failed training never leaves a half-made run, and an existing run is replaced only
with force=True.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from exporter import manifest as mf
from exporter.data import Dataset
from exporter.errors import OutputError, OutputExistsError, UsageError
from exporter.fsutil import current_umask, ensure_dir, sha256_file
from exporter.progress import NULL, Progress
from exporter.run import Run

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"


@dataclass(frozen=True)
class Recipe:
    """How to train. `schedule`: 'cosine' (decay to 0 over the run) or 'inverse-time' (Keras 2's
    Adam(decay=...) : lr / (1 + decay * step), which is what seed 003 used)."""

    epochs: int
    batch_size: int
    lr: float
    schedule: str = "cosine"
    decay: float = 0.0
    description: str = ""
    bn_momentum: float | None = None  # None: each BatchNormalization layer keeps the model's own


RECIPES = {
    "fast": Recipe(6, 128, 2e-3, "cosine", 0.0,
                   "CPU default: Adam 2e-3 with cosine decay, batch 128, 6 epochs"),
    "seed": Recipe(25, 150, 1e-4, "inverse-time", 1e-6,
                   "seed 003: Adam(lr=1e-4, decay=1e-6), batch 150, 25 epochs"),
}


@dataclass
class TrainResult:
    run: Path
    test_accuracy: float
    test_loss: float
    seconds: float
    epochs: int
    model: object = None  # the trained keras.Model (not serialised)
    reused: bool = False  # an existing run trained with the same inputs was kept


def training_inputs(model_name: str, dataset: Dataset, recipe: Recipe, seed: int) -> dict:
    """What a trained model depends on: the stage key's inputs."""
    return {"model": model_name, "dataset": mf.dataset_identity(dataset.describe()), "recipe": asdict(recipe),
            "seed": seed}


def training_key(model_name: str, dataset: Dataset, recipe: Recipe, seed: int) -> str:
    return mf.inputs_key(training_inputs(model_name, dataset, recipe, seed))


def existing_run(run: Path, key: str) -> TrainResult | None:
    """The run already in `run` if it was trained with the same inputs; None if there is none; an
    OutputExistsError if it was trained otherwise (or is not a run)."""
    from exporter.errors import ResexportError

    if not (run.exists() and any(run.iterdir())):
        return None
    try:
        training = Run(run).training
        same = training.get("inputs_key") == key
    except (ResexportError, KeyError, TypeError):
        same = False
    if not same:
        raise OutputExistsError(f"{run} holds a run trained with other settings (or is not a run)",
                                hint="pass --force to retrain it, or choose another --run/--out")
    return TrainResult(run, training["test_accuracy"], training["test_loss"], training["seconds"],
                       training["recipe"]["epochs"], reused=True)


def resolve_recipe(name: str, *, epochs=None, batch_size=None, lr=None, bn_momentum=None) -> Recipe:
    if name not in RECIPES:
        raise UsageError(f"unknown recipe '{name}'", hint=f"choose one of: {', '.join(RECIPES)}")
    r = RECIPES[name]
    for flag, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--lr", lr)):
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be positive, got {value}")
    if bn_momentum is not None and not 0 <= bn_momentum < 1:
        raise UsageError(f"--bn-momentum must be in [0, 1), got {bn_momentum}",
                         hint="0.9 suits runs of a few hundred steps; Keras' default is 0.99")
    return replace(r, epochs=epochs or r.epochs, batch_size=batch_size or r.batch_size, lr=lr or r.lr,
                   bn_momentum=r.bn_momentum if bn_momentum is None else bn_momentum)


def _set_bn_momentum(model, momentum: float) -> None:
    """The moving-statistics momentum is a training setting, not part of the function the model
    computes; with Keras' 0.99 a run of ~100 steps still carries ~1/3 of the initial statistics and
    scores near chance in inference mode."""
    import keras

    for layer in model.layers:  # the registry's models are flat
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def _optimizer(recipe: Recipe, steps: int):
    import keras

    if recipe.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(recipe.lr, decay_steps=max(steps, 1))
    elif recipe.schedule == "inverse-time":
        lr = keras.optimizers.schedules.InverseTimeDecay(recipe.lr, decay_steps=1, decay_rate=recipe.decay)
    else:
        raise UsageError(f"unknown schedule '{recipe.schedule}'")
    return keras.optimizers.Adam(learning_rate=lr)


def _progress_callback(task, epochs: int, history: list):
    import keras

    class _Cb(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()
            task.describe(f"epoch {epoch + 1}/{epochs}")

        def on_train_batch_end(self, batch, logs=None):
            task.advance(1)

        def on_epoch_end(self, epoch, logs=None):
            logs = {k: float(v) for k, v in (logs or {}).items()}
            history.append({"epoch": epoch + 1, "seconds": round(time.perf_counter() - self._t, 2), **logs})
            task.describe(f"epoch {epoch + 1}/{epochs} loss {logs.get('loss', float('nan')):.4f} "
                          f"acc {logs.get('accuracy', float('nan')):.4f}")
            log.info("epoch %d: %s", epoch + 1, logs)

    return _Cb()


@contextlib.contextmanager
def staged_run(run: Path, *, force: bool):
    """Yield a temporary folder beside `run`; on success it becomes `run` (replacing an old run
    only with force). On any failure, or Ctrl-C, the temporary folder is removed."""
    run = Path(run)
    if run.exists() and any(run.iterdir()) and not force:
        raise OutputExistsError(f"run folder {run} already exists",
                                hint="pass --force to replace it, or choose another --run")
    ensure_dir(run.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run.name}.", suffix=".partial", dir=run.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; a run folder gets the mode a plain mkdir would
    try:
        yield tmp
        old = None
        if run.exists():
            old = run.parent / f".{run.name}.old-{os.getpid()}"
            os.replace(run, old)
        os.replace(tmp, run)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise OutputError(f"could not write run folder {run}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train(*, model_name: str, dataset: Dataset, run: Path, recipe: Recipe, seed: int = 0,
          force: bool = False, reuse: bool = False, steps_per_execution: int | None = None,
          progress: Progress = NULL) -> TrainResult:
    """Build `model_name` for `dataset`, fit it with `recipe`, evaluate on the test split, and write
    the run folder `run`. With reuse=True, a run already there that was trained with the same inputs
    (its manifest's training.inputs_key) is returned as it is (reused=True); one trained otherwise is
    an OutputExistsError unless force=True."""
    import keras

    from exporter.models import MODELS, OUTPUT_CONVENTION, build_model, count_depth

    inputs = training_inputs(model_name, dataset, recipe, seed)
    key = training_key(model_name, dataset, recipe, seed)
    if reuse and not force:
        existing = existing_run(Path(run), key)
        if existing is not None:
            return existing
    if Path(run).exists() and any(Path(run).iterdir()) and not force:  # fail before the slow part
        raise OutputExistsError(f"run folder {run} already exists",
                                hint="pass --force to replace it, or choose another --run")
    ensure_dir(Path(run).parent)  # an unwritable --run fails now, not after the training
    keras.utils.set_random_seed(seed)
    model = build_model(model_name, dataset.input_shape, dataset.num_classes)
    if recipe.bn_momentum is not None:
        _set_bn_momentum(model, recipe.bn_momentum)
    steps_per_epoch = -(-len(dataset.y_train) // recipe.batch_size)
    backend = keras.backend.backend()
    if steps_per_execution is None:  # JAX on an accelerator is much faster with fused steps
        steps_per_execution = 1 if backend == "tensorflow" else min(16, steps_per_epoch)
    model.compile(optimizer=_optimizer(recipe, recipe.epochs * steps_per_epoch),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)
    history: list[dict] = []
    start = time.perf_counter()
    with progress.task(f"training {model_name} on {dataset.name}", total=recipe.epochs * steps_per_epoch) as task:
        model.fit(np.asarray(dataset.x_train), dataset.y_train, batch_size=recipe.batch_size, epochs=recipe.epochs,
                  shuffle=True, verbose=0, callbacks=[_progress_callback(task, recipe.epochs, history)])
    seconds = time.perf_counter() - start
    with progress.task("evaluating on the test set", total=None):
        test_loss, test_acc = model.evaluate(np.asarray(dataset.x_test), dataset.y_test, batch_size=500, verbose=0)

    with staged_run(run, force=force) as tmp:
        model.save(tmp / MODEL_FILE)
        (tmp / HISTORY_FILE).write_text(json.dumps(history, indent=2) + "\n")
        manifest = {
            "created": mf.now_iso(),
            "model": {"name": model_name, "file": MODEL_FILE, "sha256": sha256_file(tmp / MODEL_FILE),
                      "bytes": (tmp / MODEL_FILE).stat().st_size, "params": int(model.count_params()),
                      "depth": count_depth(model), "source": MODELS[model_name].source,
                      "input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes,
                      "input_name": model.inputs[0].name if model.inputs else "image",
                      "output": OUTPUT_CONVENTION, "output_detected_by": "registry model (softmax head)",
                      "format": "keras"},
            "dataset": dataset.describe(),
            **({"preprocessing": dataset.preprocessing.to_dict()} if dataset.preprocessing is not None else {}),
            "training": {"inputs_key": key, "inputs": inputs, "recipe": asdict(recipe), "seed": seed,
                         "backend": backend,
                         "steps_per_execution": steps_per_execution, "seconds": round(seconds, 1),
                         "test_accuracy": float(test_acc), "test_loss": float(test_loss)},
            "versions": mf.library_versions(),
            "artifacts": {},
        }
        mf.write_manifest(tmp, manifest)
    log.info("trained %s: test accuracy %.4f in %.1fs -> %s", model_name, test_acc, seconds, run)
    return TrainResult(Path(run), float(test_acc), float(test_loss), seconds, recipe.epochs, model)
