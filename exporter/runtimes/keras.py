"""Keras runner (the reference) and SavedModel runner. Keras runs on whatever backend is active
(TensorFlow, JAX, torch); only the SavedModel runner needs TensorFlow."""

from __future__ import annotations

import contextlib
import re
import zipfile
from pathlib import Path


from exporter.errors import InputError, MissingRuntimeError, ModelFileError, require
from exporter.runtimes.base import Runner, check_file


def load_keras_model(path: Path, *, unsafe: bool = False):
    """Load a .keras or legacy .h5 model; safe mode on unless `unsafe` (Lambda layers run code)."""
    keras = require("keras", extra="full", purpose="Loading a Keras model")
    path = Path(path)
    check_file(path, "keras")
    if path.is_file() and path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        # Keras itself reports a truncated archive as "File not found".
        raise ModelFileError(f"{path} is not a complete .keras archive (the zip is truncated or corrupt)",
                             hint="the file is corrupt or truncated; re-create it")
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=not unsafe)
    except ValueError as exc:
        text = " ".join(str(exc).split())
        if "safe_mode" in text or "Lambda" in text:
            raise InputError(f"{path} contains a Lambda layer, which runs arbitrary code and is refused "
                             "in Keras safe mode", hint="if you trust the file, pass --unsafe") from exc
        raise ModelFileError(f"cannot load {path}: {text[:300]}",
                             hint="the file is corrupt or not a Keras model; re-create it") from exc
    except TypeError as exc:
        text = " ".join(str(exc).split())
        found = re.search(r"Could not locate (class|function) '([^']+)'", text)
        what = f"the custom {found[1]} '{found[2]}'" if found else f"a custom object ({text[:200]})"
        raise InputError(f"{path} uses {what}, which Keras does not know",
                         hint="pass `resexport --custom-objects FILE.py <command> ...` with the file that defines it "
                              "(decorated with keras.saving.register_keras_serializable), or re-save the model "
                              "without it") from exc
    except Exception as exc:  # zip/HDF5 corruption surfaces as many types
        raise ModelFileError(f"cannot load {path}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                             hint="the file is corrupt or truncated; re-create it") from exc


def import_custom_objects(source: str) -> None:
    """Run the user's module that defines custom layers/models, so Keras can deserialise them: a
    path to a .py file, or the dotted name of an importable module."""
    import importlib
    import importlib.util
    import sys

    path = Path(source)
    try:
        if path.suffix == ".py" or path.exists():
            if not path.is_file():
                raise InputError(f"--custom-objects {source} does not exist",
                                 hint="pass the .py file that defines your custom layers, or a module name")
            name = f"resexport_custom_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(source)
    except InputError:
        raise
    except Exception as exc:  # the user's code: any error it raises is bad input to us
        raise InputError(f"--custom-objects {source} failed to import: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]}", hint="fix that file or module, or import it "
                                                                    "yourself to see the traceback") from exc


def accelerator_available() -> str | None:
    """Name of a GPU the active Keras backend can use, else None."""
    import keras

    backend = keras.backend.backend()
    with contextlib.suppress(Exception):
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return gpus[0].name if gpus else None
        if backend == "jax":
            import jax

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            return str(gpus[0].device_kind) if gpus else None
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return None


def _declared(model, attr: str):
    """model.input_shape / output_shape of a functional or Sequential model: a single tensor's shape
    (the first, for several); None where the model declares none (a subclassed model)."""
    try:
        shape = getattr(model, attr)
    except (AttributeError, ValueError):
        return None
    if isinstance(shape, list) and shape and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(shape) if shape is not None else None


def _tensorflow_threads(threads: int | None) -> int | None:
    """Ask TensorFlow for `threads` intra-op threads (possible only before its runtime starts) and
    return the count it actually uses (its default, 0, means one per logical CPU). None on other backends."""
    import os
    import sys

    tf = sys.modules.get("tensorflow")
    if tf is None:
        return None
    with contextlib.suppress(RuntimeError, AttributeError):  # RuntimeError: already initialised
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
    with contextlib.suppress(AttributeError):
        return tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    return None


class KerasRunner(Runner):
    """mode 'compiled' calls model.predict_on_batch (the backend's compiled predict function);
    mode 'predict' calls model.predict (what users often write: data adapter + callbacks each call)."""

    engine = "keras"

    def __init__(self, path, model, *, device, mode, threads=None):
        import keras

        self.model, self.mode = model, mode
        self._scope = "gpu:0" if device == "gpu" else "cpu:0"
        super().__init__(path, device=device, info={
            "backend": keras.backend.backend(), "provider": f"keras-{keras.backend.backend()} ({self._scope})",
            "precision": "float32", "mode": mode, "threads": _tensorflow_threads(threads)})

    @classmethod
    def load(cls, path, *, device="cpu", threads=None, mode="compiled", unsafe=False, **_):
        keras = require("keras", extra="full", purpose="The Keras runner")
        if device == "gpu":
            name = accelerator_available()
            if name is None:
                raise MissingRuntimeError(f"--device gpu: Keras backend '{keras.backend.backend()}' sees no GPU here",
                                          hint="run on a machine with a GPU (e.g. KERAS_BACKEND=jax with jax[cuda])")
        return cls(path, load_keras_model(Path(path), unsafe=unsafe), device=device, mode=mode, threads=threads)

    @property
    def input_shape(self):
        """One image's shape; None for a subclassed model, which declares no input."""
        shape = _declared(self.model, "input_shape")
        return tuple(shape[1:]) if shape else None

    @property
    def num_outputs(self):
        shape = _declared(self.model, "output_shape")
        return shape[-1] if shape else None

    def _predict(self, x):
        import keras

        with keras.device(self._scope):
            if self.mode == "predict":
                return self.model.predict(x, verbose=0, batch_size=len(x))
            return keras.ops.convert_to_numpy(self.model.predict_on_batch(x))

    def io_details(self):
        inputs = getattr(self.model, "inputs", None)
        in_shape, out_shape = _declared(self.model, "input_shape"), _declared(self.model, "output_shape")
        return {"inputs": [{"name": inputs[0].name if inputs else "image", "shape": list(in_shape or []),
                            "dtype": "float32"}],
                "outputs": [{"name": "probabilities", "shape": list(out_shape or []), "dtype": "float32"}]}


class SavedModelRunner(Runner):
    engine = "tensorflow-savedmodel"

    def __init__(self, path, fn, arg, in_shape, out_dim, *, device):
        self._fn, self._arg, self._in, self._out = fn, arg, in_shape, out_dim
        super().__init__(path, device=device, info={"provider": "tensorflow", "precision": "float32", "threads": None})

    @classmethod
    def load(cls, path, *, device="cpu", threads=None, **_):
        tf = require("tensorflow", extra="full", purpose="Running a SavedModel")
        path = Path(path)
        if not (path / "saved_model.pb").is_file():
            raise ModelFileError(f"{path} is not a SavedModel folder (no saved_model.pb)")
        if not (path / "variables").is_dir():
            raise ModelFileError(f"{path}: SavedModel folder is missing its variables/ folder",
                                 hint="copy the whole SavedModel folder")
        if device == "gpu" and not tf.config.list_physical_devices("GPU"):
            raise MissingRuntimeError("--device gpu: TensorFlow sees no GPU here")
        try:
            loaded = tf.saved_model.load(str(path))
            fn = loaded.signatures["serving_default"]
        except Exception as exc:
            raise ModelFileError(f"cannot load SavedModel {path}: {type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:300]}") from exc
        fn._keepalive = loaded
        arg, spec = list(fn.structured_input_signature[1].items())[0]
        out_spec = list(fn.structured_outputs.values())[0]
        return cls(path, fn, arg, tuple(spec.shape[1:]), out_spec.shape[-1], device=device)

    @property
    def input_shape(self):
        return self._in

    @property
    def num_outputs(self):
        return self._out

    def _predict(self, x):
        return list(self._fn(**{self._arg: x}).values())[0].numpy()
