"""The `.onnx` export run in a real browser: onnxruntime-web in headless Chromium, driven by Playwright.

This is the tutorial's "run them in web browsers", reached through ONNX (the Python TF.js
converter does not install beside TensorFlow 2.21). onnxruntime-web comes from the npm
registry, at a pinned version, installed once into a cache folder of ours (never a CDN);
a page served from 127.0.0.1 loads it and the model, and the test inputs go in and the
logits come back through the page, so what is compared is what a web page computes.
"""

import base64
import http.server
import importlib.util
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.errors import ArtifactError
from pipeline.formats.base import Restored
from pipeline.formats.onnx_model import OnnxFormat

log = logging.getLogger(__name__)

PACKAGE, VERSION = "onnxruntime-web", "1.30.0"
CHECK = "onnx_browser"  # its name in the verify report, in metrics and in verify.tolerance
# As root in a closed network: no sandbox, no GPU, and none of Chromium's calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PAGE_TIMEOUT_MS = 120_000

# One ES module: load the runtime and the model, then answer `run` calls. Arrays cross as
# base64 of their float32 bytes, exact and far smaller than JSON numbers.
PAGE = """<!doctype html><meta charset="utf-8"><title>onnx in the browser</title><link rel="icon" href="data:,">
<script type="module">
import * as ort from "/ort/ort.wasm.min.mjs";
ort.env.wasm.wasmPaths = "/ort/";
ort.env.wasm.numThreads = 1;  // threads need a cross-origin-isolated page; one is what any page gets
ort.env.logLevel = "error";
const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
function b64(array) {
  const view = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
  let text = "";
  for (let i = 0; i < view.length; i += 0x8000) text += String.fromCharCode.apply(null, view.subarray(i, i + 0x8000));
  return btoa(text);
}
try {
  const session = await ort.InferenceSession.create("/model.onnx", {executionProviders: ["wasm"]});
  const feeds = (data, shape) => ({[session.inputNames[0]]: new ort.Tensor("float32", new Float32Array(bytes(data).buffer), shape)});
  async function run(data, shape) {
    const out = (await session.run(feeds(data, shape)))[session.outputNames[0]];
    return {data: b64(out.data), dims: out.dims};
  }
  async function seconds(data, shape, calls) {  // per call, timed in the page: the cost a web page pays
    const input = feeds(data, shape);
    await session.run(input);
    const start = performance.now();
    for (let i = 0; i < calls; i++) await session.run(input);
    return (performance.now() - start) / 1000 / calls;
  }
  window.pipeline = {run, seconds, versions: ort.env.versions, agent: navigator.userAgent};
} catch (error) {
  window.pipeline = {error: String(error && error.message || error)};
}
</script>
"""


def chromium(configured: Optional[str]) -> Optional[str]:
    """The Chromium to drive: the configured one, else one on PATH; None means Playwright's own, if installed."""
    if configured:
        return configured
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def runtime_folder(cache: str) -> Path:
    return Path(cache).expanduser() / f"{PACKAGE}-{VERSION}"


def problems(configured_chromium: Optional[str], cache: str) -> list[str]:
    """What stops the browser check on this machine, each with what to do; found without starting anything."""
    found = []
    if importlib.util.find_spec("playwright") is None:
        found.append("it needs playwright, not installed: pip install 'keras-save-pipeline[browser]' (or pip install playwright)")
    executable = chromium(configured_chromium)
    if configured_chromium and not Path(configured_chromium).exists():
        found.append(f"verify.chromium={configured_chromium} does not exist")
    elif executable is None and not _playwright_chromium():
        found.append("no Chromium found: install one (apt-get install chromium, or playwright install chromium) or set verify.chromium=PATH")
    if not (runtime_folder(cache) / "dist").is_dir() and shutil.which("npm") is None:
        found.append(f"it installs {PACKAGE} {VERSION} from the npm registry, and npm is not on PATH (install Node.js)")
    return found


def _playwright_chromium() -> bool:
    """Whether `playwright install chromium` has put a browser in Playwright's own folder."""
    folder = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or Path.home() / ".cache" / "ms-playwright")
    return any(folder.glob("chromium*/chrome-linux*/chrome"))


