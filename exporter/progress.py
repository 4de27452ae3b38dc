"""A tiny progress interface: library code reports, the CLI decides how to show it (Rich bars)."""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol


class Task(Protocol):
    def advance(self, n: int = 1) -> None: ...
    def describe(self, text: str) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None = None) -> contextlib.AbstractContextManager[Task]: ...


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass

    def describe(self, text: str) -> None:
        pass


class NullProgress:
    """Shows nothing: the default for library calls and tests."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Task]:
        yield _NullTask()


NULL = NullProgress()
