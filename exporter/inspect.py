"""Kept importable for one release: the per-layer diagnosis and the fallback search moved to
exporter.quantize.diagnose (the one home of int8). `exporter.inspect` IS that module (same object),
so attribute access and monkeypatching keep working."""

import sys

from exporter.quantize import diagnose as _diagnose

sys.modules[__name__] = _diagnose
