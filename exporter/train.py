"""Training: fit a registry model on a dataset and create the run folder's first entries
(model.keras, history.json, manifest.json). Exports nothing.

Training reads a streaming input (exporter.stream), runs on one device or data-parallel on several
(keras.distribution on JAX), and checkpoints every epoch in the run's staging folder
(`.NAME.partial/` beside it), which is renamed into place only when everything is written: an
interrupted run is never a half-made run, and the same call (or `train --resume RUN`) continues it
from its last complete epoch. An existing run is replaced only with force=True. `staged_run` is the
simpler temporary-folder form that convert uses.
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
from exporter.errors import (MissingRuntimeError, OutputError, OutputExistsError, ResexportError, UsageError,
                             importable, require)
from exporter.fsutil import current_umask, ensure_dir, sha256_file, write_json_atomic
from exporter.progress import NULL, Progress
from exporter.run import Run
from exporter.data.own import split_indices

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
    resumed: bool = False  # continued from a checkpoint of an interrupted run


def training_inputs(model_name: str, dataset: Dataset, recipe: Recipe, seed: int, *, augment=(),
                    val_split: float = 0.0, max_batches: int | None = None) -> dict:
    """What a trained model depends on: the stage key's inputs. The streaming options enter only
    when set, so runs trained without them keep their key. The device count does not: 1 and N
    devices at the same global batch train the same model (within float tolerance)."""
    extra = {**({"augment": list(augment)} if augment else {}), **({"val_split": val_split} if val_split else {}),
             **({"max_batches": max_batches} if max_batches else {})}
    return {"model": model_name, "dataset": mf.dataset_identity(dataset.describe()), "recipe": asdict(recipe),
            "seed": seed, **extra}


def training_key(model_name: str, dataset: Dataset, recipe: Recipe, seed: int, **streaming) -> str:
    return mf.inputs_key(training_inputs(model_name, dataset, recipe, seed, **streaming))


def existing_run(run: Path, key: str) -> TrainResult | None:
    """The run already in `run` if it was trained with the same inputs; None if there is none; an
    OutputExistsError if it was trained otherwise (or is not a run)."""
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


def swap_in(staging: Path, run: Path) -> None:
    """Make the finished folder `staging` the run folder `run`, replacing what was there only at the end."""
    try:
        old = None
        if run.exists():
            old = run.parent / f".{run.name}.old-{os.getpid()}"
            os.replace(run, old)
        os.replace(staging, run)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise OutputError(f"could not write run folder {run}: {exc.strerror or exc}") from exc


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
        swap_in(tmp, run)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------ devices

@dataclass(frozen=True)
class Devices:
    """Where training runs: the backend, how many devices (over all hosts), their kind, and which
    process of how many this is. `distribution` is the keras.distribution.DataParallel in use
    (None on one device)."""

    backend: str
    count: int
    kind: str
    platform: str
    process_index: int = 0
    process_count: int = 1
    distribution: object = None

    def describe(self) -> dict:
        return {"count": self.count, "kind": self.kind, "platform": self.platform,
                "processes": self.process_count, "engine": "keras.distribution.DataParallel"
                if self.distribution is not None else "single device"}


def parse_devices(text) -> int | str:
    """--devices: 'all' or a positive whole number."""
    if text is None:
        return 1
    text = str(text).strip().lower()
    if text == "all":
        return "all"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise UsageError(f"--devices takes 'all' or a positive whole number, got '{text}'")
    return n


def _multi_host_env() -> bool:
    n = os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "").strip()
    return n.isdigit() and int(n) > 1


def resolve_devices(devices="1") -> Devices:
    """Choose the devices to train on. On JAX: the local devices (all hosts' after
    keras.distribution.initialize(), done here when KERAS_DISTRIBUTION_NUM_PROCESSES > 1), the
    first N of them in a DataParallel distribution. Other backends train on one device and refuse
    more, pointing at KERAS_BACKEND=jax."""
    import keras

    want = parse_devices(devices)
    backend = keras.backend.backend()
    if backend != "jax":
        if want == 1 or (want == "all" and _visible_accelerators(backend) <= 1):
            return Devices(backend, 1, *_single_device_kind(backend))
        if not importable("jax"):
            raise MissingRuntimeError(f"--devices {want} needs Keras on JAX (this is {backend}), and jax is not installed",
                                      hint="install it with: pip install jax, then run with KERAS_BACKEND=jax; "
                                           "--devices 1 trains here")
        raise UsageError(f"--devices {want} needs the JAX backend (this is {backend}): run with KERAS_BACKEND=jax",
                         hint="data-parallel training uses keras.distribution, which runs on JAX; "
                              "--devices 1 trains here")
    import jax

    if _multi_host_env() and not getattr(resolve_devices, "_initialized", False):
        keras.distribution.initialize()  # reads KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID
        resolve_devices._initialized = True
    found = jax.devices()
    n = len(found) if want == "all" else want
    if n > len(found):
        raise UsageError(f"--devices {n}: only {len(found)} device(s) found ({found[0].platform})",
                         hint="pass --devices all, or on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N")
    dist = None
    if n > 1:
        dist = keras.distribution.DataParallel(devices=[f"{d.platform}:{d.id}" for d in found[:n]])
    return Devices("jax", n, found[0].device_kind, found[0].platform, jax.process_index(), jax.process_count(), dist)


def _visible_accelerators(backend: str) -> int:
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_logical_devices("GPU"))
    if backend == "torch":
        import torch

        return torch.cuda.device_count()
    return 1


def _single_device_kind(backend: str) -> tuple[str, str]:
    if _visible_accelerators(backend) > 0 and backend in ("tensorflow", "torch"):
        return "gpu", "gpu"
    return "cpu", "cpu"


# ------------------------------------------------------------------------------ checkpoints

STATE_FILE = "state.json"
CHECKPOINT_DIR = "checkpoint"


def staging_dir(run: Path) -> Path:
    """Where a run is built, checkpointed and resumed from: a hidden sibling of the run folder. It
    becomes the run (one rename) only when training and evaluation are complete."""
    run = Path(run)
    return run.parent / f".{run.name}.partial"


def read_checkpoint(run: Path) -> dict | None:
    """The last complete epoch's checkpoint state of `run`'s staging folder, or None."""
    state = mf.read_json_if(staging_dir(run) / CHECKPOINT_DIR / STATE_FILE)
    if state is None or not (staging_dir(run) / CHECKPOINT_DIR / str(state.get("weights", ""))).is_file():
        return None
    return state


def find_partial(key: str, root: Path | None = None) -> Path | None:
    """A run under `root` (default: the artifacts root) left unfinished by a run with this inputs
    key, so that re-running the same command without --run continues it."""
    root = Path(root or mf.artifacts_root())
    if not root.is_dir():
        return None
    found = []
    for st in root.glob(f".*.partial/{CHECKPOINT_DIR}/{STATE_FILE}"):
        state = mf.read_json_if(st)
        if state and state.get("inputs_key") == key and state.get("run"):
            found.append((st.stat().st_mtime, Path(state["run"])))
    return max(found)[1] if found else None


def resume_command(run: Path) -> dict:
    """The arguments an interrupted run was started with (stored with its checkpoint)."""
    state = read_checkpoint(Path(run))
    if state is None:
        if (Path(run) / mf.MANIFEST).is_file():
            raise UsageError(f"{run} is a finished run; there is nothing to resume",
                             hint="train a new one with --run, or retrain it with --force")
        raise UsageError(f"{run} has no interrupted training to resume ({staging_dir(run)} holds no checkpoint)",
                         hint="start it with `resexport train --run RUN`")
    if not state.get("command"):
        raise UsageError(f"the checkpoint of {run} was not written by `resexport train`; resume it with the "
                         "same library call")
    return dict(state["command"])


def _seed_states(model) -> list:
    """The model's random state that is not a weight: the SeedGenerator of each random layer
    (Dropout) in model.variables order. save_weights does not store them; without them a resumed
    run drops different units than an uninterrupted one."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _rng_state(model) -> dict:
    state = {"layer_seed_states": [{"path": v.path, "value": np.asarray(v.value).tolist()} for v in _seed_states(model)]}
    try:  # Keras' global seed generator, used by random ops given no seed (internal API)
        from keras.src.random.seed_generator import global_seed_generator

        state["keras_global_seed_state"] = np.asarray(global_seed_generator().state.value).tolist()
    except Exception:  # noqa: BLE001
        pass
    return state


