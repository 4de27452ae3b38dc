"""Issue 34: the run's files in a real headless Chromium (onnxruntime-web and LiteRT.js on WASM).

`make test` installs Chromium (apt) and the pinned JS packages (npm ci) first (scripts/get-web.sh); these
tests skip, naming what is missing, only where that set-up could not install them. One browser for the
module (the runner's process-wide host), a few dozen images."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from exporter import api, data, formats
from exporter.errors import MissingRuntimeError, UsageError
from exporter.runtimes import load_runner
from exporter.runtimes import chromium
from exporter.validate import validate

N = 48
WEB_KINDS = [k.name for k in formats.EXPORTABLE if k.family in ("onnx", "tflite")]


def _missing() -> str | None:
    try:
        chromium.find_chromium()
        chromium.check_js_packages()
    except MissingRuntimeError as exc:
        return exc.one_line()
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


@pytest.fixture(scope="module", autouse=True)
def one_browser():
    yield
    chromium.shutdown()


@pytest.mark.parametrize("kind", WEB_KINDS)
def test_browser_top1_equals_native(converted_run, fmnist, kind):
    x = fmnist.x_test[:N]
    path = converted_run / formats.get(kind).filename
    browser, native = load_runner(path, kind=kind, runtime="browser"), load_runner(path, kind=kind)
    yb, yn = browser.predict(x), native.predict(x)
    browser.close()
    native.close()
    assert browser.info["runtime"] == "browser" and "Chromium" in browser.info["provider"]
    agree = 100 * float((yb.argmax(1) == yn.argmax(1)).mean())
    gate = formats.get(kind).gates.min_agreement
    assert agree == 100.0 or (formats.get(kind).needs_calibration and agree >= gate), (kind, agree)
    assert len(browser.ms) >= 1 and all(ms >= 0 for ms in browser.ms)  # in-page times, per model call


def _record_sha(run, kind: str) -> None:
    """Make the manifest own the file as it now is (as if convert had written it so)."""
    from exporter.fsutil import sha256_file

    manifest = json.loads((run / "manifest.json").read_text())
    entry = manifest["artifacts"][kind]
    entry["sha256"] = sha256_file(run / entry["file"])
    (run / "manifest.json").write_text(json.dumps(manifest))


def test_broken_file_is_a_failed_kind(converted_run, fmnist, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(converted_run, run)
    f = run / formats.get("onnx-fp32").filename
    f.write_bytes(f.read_bytes()[:4096])  # an ONNX header intact: only the runtime in the page can tell
    _record_sha(run, "onnx-fp32")
    small = data.subset(fmnist, test_limit=100)
    report = validate(run=run, dataset=small, kinds=["tflite-fp32", "onnx-fp32"], runtimes=["browser"])
    rows = {r["target"]: r for r in report["artifacts"]}
    broken = rows["onnx-fp32 · browser"]
    assert not broken["passed"] and "onnxruntime-web in Chromium cannot load" in " ".join(broken["failures"])
    assert rows["tflite-fp32 · browser"]["passed"], rows["tflite-fp32 · browser"]
    assert not report["passed"]


def test_web_serves_the_page_and_it_runs_every_kind(converted_run):
    page_app = api.web(converted_run, port=0, samples=4)
    try:
        info = json.loads(urllib.request.urlopen(f"{page_app.server.url}/api/run.json", timeout=10).read())
        assert {k["kind"] for k in info["kinds"]} == set(WEB_KINDS)
        page = chromium.host().browser.new_page()
        page.goto(page_app.url)
        page.wait_for_function("window.resexportPage && window.resexportPage.last > 0", timeout=60_000)
        rows = page.evaluate("Array.from(document.querySelectorAll('#results tbody tr'), r => r.cells[0].textContent)")
        page.close()
        assert rows == ["keras (reference)", *[k["kind"] for k in info["kinds"]]]  # converted_run validated once
    finally:
        page_app.close()


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


def test_web_port_in_use_is_one_line_usage_error(converted_run):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match="in use"):
            api.web(converted_run, port=port)
        proc = _cli("web", "--run", str(converted_run), "--port", str(port))
    assert proc.returncode == 2, proc.stderr
    assert "in use" in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2, proc.stderr


def test_run_without_files_and_missing_browser(converted_run, tmp_path):
    empty = tmp_path / "empty"
    shutil.copytree(converted_run, empty)
    for k in WEB_KINDS:
        (empty / formats.get(k).filename).unlink()
    with pytest.raises(UsageError, match="no .onnx or .tflite"):
        api.web(empty, port=0)
    run = tmp_path / "run"  # validate caches the reference on its test images: never in the shared run
    shutil.copytree(converted_run, run)
    proc = _cli("validate", "--run", str(run), "--runtimes", "browser", "--artifacts", "onnx-fp32",
                "--limit", "50", env={chromium.CHROMIUM_ENV: str(tmp_path / "no-chromium")})
    assert proc.returncode == 5, proc.stderr
    assert "no-chromium" in proc.stderr
