"""Exporters: pure functions `(source, out_path, calibration) -> details`, one module per format.

Each writes through exporter.fsutil.atomic_path, so a failed or interrupted export leaves nothing.
`ExportSource` wraps the model being exported (a Keras model, or a TF SavedModel) and caches what
several exporters share (a SavedModel export, the float32 ONNX graph).
"""