def _restore_rng(model, state: dict) -> None:
    saved = state.get("layer_seed_states", [])
    current = _seed_states(model)
    if len(saved) != len(current):  # by position: Keras numbers seed generators per process (_2, _4, ...)
        log.warning("the checkpoint's random layer states do not match the model; dropout will differ")
    else:
        for v, s in zip(current, saved):
            v.assign(np.asarray(s["value"], dtype=v.dtype))
    values = state.get("keras_global_seed_state")
    if values is not None:
        try:
            from keras.src.random.seed_generator import global_seed_generator

            gen = global_seed_generator()
            gen.state.assign(np.asarray(values, dtype=gen.state.dtype))
        except Exception:  # noqa: BLE001
            log.warning("could not restore Keras' global seed generator")


def _checkpoint_callback(model, folder: Path, base: dict, history: list, clock):
    """Every epoch: the weights with the optimizer's state (its step drives the schedule) to a new
    file, then state.json (epoch, history, seed, data order) renamed over the old one, then the
    older weights removed. A kill at any moment leaves the previous or the new checkpoint whole."""
    import keras

    class _Checkpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            name = f"epoch-{epoch + 1:04d}.weights.h5"
            tmp = folder / f".tmp-{os.getpid()}-{name}"
            model.save_weights(tmp)
            os.replace(tmp, folder / name)
            state = {**base, "epoch": epoch + 1, "weights": name, "history": history,
                     "seconds": round(clock(), 2), "optimizer_iterations": int(model.optimizer.iterations),
                     "rng": {"seed": base["seed"], "data_order": f"rng([seed, epoch]) for epoch >= {epoch + 1}",
                             **_rng_state(model)}}
            write_json_atomic(folder / STATE_FILE, state)
            for old in folder.glob("epoch-*.weights.h5"):
                if old.name != name:
                    old.unlink(missing_ok=True)
            log.info("checkpoint: epoch %d -> %s", epoch + 1, folder / name)

    return _Checkpoint()


