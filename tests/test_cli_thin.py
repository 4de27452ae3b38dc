"""Issue 30: the CLI is thin (flags -> exporter.api options -> api call -> print); the library API is the
only layer that wires stages, and each default has one home (the options types in exporter/api.py)."""

import ast
import re
from pathlib import Path

EXPORTER = Path(__file__).resolve().parent.parent / "exporter"
MAX_LINES_PER_COMMAND = 50


def _command_lengths() -> dict[str, int]:
    tree = ast.parse((EXPORTER / "cli.py").read_text())
    lengths = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
                and isinstance(d.func.value, ast.Name) and d.func.value.id in ("app", "experiment_app")
                for d in node.decorator_list):
            lengths[node.name] = node.end_lineno - node.lineno + 1
    return lengths


def test_cli_commands_are_thin():
    lengths = _command_lengths()
    assert len(lengths) >= 9, lengths
    assert sum(lengths.values()) / len(lengths) <= MAX_LINES_PER_COMMAND, lengths


def test_cli_and_pipeline_import_no_wiring_stage():
    """The CLI and the pipeline reach train/convert/validate/bench/predict/experiment only through exporter.api."""
    stages = ("train", "convert", "validate", "bench", "predict", "experiment", "inspect", "quantize")
    for name in ("cli.py", "pipeline.py"):
        imports = re.findall(r"^\s*from exporter\.(\w+)", (EXPORTER / name).read_text(), flags=re.M)
        assert not set(imports) & set(stages), (name, imports)


def test_calibration_default_has_one_home():
    from exporter.api import ConvertOptions, PipelineOptions

    hits = [f"{p.relative_to(EXPORTER)}:{i}" for p in EXPORTER.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"\b500\b", line) and "calib" in line.lower()]
    assert hits == ["api.py:" + hits[0].split(":")[1]] and len(hits) == 1, hits
    assert PipelineOptions().convert.calib_samples == ConvertOptions.calib_samples
