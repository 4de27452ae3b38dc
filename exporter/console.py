"""The command line's plumbing: where output goes, progress bars, the error boundary, quiet imports,
and the Rich tables. cli.py holds only the commands (parse -> call the library -> show).

stdout carries results (tables, or JSON with --json); stderr carries progress, warnings and the
one-line errors, so a pipe always gets machine-readable output."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import sys
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from exporter.errors import EXIT_CODES, ResexportError
from exporter.quiet import native_stderr_hidden
from exporter.data.choose import one_scan
from exporter.fsutil import _json_default
from exporter.progress import NULL
from exporter.runtimes.keras import import_custom_objects as load

out = Console(width=None if sys.stdout.isatty() else 200)  # results (tables, JSON)
err = Console(stderr=True)           # progress and messages
state = {"debug": False, "custom_objects": []}


# ------------------------------------------------------------------------------ progress

class RichProgress:
    """exporter.progress.Progress on Rich, drawn on stderr (stdout stays machine-readable)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator:
        if not self.enabled:
            with NULL.task(description, total) as t:
                yield t
            return
        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn()] if total else [SpinnerColumn(), TextColumn("{task.description}"),
                                                       TimeElapsedColumn()]
        with Progress(*columns, console=err, transient=False) as bar:
            tid = bar.add_task(description, total=total)

            class _T:
                def advance(self, n: int = 1) -> None:
                    bar.advance(tid, n)

                def describe(self, text: str) -> None:
                    bar.update(tid, description=f"{description}: {text}")

            yield _T()


def progress(json_out: bool = False) -> RichProgress:
    """Bars on an interactive stderr (or RESEXPORT_PROGRESS=1), never with --json."""
    return RichProgress(enabled=not json_out and err.is_terminal or os.environ.get("RESEXPORT_PROGRESS") == "1")


# ------------------------------------------------------------------------------ the boundary

def import_tensorflow_quietly() -> None:
    """Import TensorFlow (and Keras) now, with fd 2 hidden: its C++ start-up lines ("Could not find
    cuda drivers", written before absl logging is set up) ignore TF_CPP_MIN_LOG_LEVEL and would
    bury the one-line messages. Skipped under --debug, other Keras backends, or without TensorFlow;
    any failure is left for the real import to report."""
    if state["debug"] or "tensorflow" in sys.modules or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    try:
        if importlib.util.find_spec("tensorflow") is None:
            return
        with native_stderr_hidden():
            import keras  # noqa: F401  (imports tensorflow)
    except BaseException:  # noqa: BLE001  (the real import, later, reports it properly)
        return


def import_custom_objects() -> None:
    """Import the user's code that defines (and registers) custom layers or models."""
    for source in state["custom_objects"]:
        load(source)


def boundary(fn=None, *, tensorflow: bool = False):
    """Run a command; map errors to one line + exit code. --debug shows tracebacks. With
    tensorflow=True, TensorFlow is imported first without its native start-up noise."""
    if fn is None:
        return functools.partial(boundary, tensorflow=tensorflow)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            if tensorflow:
                import_tensorflow_quietly()
            import_custom_objects()

            with one_scan():
                return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except ResexportError as exc:
            if state["debug"]:
                raise
            err.print(f"[bold red]error[/] ({exc.kind}): {escape(exc.one_line())}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]: nothing half-written was left behind")
            raise typer.Exit(EXIT_CODES["interrupted"]) from None
        except Exception as exc:  # a bug: say so in one line, keep the traceback behind --debug
            if state["debug"]:
                raise
            text = " ".join(str(exc).split())[:300]
            err.print(f"[bold red]internal error[/]: {type(exc).__name__}: {escape(text)} "
                      "(rerun with --debug for the traceback, and please report it)",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_CODES["internal"]) from None

    return wrapper


# ------------------------------------------------------------------------------ output

def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")


def print_verbatim(text: str) -> None:
    """Text that is not Rich markup (Markdown, paths with brackets) printed as it is."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def warn(text: str) -> None:
    err.print(f"[bold yellow]warning[/]: {escape(text)}", highlight=False, soft_wrap=True)


def note(text: str) -> None:
    err.print(escape(text), highlight=False, soft_wrap=True)


def print_table(title: str, headers: list[str], rows: list[list[str]], *, left=("artifact", "target", "kind")) -> None:
    """One Rich table from headers + rows of strings (the same rows the Markdown report uses)."""
    table = Table(title=escape(title))
    for h in headers:
        table.add_column(escape(h), justify="left" if h in left or h in ("gate", "provider", "moved most", "file",
                                                                         "status") else "right",
                         overflow="fold")  # long reasons wrap (and long words fold); never cut with an ellipsis
    for row in rows:
        table.add_row(*(escape(str(c)) for c in row))
    out.print(table)