def install_runtime(cache: str) -> Path:
    """onnxruntime-web's `dist/` folder, installed from the npm registry on first use. It is installed
    beside its final name and renamed into place, so a broken install is never taken for a good one."""
    folder = runtime_folder(cache)
    if (folder / "dist").is_dir():
        return folder / "dist"
    folder.parent.mkdir(parents=True, exist_ok=True)
    log.info("verify  | installing %s %s from the npm registry into %s (once)", PACKAGE, VERSION, folder)
    staging = Path(tempfile.mkdtemp(prefix=f".partial-{folder.name}-", dir=folder.parent))
    try:
        command = ["npm", "install", "--no-audit", "--no-fund", "--no-save", "--ignore-scripts", "--prefix", str(staging), f"{PACKAGE}@{VERSION}"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ArtifactError(f"npm install {PACKAGE}@{VERSION} failed: {reason}")
        package = staging / "node_modules" / PACKAGE  # its dist/ bundles are self-contained: the rest can go
        for keep in ("dist", "package.json"):
            (package / keep).rename(staging / keep)
        shutil.rmtree(staging / "node_modules")
        try:
            staging.rename(folder)
        except OSError:  # another job installed it meanwhile: theirs is as good as ours
            if not (folder / "dist").is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / "dist"


def _decode(answer: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(answer["data"]), dtype="<f4").reshape(answer["dims"])


class _Files(http.server.SimpleHTTPRequestHandler):
    """Serves the page, the model and the runtime's files, and nothing else."""

    routes: dict[str, Path] = {}
    runtime: Path = Path()

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0]
        if path.startswith("/ort/") and "/" not in path[5:]:
            return str(self.runtime / path[5:])
        return str(self.routes.get(path, Path("/nonexistent")))

    def log_message(self, *args) -> None:  # quiet: the page's requests are not the run's news
        pass


_Files.extensions_map = {**_Files.extensions_map, ".wasm": "application/wasm", ".mjs": "text/javascript", ".onnx": "application/octet-stream"}


class OnnxInBrowser(OnnxFormat):
    """The `.onnx` artifact loaded by onnxruntime-web in headless Chromium. A context manager:
    the browser and the local server live until the check is over."""

    name = CHECK
    runtime = f"{PACKAGE} {VERSION} in headless Chromium (wasm)"

    def __init__(self, configured_chromium: Optional[str], cache: str):
        self.configured_chromium, self.cache = configured_chromium, cache
        self._closers: list = []

    def __enter__(self) -> "OnnxInBrowser":
        return self

    def __exit__(self, *exc) -> None:
        for close in reversed(self._closers):
            close()

    def open(self, path: Path) -> Restored:
        page = self._page(path)
        ready = page.evaluate("window.pipeline")
        if "error" in ready:
            raise ArtifactError(f"onnxruntime-web could not load {path.name}: {ready['error']}")

        def run(batch: np.ndarray) -> np.ndarray:
            return _decode(page.evaluate("([data, shape]) => window.pipeline.run(data, shape)", [_encode(batch), list(batch.shape)]))

        def seconds(batch: np.ndarray, calls: int) -> float:
            return page.evaluate("([data, shape, calls]) => window.pipeline.seconds(data, shape, calls)", [_encode(batch), list(batch.shape), calls])

        restored = self.restored(run, page)
        restored.seconds_per_call = seconds
        self.runtime = f"{PACKAGE} {ready['versions']['web']} in headless {_browser_name(ready['agent'])} (wasm)"
        return restored

    def _page(self, model: Path):
        """A page on 127.0.0.1 that has loaded the runtime and the model."""
        from playwright.sync_api import sync_playwright

        page_dir = Path(tempfile.mkdtemp(prefix="onnx-browser-"))
        self._closers.append(lambda: shutil.rmtree(page_dir, ignore_errors=True))
        (page_dir / "index.html").write_text(PAGE)
        handler = type("Files", (_Files,), {"routes": {"/": page_dir / "index.html", "/model.onnx": model}, "runtime": install_runtime(self.cache)})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._closers.append(lambda: (server.shutdown(), server.server_close()))

        playwright = sync_playwright().start()
        self._closers.append(playwright.stop)
        browser = playwright.chromium.launch(executable_path=chromium(self.configured_chromium), args=CHROMIUM_ARGS)
        self._closers.append(browser.close)
        page = browser.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        failures: list[str] = []  # what the page could not fetch or run, so a broken page fails at once, not at the timeout
        page.on("pageerror", lambda error: failures.append(str(error)))
        page.on("response", lambda response: failures.append(f"{response.url}: HTTP {response.status}") if response.status >= 400 else None)
        page.goto(f"http://127.0.0.1:{server.server_port}/")
        for _ in range(PAGE_TIMEOUT_MS // 1000):
            if page.evaluate("window.pipeline !== undefined"):
                return page
            if failures:
                raise ArtifactError(f"the page failed: {'; '.join(failures)}")
            page.wait_for_timeout(1000)
        raise ArtifactError(f"the page did not load the model within {PAGE_TIMEOUT_MS // 1000} s")


def _encode(batch: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(batch, dtype="<f4").tobytes()).decode()


def _browser_name(agent: str) -> str:
    """`HeadlessChrome/156.0.8078.73` from the user agent, as `Chromium 156`."""
    for part in agent.split():
        if part.startswith(("HeadlessChrome/", "Chrome/")):
            return f"Chromium {part.split('/')[1].split('.')[0]}"
    return "Chromium"