def _promote(staging: Path, run: Path, *, force: bool) -> None:
    """Rename the finished staging folder into place (replacing an old run only with force)."""
    if run.exists() and any(run.iterdir()) and not force:
        raise OutputExistsError(f"run folder {run} already exists",
                                hint="pass --force to replace it, or choose another --run")
    swap_in(staging, run)


# ------------------------------------------------------------------------------ train

def train(*, model_name: str, dataset: Dataset, run: Path, recipe: Recipe, seed: int = 0,
          force: bool = False, reuse: bool = False, steps_per_execution: int | None = None,
          augment=(), val_split: float = 0.0, devices="1", workers: int | None = None,
          max_batches: int | None = None, resume: bool = True, command: dict | None = None,
          progress: Progress = NULL) -> TrainResult:
    """Build `model_name` for `dataset`, fit it with `recipe` from a streaming input pipeline
    (exporter.stream), evaluate on the test split, and write the run folder `run`.

    augment: ('flip', 'crop') applied to training batches only. val_split: a seeded, stratified
    fraction of the training split held out and evaluated each epoch (never the test set).
    devices: 1 (default), N or 'all' (JAX: keras.distribution.DataParallel; the global batch
    recipe.batch_size is split across devices). max_batches: cap on the batches of an epoch.

    Every epoch is checkpointed in the staging folder staging_dir(run); with resume=True (default)
    a staging folder left by an interrupted run with the same inputs is continued from its last
    complete epoch; force=True discards it and any old run. `command`: the caller's arguments,
    stored with the checkpoint so `train --resume RUN` can repeat them. With reuse=True, a run
    already there that was trained with the same inputs is returned as it is (reused=True)."""
    keras = require("keras", extra="full", purpose="Training")  # a missing backend: one line (exit 5)
    from exporter import models, stream  # both import Keras: the edge box imports this module without it

    run = Path(run)
    augment = tuple(augment or ())
    if val_split and not 0 < val_split < 1:
        raise UsageError(f"--val-split must be between 0 and 1 (exclusive), got {val_split}")
    if max_batches is not None and max_batches <= 0:
        raise UsageError(f"--max-batches must be positive, got {max_batches}")
    streaming = {"augment": augment, "val_split": val_split, "max_batches": max_batches}
    key = training_key(model_name, dataset, recipe, seed, **streaming)
    if reuse and not force:
        existing = existing_run(run, key)
        if existing is not None:
            return existing
    state = _staging_state(run, key, resume=resume, force=force)
    staging = staging_dir(run)
    ckpt_dir = ensure_dir(staging / CHECKPOINT_DIR)
    try:
        dev = resolve_devices(devices)
        if recipe.batch_size % dev.count:
            raise UsageError(f"--batch-size {recipe.batch_size} does not split across {dev.count} devices",
                             hint=f"use a multiple of {dev.count}")
        workers = workers if workers is not None else max(1, min(4, os.cpu_count() or 1))
        streams = _streams(stream.Batches, dataset, recipe, dev, seed=seed, workers=workers, state=state, **streaming)
        fit = _fit(keras, models, stream, model_name, dataset, recipe, dev, streams, state=state, seed=seed, ckpt_dir=ckpt_dir,
                   base={"run": str(run), "inputs_key": key, "seed": seed, "command": command or {}},
                   steps_per_execution=steps_per_execution, progress=progress)
        model = fit.model if dev.count == 1 else _on_one_device(models, fit.model, model_name, dataset)
        test = stream.Batches(dataset.x_test, dataset.y_test, np.arange(len(dataset.y_test)), 500, workers=workers)
        with progress.task("evaluating on the test set", total=None):
            try:
                test_loss, test_acc = model.evaluate(test, verbose=0)
            finally:
                test.close()
        for stale in (MODEL_FILE, HISTORY_FILE, mf.MANIFEST):
            (staging / stale).unlink(missing_ok=True)
        model.save(staging / MODEL_FILE)
        (staging / HISTORY_FILE).write_text(json.dumps(fit.history, indent=2) + "\n")
        training = {"inputs_key": key, "inputs": training_inputs(model_name, dataset, recipe, seed, **streaming),
                    **_training_record(recipe, dev, streams, fit, seed=seed, augment=augment, val_split=val_split,
                                       state=state),
                    "test_accuracy": float(test_acc), "test_loss": float(test_loss)}
        mf.write_manifest(staging, _run_manifest(models, staging, model, model_name, dataset, training))
        shutil.rmtree(staging / CHECKPOINT_DIR, ignore_errors=True)
        _promote(staging, run, force=force)
    except BaseException:
        if not (staging / CHECKPOINT_DIR / STATE_FILE).exists():  # nothing to resume: leave nothing
            shutil.rmtree(staging, ignore_errors=True)
        else:
            log.warning("training of %s stopped; its last complete epoch is kept in %s "
                        "(resume: resexport train --resume %s)", run, staging, run)
        raise
    log.info("trained %s: test accuracy %.4f in %.1fs -> %s", model_name, test_acc, fit.seconds, run)
    return TrainResult(run, float(test_acc), float(test_loss), fit.seconds, recipe.epochs, model, resumed=bool(state))


