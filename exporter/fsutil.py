"""Atomic file writes: a reader never sees a half-written file, Ctrl-C leaves the old one intact."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from exporter.errors import OutputError, OutputExistsError


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder (relative names and contents of every file, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(path)).encode() + b"\0" + bytes.fromhex(sha256_file(f)))
    return digest.hexdigest()


def ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        file = next((p for p in (path, *path.parents) if p.is_file()), None)  # ENOTDIR/EEXIST: a file in the way
        raise OutputError(f"cannot create folder {path}: " + (f"{file} is a file" if file else exc.strerror or str(exc)),
                          hint="choose a writable location with --run") from exc
    if not os.access(path, os.W_OK):
        raise OutputError(f"folder {path} is not writable", hint="choose a writable location with --run")
    return path


@contextlib.contextmanager
def atomic_path(final: Path, *, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success rename it into place, else delete it.

    With force=False an existing `final` is an OutputExistsError, checked before any work.
    """
    final = Path(final)
    if final.exists() and not force:
        raise OutputExistsError(f"{final} already exists", hint="pass --force to replace it")
    ensure_dir(final.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as exc:  # read-only file system, no space for an inode, ...
        raise OutputError(f"cannot write in {final.parent}: {exc.strerror or exc}",
                          hint="choose a writable location with --run") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the file the mode a plain open() would (or keep the replaced file's).
    with contextlib.suppress(OSError):
        os.chmod(tmp, final.stat().st_mode & 0o7777 if final.exists() else 0o666 & ~current_umask())
    try:
        yield tmp
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise OutputError(f"writing {final} produced an empty file")
        os.replace(tmp, final)
    except OSError as exc:
        raise OutputError(f"writing {final} failed: {exc.strerror or exc}",
                          hint=f"check the free space and permissions of {final.parent}, or choose another --run") from exc
    finally:
        # BaseException too: Ctrl-C must not leave the temp file behind.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def current_umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(final: Path, data: bytes, *, force: bool = True) -> None:
    with atomic_path(final, force=force) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_json_atomic(final: Path, obj, *, force: bool = True) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    write_bytes_atomic(final, text.encode(), force=force)


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
