"""The project's error types. Library code raises these; only the CLI turns them into exit codes.

Exit codes (documented in README, "Troubleshooting"):
    0  success
    2  usage: bad flags, nothing to work on, output exists and --force not given
    3  bad input: unreadable/corrupt model or data file, shape mismatch, unsafe model
    4  validation failed: an artifact missed its gate
    5  missing runtime or device: optional package not installed, no GPU, wrong backend
    6  output: folder not writable, write failed
    70 internal error (a bug: rerun with --debug and report it)
    130 interrupted (Ctrl-C); nothing half-written is left behind
"""

from __future__ import annotations
from exporter.quiet import native_stderr_hidden


class ResexportError(Exception):
    """Base of every error the CLI reports as one line."""

    exit_code = 70
    kind = "error"

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            text += f". {self.hint.rstrip('.')}"
        return " ".join(text.split())


class UsageError(ResexportError):
    exit_code = 2
    kind = "usage"


class OutputExistsError(UsageError):
    """Refusing to overwrite something the user already has."""


class InputError(ResexportError):
    exit_code = 3
    kind = "bad input"


class DataError(InputError):
    """A dataset file is missing, corrupt or inconsistent."""


class ModelFileError(InputError):
    """A model or artifact file cannot be read or does not fit the data."""


class ExportError(ResexportError):
    """We could not make (or check) an artifact from a model that is fine: our bug, never bad input."""

    exit_code = 70
    kind = "export failed"


class ValidationFailed(ResexportError):
    exit_code = 4
    kind = "validation failed"


class MissingRuntimeError(ResexportError):
    exit_code = 5
    kind = "missing runtime"


class OutputError(ResexportError):
    exit_code = 6
    kind = "output"


EXIT_CODES = {
    "ok": 0,
    "usage": UsageError.exit_code,
    "bad input": InputError.exit_code,
    "validation failed": ValidationFailed.exit_code,
    "missing runtime": MissingRuntimeError.exit_code,
    "output": OutputError.exit_code,
    "internal": 70,
    "interrupted": 130,
}


# Modules whose first import writes native start-up lines to fd 2 ("Could not find cuda drivers",
# "oneDNN custom operations are on", absl's pre-init warning); keras imports tensorflow.
NOISY_NATIVE_IMPORTS = ("tensorflow", "keras", "tf2onnx", "tf_keras")


def require(module: str, *, extra: str, purpose: str):
    """Import an optional module or raise MissingRuntimeError with the pip line that fixes it."""
    import importlib
    import sys

    try:
        if module.split(".")[0] in NOISY_NATIVE_IMPORTS and module not in sys.modules:
            with native_stderr_hidden():  # TensorFlow's C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL
                return importlib.import_module(module)
        return importlib.import_module(module)
    except ImportError as exc:  # ModuleNotFoundError or a broken install
        if module.split(".")[0] == "keras":
            missing_backend(exc)
        raise MissingRuntimeError(
            f"{purpose} needs the Python package '{module.split('.')[0]}', which is not importable ({exc})",
            hint=f"install it with: pip install 'resexport[{extra}]'",
        ) from exc


# Keras' backends: the package each needs, and its pip line
KERAS_BACKENDS = {"tensorflow": "'resexport[full]'", "jax": "jax", "torch": "torch", "openvino": "openvino"}


def keras_backend_name() -> str:
    """The backend Keras will load: KERAS_BACKEND, else ~/.keras/keras.json's, else tensorflow
    (read without importing Keras, which imports the backend)."""
    import json
    import os

    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    config = os.path.join(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"), "keras.json")
    try:
        with open(config) as f:
            return json.load(f).get("backend") or "tensorflow"
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def importable(module: str) -> bool:
    """Whether `module` can be imported here, without importing it (a blocked or absent module is not)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder refused it, or sys.modules holds None for it
        return False


def missing_backend(exc: ImportError) -> None:
    """Keras failed to import: if that is because its backend is not installed, raise the one-line
    refusal naming the package to install (Keras imports its backend on `import keras`)."""
    backend = keras_backend_name()
    pip = KERAS_BACKENDS.get(backend)
    if pip is None or not importable("keras") or importable(backend):
        return
    raise MissingRuntimeError(f"Keras runs on the '{backend}' backend here (KERAS_BACKEND), which is not installed",
                              hint=f"install it with: pip install {pip}, or unset KERAS_BACKEND to use TensorFlow"
                              if backend != "tensorflow" else f"install it with: pip install {pip}") from exc
