"""The `Run`: one model's run folder and its manifest, handed from stage to stage.

Everything about one model lives in its run folder (model.keras, manifest.json, the artifacts,
validation.json, bench.json, report.*). This is the only module that reads the raw manifest dict's
layout; stages use the typed accessors below. Writes are atomic (exporter.manifest.write_manifest).

A `Run` stands in for its folder's path (`run / "x"`, `os.fspath(run)`, `Path(run)`), so library
functions accept either a Run or a path (`Run.of(...)`).
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from exporter import manifest as mf
from exporter.data import choose
from exporter.data.preprocessing import Preprocessing, decide

VALIDATION_FILE = "validation.json"
BENCH_FILE = "bench.json"


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text))
    return keep.strip("-.") or "data"


def data_label(data) -> str:
    """A short name for a dataset spec: a built-in name, a folder's name, an .npz's stem."""
    p = Path(str(data))
    return _slug(p.stem if p.suffix.lower() == ".npz" else p.name or str(data))


def default_run_path(model: str, data, *, tag: str | None = None) -> Path:
    """The run-name rule, the one place it lives: artifacts/<model>-<data>-<tag or time stamp>."""
    tag = tag or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return mf.artifacts_root() / f"{_slug(model)}-{data_label(data)}-{tag}"


class Run:
    """A run folder and its manifest (read once, re-read with reload())."""

    def __init__(self, path, manifest: dict | None = None):
        self.path = Path(path)
        self._man = manifest

    # -------------------------------------------------------------- opening

    @classmethod
    def of(cls, run: "Run | str | os.PathLike | None") -> "Run":
        """`run` as a Run: a Run as it is, a folder path, or None for the newest run under artifacts/."""
        if isinstance(run, Run):
            return run
        return cls(mf.resolve_run(run))

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, other) -> Path:
        return self.path / other

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, (Run, Path)) and Path(other) == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # -------------------------------------------------------------- the manifest

    @property
    def manifest(self) -> dict:
        """The manifest dict (validated when read). Prefer the typed accessors."""
        if self._man is None:
            self._man = mf.read_manifest(self.path)
        return self._man

    def reload(self) -> "Run":
        self._man = None
        return self

    def save(self) -> None:
        mf.write_manifest(self.path, self.manifest)

    # -------------------------------------------------------------- the reference model

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def model_file(self) -> str:
        return self.model["file"]

    @property
    def model_path(self) -> Path:
        return self.path / self.model_file

    @property
    def model_format(self) -> str:
        """keras | savedmodel: the reference's kind in the formats table."""
        return self.model.get("format", "keras")

    @property
    def model_name(self) -> str | None:
        return self.model.get("name")

    @property
    def recorded_model_sha256(self) -> str | None:
        return self.model.get("sha256")

    @property
    def input_shape(self) -> tuple | None:
        shape = self.model.get("input_shape") or self.dataset.get("input_shape")
        return tuple(shape) if shape else None

    @property
    def output(self) -> str | None:
        """The output convention (probabilities | logits), or None for a run made before it was recorded."""
        return self.model.get("output")

    def set_output(self, convention: str, detected_by: str) -> None:
        self.model["output"], self.model["output_detected_by"] = convention, detected_by
        self.save()

    # -------------------------------------------------------------- data and preprocessing

    @property
    def dataset(self) -> dict:
        return self.manifest.get("dataset", {})

    @property
    def dataset_name(self) -> str | None:
        return self.dataset.get("name")

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset.get("class_names") or [])

    @property
    def data_origin(self) -> dict:
        return self.dataset.get("origin") or {}

    @property
    def training_subset(self) -> dict | None:
        """The stratified subset of the training split the model was trained on (train --train-limit), if any."""
        return (self.dataset.get("subset") or {}).get("train")

    @property
    def imported(self) -> bool:
        """Made around a model trained elsewhere (convert --model): its training images are unknown."""
        return bool(self.model.get("imported_from"))

    @property
    def training(self) -> dict:
        return self.manifest.get("training", {})

    @property
    def recorded_preprocessing(self) -> Preprocessing | None:
        rec = self.manifest.get("preprocessing")
        return Preprocessing.from_dict(rec) if rec else None

    @property
    def preprocessing(self) -> Preprocessing:
        """The preprocessing the run records; a run made before it was recorded (a built-in dataset, as
        loaded) gets the one exporter.data.preprocessing.decide gives for its input shape."""
        return self.recorded_preprocessing or decide(self.input_shape, scale=None, where=self.model_file)

    def record_data(self, preprocessing, content_hash: str) -> None:
        """Record the preprocessing and the data's content hash where a run made earlier lacks them."""
        if "preprocessing" in self.manifest and "content_hash" in self.dataset:
            return
        self.manifest["preprocessing"] = self.manifest.get("preprocessing") or preprocessing.to_dict()
        self.manifest.setdefault("dataset", {})["content_hash"] = content_hash
        self.save()

    # -------------------------------------------------------------- artifacts and results

    @property
    def artifacts(self) -> dict[str, dict]:
        """kind -> manifest entry, in the order they were made."""
        return self.manifest["artifacts"]

    def artifact(self, kind: str) -> dict | None:
        return self.artifacts.get(kind)

    def artifact_path(self, kind: str) -> Path:
        return self.path / self.artifacts[kind]["file"]

    def set_artifact(self, kind: str, entry: dict) -> None:
        self.artifacts[kind] = entry
        self.save()

    @property
    def export_failures(self) -> dict[str, dict]:
        """kind -> {"reason", "created", "inputs_key"} for kinds convert could not make."""
        return self.manifest.get("export_failures") or {}

    def record_export_failure(self, kind: str, reason: str, inputs_key: str) -> None:
        self.manifest.setdefault("export_failures", {})[kind] = {"reason": reason, "created": mf.now_iso(),
                                                                 "inputs_key": inputs_key}
        self.save()

    def clear_export_failure(self, kind: str) -> None:
        """Forget a kind's earlier export failure (it was made now); saved with the next save()."""
        failures = self.manifest.get("export_failures")
        if failures is not None:
            failures.pop(kind, None)
            if not failures:
                del self.manifest["export_failures"]

    @property
    def validation(self) -> dict | None:
        return mf.read_json_if(self.path / VALIDATION_FILE)

    @property
    def bench(self) -> dict | None:
        return mf.read_json_if(self.path / BENCH_FILE)


def open_for_run(run: "Run | str | os.PathLike | None", *, data: str | None = None, data_dir=None,
                 test_limit: int | None = None):
    """The run's own data (as recorded in its manifest) or `data`, with the run's preprocessing.
    The run asks data (exporter.data.choose.open_data) with what it recorded; data never imports the run."""
    run = Run.of(run)
    pp = run.recorded_preprocessing
    origin = run.data_origin
    if data is None:
        spec = origin.get("path") or run.dataset_name or choose.DEFAULT_DATASET
        return choose.open_data(spec, pp=pp, data_dir=data_dir, test_split=origin.get("test_split"),
                                calib_data=origin.get("calib_data"), test_limit=test_limit)
    return choose.open_data(data, pp=pp, data_dir=data_dir, test_limit=test_limit)
