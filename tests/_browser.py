"""Headless Chromium over the DevTools protocol: open a page, record what it does.

``open_page(path)`` starts Debian's ``chromium`` (WebGL on SwiftShader, a fresh
profile), opens the file, waits until the report says every figure is drawn
(``window.basinscopeReport``) and returns a :class:`Page` with every request the
page made, every JavaScript exception and console/log error, and a
``screenshot(clip)`` method. Used by the report's browser test and, run as a
script, to take the README's screenshot::

    python tests/_browser.py results/lr-batch/report.html docs/report.png "Loss surfaces" 1150
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One tab of a headless Chromium, driven over its DevTools websocket."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id = ws, 0
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.loaded = False

    def _event(self, msg: dict[str, Any]) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Network.requestWillBeSent":
            self.requests.append(p["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.errors.append(f"exception: {d.get('exception', {}).get('description') or d}")
        elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            self.errors.append(f"console.{p['type']}: {[a.get('value') for a in p['args']]}")
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            self.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif method == "Page.loadEventFired":
            self.loaded = True

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events that arrive meanwhile are kept)."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"evaluating {expression[:60]!r}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait(self, expression: str, timeout: float) -> Any:
        """Poll ``expression`` until it is truthy; its value (or the last one at ``timeout``)."""
        end = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > end:
                return value
            time.sleep(0.2)

    def screenshot(self, clip: dict[str, float] | None = None) -> bytes:
        """A PNG of the page (``clip``: x, y, width, height in CSS pixels)."""
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": True}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])


class Browser:
    """``with Browser() as b: page = b.open(path)``; the profile is removed on exit."""

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0) -> None:
        self.size, self.timeout = (width, height), timeout

    def __enter__(self) -> Browser:
        exe = find_chromium()
        if exe is None:
            raise RuntimeError("no chromium on PATH (apt-get install -y chromium)")
        self.profile, self.pages, self.proc = tempfile.mkdtemp(prefix="bs-chromium-"), [], None
        flags = [
            "--headless=new", "--no-sandbox", "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist", "--no-first-run",
            "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions",
            "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
            f"--window-size={self.size[0]},{self.size[1]}", "about:blank",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            [exe, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        port_file = Path(self.profile) / "DevToolsActivePort"
        end = time.monotonic() + self.timeout
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if self.proc.poll() is not None or time.monotonic() > end:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:]
                self.__exit__()
                raise RuntimeError(f"chromium did not start: {err}")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split("\n")[0])
        return self

    def open(self, path: str | Path) -> Page:
        import websocket

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list") as r:
            targets = [t for t in json.load(r) if t["type"] == "page"]
        ws = websocket.create_connection(
            targets[0]["webSocketDebuggerUrl"], timeout=self.timeout, suppress_origin=True
        )
        page = Page(ws)
        self.pages.append(page)
        for domain in ("Network", "Runtime", "Log", "Page"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", url=Path(path).resolve().as_uri())
        end = time.monotonic() + self.timeout
        while not page.loaded and time.monotonic() < end:
            page._event(json.loads(ws.recv()))
        return page

    def __exit__(self, *exc: Any) -> None:
        for page in self.pages:
            page.ws.close()
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)


REPORT_DONE = (
    "window.basinscopeReport && "
    "window.basinscopeReport.drawn + window.basinscopeReport.failed.length "
    "=== window.basinscopeReport.total"
)


def main(argv: list[str]) -> int:
    """``REPORT OUT.png [SECTION [HEIGHT]]``: a screenshot from the heading SECTION (default:
    the first figure) down HEIGHT CSS pixels (default 1400)."""
    report, out = argv[1], Path(argv[2])
    section = argv[3] if len(argv) > 3 else None
    height = int(argv[4]) if len(argv) > 4 else 1400
    with Browser(width=1280, height=height) as b:
        page = b.open(report)
        page.wait(REPORT_DONE, 120)
        time.sleep(1.0)  # let WebGL finish its first frame
        if section is None:
            top = page.evaluate(
                "document.querySelector('.js-plotly-plot').getBoundingClientRect().top + scrollY"
            )
        else:
            top = page.evaluate(
                "Array.from(document.querySelectorAll('h2')).find(h => h.textContent === "
                f"{json.dumps(section)}).getBoundingClientRect().top + scrollY - 10"
            )
        shot = page.screenshot({"x": 0, "y": max(top, 0), "width": 1280, "height": height})
    out.write_bytes(shot)
    print(f"{out}: {len(shot)} bytes")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv))
