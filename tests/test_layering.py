"""Issue 30, item 4: the import rules of DESIGN, read from the source (ast; nothing is imported).

- no module under exporter/ carries a standard-library name (`python exporter/cli.py` would import
  the stdlib's `inspect`/`select` from the script's folder, or ours in place of the stdlib's);
- the import graph of exporter/ (top-level AND function-level imports of `exporter.*`) has no circle;
- data/ and stream.py never import exporter.run (the run asks data, never the reverse);
- imports of the project's own modules sit at the top of the file; a function-local one only where the
  imported module would import Keras/TensorFlow into a module the edge box imports (EXCEPTIONS).
  cli.py and api.py are not counted here (their rewrite is issue 30's item 1).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "exporter"

# (importing file, imported module) -> why it stays inside a function. Each of these modules imports Keras
# at its top (and Keras on its TensorFlow backend imports TensorFlow): importing it at the top of the file
# would put Keras/TensorFlow into `import exporter.convert` / `exporter.train` / `exporter.validate`, which
# api.py, pipeline.py and the edge box (validate/bench on .tflite/.onnx) import without them.
QAT = "exporter.quantize.qat imports Keras (its layers subclass keras.layers.Layer)"
EXCEPTIONS = {
    ("convert.py", "exporter.quantize.qat"): (1, QAT),
    ("export/onnx.py", "exporter.quantize.qat"): (1, QAT),
    ("export/tflite.py", "exporter.quantize.qat"): (1, QAT),
    ("quantize/make.py", "exporter.quantize.qat"): (4, QAT),
    ("train.py", "exporter.models"): (1, "models.py imports Keras at its top (pure Keras 3 builders)"),
    ("train.py", "exporter.stream"): (1, "stream.Batches subclasses keras.utils.PyDataset at import"),
    ("validate.py", "exporter.quantize.layers"): (1, "opening a QAT model registers its layers: imports Keras"),
}
NOT_COUNTED = {"cli.py", "api.py"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported exporter.* module, inside a function?, line) for every import in `path`."""
    found = []

    def resolve(base: str, names) -> list[str]:
        hits = [f"{base}.{a.name}" for a in names if f"{base}.{a.name}" in MODULES]
        return hits if len(hits) == len(names) else [*hits, base]

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, f"{path}:{child.lineno}: relative import"
                targets = resolve(child.module or "", child.names)
            else:
                visit(child, inner)
                continue
            for t in targets:
                if t == "exporter" or t.startswith("exporter."):
                    assert t in MODULES, f"{path}:{child.lineno}: {t} is not a module of exporter/"
                    found.append((t, in_function, child.lineno))

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


GRAPH = {mod: _imports(path) for mod, path in MODULES.items()}


def test_no_module_carries_a_standard_library_name():
    clash = [str(p.relative_to(ROOT)) for mod, p in MODULES.items() if mod.split(".")[-1] in sys.stdlib_module_names]
    assert not clash, f"modules named like the standard library's: {clash}"


def test_the_import_graph_has_no_circle():
    edges = {mod: sorted({t for t, _, _ in imps if t != mod}) for mod, imps in GRAPH.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def walk(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for nxt in edges[mod]:
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[mod] = 2

    for mod in edges:
        if mod not in state:
            walk(mod, [mod])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_data_and_stream_never_import_the_run():
    low = [m for m in MODULES if m.startswith("exporter.data") or m == "exporter.stream"]
    assert "exporter.data.choose" in low
    bad = [f"{m}:{line}" for m in low for t, _, line in GRAPH[m] if t == "exporter.run"]
    assert not bad, f"data/ or stream.py imports exporter.run (the run asks data, never the reverse): {bad}"


def test_own_modules_are_imported_at_the_top_except_where_that_would_import_keras():
    counts: dict[tuple[str, str], list[int]] = {}
    for mod, path in MODULES.items():
        rel = str(path.relative_to(PKG))
        if rel in NOT_COUNTED:
            continue
        for target, in_function, line in GRAPH[mod]:
            if in_function:
                counts.setdefault((rel, target), []).append(line)
    over = {f"{rel} -> {target} (lines {lines})": len(lines) for (rel, target), lines in counts.items()
            if len(lines) > EXCEPTIONS.get((rel, target), (0, ""))[0]}
    assert not over, ("function-local imports of the project's own modules (move them to the top of the file; "
                      f"only a module that imports Keras/TensorFlow may stay inside a function): {over}")
    assert sum(len(v) for v in counts.values()) <= sum(n for n, _ in EXCEPTIONS.values())


def test_the_listed_exceptions_really_import_keras():
    """An exception is only for a module that imports Keras at its top; else it belongs at the top."""
    for _, target in EXCEPTIONS:
        tops = {t for t, inside, _ in GRAPH[target] if not inside}
        def imports_keras(text: str) -> bool:
            return "import keras" in text or 'require("keras"' in text

        assert imports_keras(MODULES[target].read_text()) or any(imports_keras(MODULES[t].read_text()) for t in tops), \
            target


def test_no_function_is_over_80_lines_unless_its_docstring_says_why():
    """Issue 30: a long function hides what it does; one that must be long says why ("80 lines")."""
    long = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                if "80 lines" not in (ast.get_docstring(node) or ""):
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
