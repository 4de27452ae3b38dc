"""The run folder and its manifest.json: one place that says what is in a run.

Written atomically (temp file + rename) so a crash or Ctrl-C never leaves a corrupt manifest.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from importlib import metadata
from pathlib import Path

from exporter.errors import InputError, UsageError
from exporter.fsutil import write_json_atomic

MANIFEST = "manifest.json"
SCHEMA = 1
ARTIFACTS_ENV = "RESEXPORT_ARTIFACTS"

VERSION_PACKAGES = ("resexport", "keras", "tensorflow", "jax", "tf2onnx", "onnx", "onnxruntime",
                    "ai-edge-litert", "numpy")


def inputs_key(inputs) -> str:
    """The one notion of "up to date": every stage states the inputs its output depends on (model
    sha256, dataset identity, calibration hash, flags, tool versions), records this key of them beside
    its output, and reuses the output only while the key is the same."""
    import hashlib

    text = json.dumps(inputs, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dataset_identity(described: dict) -> dict:
    """What names a dataset's content in a stage key: everything `Dataset.describe()` says except
    where the files were found (that differs between machines, the images do not)."""
    return {k: v for k, v in described.items() if k != "source"}


def artifacts_root() -> Path:
    return Path(os.environ.get(ARTIFACTS_ENV, "artifacts"))


def library_versions(packages=VERSION_PACKAGES) -> dict[str, str]:
    """Installed versions, read from package metadata (imports nothing)."""
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_manifest(run: Path) -> dict:
    path = Path(run) / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"{run} is not a run folder (no {MANIFEST})",
                         hint="create one with `resexport train` or `resexport convert --model FILE`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, and e.g. ints over the digit limit
        raise InputError(f"{path} is corrupt ({exc})",
                         hint="restore it, or re-create the run with --force") from exc
    if not isinstance(data, dict) or not isinstance(data.get("schema"), int):
        raise InputError(f"{path} is not a resexport manifest (no schema number)")
    if data["schema"] > SCHEMA:
        raise InputError(f"{path} has schema {data['schema']}, newer than this resexport ({SCHEMA})",
                         hint="upgrade resexport")
    for key, kind in (("model", dict), ("dataset", dict), ("artifacts", dict)):
        if not isinstance(data.get(key, kind()), kind):
            raise InputError(f"{path}: field '{key}' should be a {kind.__name__}")
    data.setdefault("artifacts", {})
    return data


def write_manifest(run: Path, data: dict) -> None:
    data = {"schema": SCHEMA, **{k: v for k, v in data.items() if k != "schema"}}
    data["updated"] = now_iso()
    write_json_atomic(Path(run) / MANIFEST, data)


def read_json_if(path: Path) -> dict | None:
    """A stage's JSON output if it is there and readable, else None (then the stage runs again)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def find_runs(root: Path | None = None) -> list[Path]:
    root = Path(root or artifacts_root())
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and (p / MANIFEST).is_file()]
    return sorted(runs, key=_created)


def _created(run: Path) -> tuple[str, str]:
    """Sort key: the manifest's creation time (ISO, sortable), the folder name to break ties."""
    try:
        created = json.loads((run / MANIFEST).read_text()).get("created", "")
    except (OSError, ValueError, AttributeError):
        created = ""
    return (created if isinstance(created, str) else "", run.name)


def resolve_run(run: str | os.PathLike | None) -> Path:
    """--run DIR if given, else the newest run folder under the artifacts root."""
    if run is not None:
        path = Path(run)
        if not path.is_dir():
            raise UsageError(f"run folder {path} does not exist",
                             hint="create it with `resexport train --run DIR`")
        return path
    runs = find_runs()
    if not runs:
        raise UsageError(f"no run folder found under {artifacts_root()}/",
                         hint="train one with `resexport train`, or pass --run DIR")
    return runs[-1]