def _staging_state(run: Path, key: str, *, resume: bool, force: bool) -> dict | None:
    """Check the run folder can be written (before the slow part) and return the checkpoint state of an
    interrupted run with the same inputs to continue (None: start afresh, its staging folder cleared)."""
    if run.exists() and any(run.iterdir()) and not force:
        raise OutputExistsError(f"run folder {run} already exists",
                                hint="pass --force to replace it, or choose another --run")
    ensure_dir(run.parent)  # an unwritable --run fails now, not after the training
    staging = staging_dir(run)
    state = read_checkpoint(run) if resume and not force else None
    if state is not None and state.get("inputs_key") != key:
        raise OutputExistsError(f"{staging} holds an unfinished run with other settings",
                                hint=f"resume it with `resexport train --resume {run}`, or pass --force to discard it")
    if state is None and staging.exists():
        shutil.rmtree(staging)
    return state


@dataclass
class _Streams:
    train: object
    val: object | None
    train_idx: np.ndarray
    val_idx: np.ndarray


def _streams(Batches, dataset: Dataset, recipe: Recipe, dev, *, seed: int, workers: int, state, augment, val_split,
             max_batches) -> _Streams:
    """The training and validation batches (exporter.stream), sharded for this process."""
    n_train = len(dataset.y_train)
    if val_split:
        train_idx, val_idx = split_indices(np.asarray(dataset.y_train), val_split, seed)
    else:
        train_idx, val_idx = np.arange(n_train), np.zeros(0, np.int64)
    shard = (dev.process_index, dev.process_count)
    stream = Batches(dataset.x_train, dataset.y_train, train_idx, recipe.batch_size, seed=seed, shuffle=True,
                     augment=augment, drop_remainder=dev.count > 1, max_batches=max_batches, shard=shard,
                     epoch=int(state["epoch"]) if state else 0, workers=workers)
    val_batch = min(recipe.batch_size, len(val_idx) // dev.count * dev.count)  # full batches on N devices
    if len(val_idx) and not val_batch:
        stream.close()
        raise UsageError(f"--val-split {val_split} holds out {len(val_idx)} images, fewer than the "
                         f"{dev.count} devices", hint="raise --val-split")
    val_stream = (Batches(dataset.x_train, dataset.y_train, val_idx, val_batch, drop_remainder=dev.count > 1,
                          shard=shard, workers=workers) if len(val_idx) else None)
    if stream.num_batches == 0:
        stream.close()
        raise UsageError(f"{len(train_idx)} training images make no full batch of {recipe.batch_size}",
                         hint="lower --batch-size")
    return _Streams(stream, val_stream, train_idx, val_idx)


@dataclass
class _Fit:
    model: object
    history: list
    seconds: float
    backend: str
    steps_per_execution: int
    resumed_from: list


def _fit(keras, models, stream, model_name, dataset, recipe, dev, streams: _Streams, *, state, seed, ckpt_dir, base,
         steps_per_execution, progress) -> _Fit:
    """Build, compile and fit the model (from the checkpoint `state` when resuming), on the distribution
    of `dev`; every epoch checkpointed in ckpt_dir. The streams are closed after."""
    steps_per_epoch = streams.train.num_batches
    backend = keras.backend.backend()
    if steps_per_execution is None:  # JAX on an accelerator is much faster with fused steps
        steps_per_execution = 1 if backend == "tensorflow" else min(16, steps_per_epoch)
    previous = keras.distribution.distribution() if backend == "jax" else None
    if dev.distribution is not None:
        keras.distribution.set_distribution(dev.distribution)
    try:
        keras.utils.set_random_seed(seed)
        model = models.build_model(model_name, dataset.input_shape, dataset.num_classes)
        if recipe.bn_momentum is not None:
            _set_bn_momentum(model, recipe.bn_momentum)
        model.compile(optimizer=_optimizer(recipe, recipe.epochs * steps_per_epoch),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                      steps_per_execution=steps_per_execution)
        history: list[dict] = []
        initial_epoch, before = 0, 0.0
        if state is not None:
            model.optimizer.build(model.trainable_variables)
            model.load_weights(ckpt_dir / state["weights"])
            _restore_rng(model, state.get("rng", {}))
            initial_epoch, before = int(state["epoch"]), float(state.get("seconds", 0.0))
            history = list(state.get("history", []))
            log.info("resuming %s from epoch %d (%s)", base["run"], initial_epoch, ckpt_dir / state["weights"])
        start = time.perf_counter()
        base = {**base, "resumed_from": ([*state.get("resumed_from", []), initial_epoch] if state else [])}
        remaining = max(recipe.epochs - initial_epoch, 0)
        with progress.task(f"training {model_name} on {dataset.name}", total=remaining * steps_per_epoch) as task:
            if remaining:
                model.fit(streams.train, epochs=recipe.epochs, initial_epoch=initial_epoch,
                          validation_data=streams.val,
                          shuffle=False,  # the stream shuffles, by (seed, epoch); Keras' own shuffle is unseeded state
                          verbose=0, callbacks=[stream.epoch_setter(streams.train),
                                                _progress_callback(task, recipe.epochs, history),
                                                _checkpoint_callback(model, ckpt_dir, base, history,
                                                                     lambda: before + time.perf_counter() - start)])
        seconds = before + time.perf_counter() - start
    finally:
        if backend == "jax":
            keras.distribution.set_distribution(previous)
        for s_ in (streams.train, streams.val):
            if s_ is not None:
                s_.close()
    return _Fit(model, history, seconds, backend, steps_per_execution, base["resumed_from"])


def _on_one_device(models, model, model_name: str, dataset: Dataset):
    """The trained model on one device, to evaluate every test image (a split batch needs full batches)."""
    single = models.build_model(model_name, dataset.input_shape, dataset.num_classes)
    single.set_weights([np.asarray(w) for w in model.get_weights()])
    single.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return single


def _training_record(recipe: Recipe, dev, streams: _Streams, fit: _Fit, *, seed, augment, val_split, state) -> dict:
    """The manifest's `training` entry (without the key, inputs and test figures)."""
    per_process = recipe.batch_size // dev.process_count
    val_idx = streams.val_idx
    return {"recipe": asdict(recipe), "seed": seed, "backend": fit.backend, "devices": dev.describe(),
            "global_batch": recipe.batch_size, "per_device_batch": recipe.batch_size // dev.count,
            **({"per_process_batch": per_process} if dev.process_count > 1 else {}),
            "streaming": {**streams.train.describe(), "shuffle_seed": seed},
            "augmentation": list(augment),
            "validation": ({"fraction": val_split, "images": int(len(val_idx)), "seed": seed,
                            "from": "training split (stratified)"} if len(val_idx) else None),
            "train_images": int(len(streams.train_idx)),
            "resumed": bool(state), **({"resumed_from_epochs": fit.resumed_from} if state else {}),
            "steps_per_execution": fit.steps_per_execution, "seconds": round(fit.seconds, 1)}


def _run_manifest(models, staging: Path, model, model_name: str, dataset: Dataset, training: dict) -> dict:
    return {
        "created": mf.now_iso(),
        "model": {"name": model_name, "file": MODEL_FILE, "sha256": sha256_file(staging / MODEL_FILE),
                  "bytes": (staging / MODEL_FILE).stat().st_size, "params": int(model.count_params()),
                  "depth": models.count_depth(model), "source": models.MODELS[model_name].source,
                  "input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes,
                  "input_name": model.inputs[0].name if model.inputs else "image",
                  "output": models.OUTPUT_CONVENTION, "output_detected_by": "registry model (softmax head)",
                  "format": "keras"},
        "dataset": dataset.describe(),
        **({"preprocessing": dataset.preprocessing.to_dict()} if dataset.preprocessing is not None else {}),
        "training": training,
        "versions": mf.library_versions(),
        "artifacts": {},
    }
