"""The browser's two halves on this machine: a static server on 127.0.0.1 (the pinned JS packages of
exporter/web/, the files being run, small JSON answers) and a headless Debian Chromium driven by Python
playwright (no browser download: `executable_path`). One server and one browser per process, started on
first use and stopped at exit; `resexport web` starts its own server on the port asked for.

The server sends the cross-origin-isolation headers (COOP/COEP), so the pages may use threaded WASM."""

from __future__ import annotations

import atexit
import errno
import http.server
import json
import logging
import os
import shutil
import socketserver
import threading
import urllib.parse
from pathlib import Path

from exporter.errors import MissingRuntimeError, UsageError, require

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
JS_PACKAGES = ("onnxruntime-web", "@litertjs/core")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ENV = "RESEXPORT_CHROMIUM"
# headless as root, offline, nothing in the background: what the runner's page needs and no more
CHROMIUM_FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")
SETUP_HINT = "run `make setup` (apt chromium, `npm ci` in exporter/web), or set RESEXPORT_CHROMIUM to a Chromium binary"
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".html": "text/html",
         ".json": "application/json", ".css": "text/css", ".map": "application/json"}


def find_chromium() -> str:
    """The Chromium binary: $RESEXPORT_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        if not Path(named).is_file():
            raise MissingRuntimeError(f"{CHROMIUM_ENV}={named} is not a file", hint=SETUP_HINT)
        return named
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise MissingRuntimeError("no Chromium browser is installed here (looked for "
                              f"{', '.join(CHROMIUM_NAMES)} on PATH)", hint=SETUP_HINT)


def check_js_packages() -> dict[str, str]:
    """The installed versions of the pinned JS packages; refuses (exit 5) where `npm ci` has not run."""
    versions = {}
    for name in JS_PACKAGES:
        meta = WEB_DIR / "node_modules" / name / "package.json"
        if not meta.is_file():
            raise MissingRuntimeError(f"the JS package {name} is not installed in {WEB_DIR / 'node_modules'}",
                                      hint=SETUP_HINT)
        versions[name] = json.loads(meta.read_text())["version"]
    return versions


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "Server._Http"

    def log_message(self, fmt, *args):  # library code logs, never prints
        log.debug("web: " + fmt, *args)

    def do_GET(self):
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        owner: Server = self.server.owner
        if path in ("", "/"):
            self.send_response(302)
            self.send_header("Location", owner.home)
            self.end_headers()
            return
        body, ctype = owner.resolve(path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


class Server:
    """Serves /web/... from WEB_DIR, /files/NAME from the files added, /api/NAME.json from callables."""

    class _Http(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = False

    def __init__(self, port: int = 0, *, home: str = "/web/index.html"):
        self.files: dict[str, Path | bytes] = {}
        self.api: dict[str, object] = {}
        self.home = home
        try:
            self.httpd = self._Http(("127.0.0.1", port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on 127.0.0.1 is already in use", hint="pass another --port") from exc
            raise UsageError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}", hint="pass another --port") from exc
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="resexport-web", daemon=True)
        self._thread.start()

    def add_file(self, path: Path, name: str | None = None, content: bytes | None = None) -> str:
        """Serve `path` (or `content` under its name) as /files/NAME; returns its URL."""
        name = name or f"{len(self.files)}-{Path(path).name}"
        self.files[name] = Path(path) if content is None else content
        return f"{self.url}/files/{urllib.parse.quote(name)}"

    def resolve(self, path: str) -> tuple[bytes | None, str]:
        if path.startswith("/web/"):
            target = (WEB_DIR / path[len("/web/"):]).resolve()
            if WEB_DIR.resolve() not in target.parents or not target.is_file():
                return None, ""
            return target.read_bytes(), TYPES.get(target.suffix, "application/octet-stream")
        if path.startswith("/files/") and path[len("/files/"):] in self.files:
            file = self.files[path[len("/files/"):]]
            if isinstance(file, bytes):
                return file, "application/octet-stream"
            return (file.read_bytes(), "application/octet-stream") if file.is_file() else (None, "")
        if path.startswith("/api/") and path[len("/api/"):] in self.api:
            return json.dumps(self.api[path[len("/api/"):]]()).encode(), "application/json"
        return None, ""

    def wait(self) -> None:
        """Block until interrupted (the server runs in its own thread)."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Browser:
    """Headless Chromium through playwright, one page per thread count (WASM thread pools are page-wide)."""

    def __init__(self, server: Server):
        self.server = server
        self.executable = find_chromium()
        self.packages = check_js_packages()
        require("playwright", extra="web", purpose="Running files in headless Chromium")
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(executable_path=self.executable, headless=True,
                                                    args=list(CHROMIUM_FLAGS))
        except Exception as exc:
            self._pw.stop()
            raise MissingRuntimeError(f"headless Chromium ({self.executable}) did not start: "
                                      f"{' '.join(str(exc).split())[:300]}", hint=SETUP_HINT) from exc
        self.version = self.browser.version
        self._pages: dict[int, object] = {}

    def page(self, threads: int):
        """The runner page (runner.html) whose WASM runtimes use `threads` threads."""
        if threads not in self._pages:
            page = self.browser.new_page()
            page.goto(f"{self.server.url}/web/runner.html")
            page.wait_for_function("window.resexportReady === true", timeout=30_000)
            self._pages[threads] = page
        return self._pages[threads]

    def close(self) -> None:
        try:
            self.browser.close()
        finally:
            self._pw.stop()


_HOST: dict[str, object] = {}


def host() -> Browser:
    """This process's server and browser, started on first use and stopped at exit."""
    if "browser" not in _HOST:
        server = Server(0, home="/web/runner.html")
        try:
            _HOST["browser"] = Browser(server)
        except BaseException:
            server.close()
            raise
        atexit.register(shutdown)
    return _HOST["browser"]


def shutdown() -> None:
    """Stop this process's browser and server (a later `host()` starts new ones)."""
    browser = _HOST.pop("browser", None)
    if browser is not None:
        try:
            browser.close()
        finally:
            browser.server.close()
