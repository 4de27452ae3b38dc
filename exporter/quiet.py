"""Silencing what native libraries write straight to file descriptor 2.

TensorFlow's converter ("fully_quantize: 0, inference_type: 6, ...") and LiteRT ("INFO: Created
TensorFlow Lite XNNPACK delegate for CPU.") print from C++ to fd 2, bypassing Python's logging and
TF_CPP_MIN_LOG_LEVEL: between a command's stage lines they read as errors. Library calls that make
that noise run inside `native_stderr_hidden()`. `--debug` (show_native(True)) lets it through.
Python's own sys.stderr object is untouched; what it writes meanwhile is lost, so only short,
quiet calls are wrapped."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

_SHOW = {"native": False}


def show_native(on: bool) -> None:
    _SHOW["native"] = on


@contextlib.contextmanager
def native_stderr_hidden() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration (unless --debug asked to see it)."""
    if _SHOW["native"]:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no fd 2 (embedded interpreters): nothing to hide
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def python_loggers_quiet(*names: str) -> Iterator[None]:
    """Raise the named Python loggers to ERROR for the duration (unless --debug): for a library call whose
    warning is about the library's own API, not the user's model (the TFLite converter's "consider providing
    the trackable_obj argument", logged through absl, whose own set-up undoes the CLI's level)."""
    if _SHOW["native"]:
        yield
        return
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def hide_native_stderr_for_process() -> bool:
    """For the rest of a CLI process: file descriptor 2 goes to /dev/null, and Python's sys.stderr is
    re-opened on a copy of the real fd 2. Everything Python writes (Rich's messages and progress bars,
    logging, tracebacks) still reaches the terminal; what native libraries write to fd 2 from C/C++
    (absl's pre-init warning, oneDNN and CUDA probes, LiteRT's XNNPACK line, the converter's
    "fully_quantize" dump) does not, whichever command or library call triggers it. Child processes
    inherit the silenced fd 2. Does nothing under --debug (show_native(True)) or when sys.stderr is not
    fd 2 (a test runner capturing output). Returns whether it took effect."""
    if _SHOW["native"]:
        return False
    try:
        if sys.stderr.fileno() != 2:
            return False
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # a replaced sys.stderr without a real fd
        return False
    python_stderr = os.fdopen(saved, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                              errors="backslashreplace")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = python_stderr
    return True
