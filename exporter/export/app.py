"""The app step of every artifact: after an exporter wrote a file, the metadata its SDK reads and the
input/output types the SDK takes, written through the conformance gate again (conformance.write_checked).

TFLite: exporter.export.tflite_app (MediaPipe Tasks' metadata schema, RGB input for gray models, uint8
input/output for int8). ONNX: `metadata_props`, the key set exporter.export.onnx.APP_KEYS."""

from __future__ import annotations

from pathlib import Path

from exporter.export.conformance import family_of, write_checked
from exporter.export.onnx import app_metadata, write_metadata
from exporter.export.tflite_app import AppSpec, make_app_ready


def app_ready(kind_or_family: str, path: Path, deploy: dict, *, name: str, version: str, num_classes=None) -> dict:
    """Make a written artifact app-ready in place; returns the conformance record of the final file, with
    what was done under "app". `deploy` is convert's deployment info (preprocessing, class names)."""
    path = Path(path)
    if family_of(kind_or_family) == "onnx":
        props = app_metadata(deploy, name=name, version=version)
        return {**write_metadata(path, props), "app": {"metadata_props": sorted(props)}}
    blob, record = make_app_ready(path.read_bytes(), AppSpec.from_deployment(deploy, name=name, version=version))
    return {**write_checked(path, blob, kind_or_family, input_shape=record["input"]["shape"][1:],
                            num_classes=num_classes, input_dtypes=(record["input"]["dtype"],)), "app": record}
