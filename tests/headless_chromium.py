"""A minimal headless-Chromium driver over the DevTools protocol (Debian's ``chromium``; no download).

Just enough to open a page with a cookie, click, read the page's text and take a screenshot.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As root, without a sandbox; nothing that phones home (this machine has no network besides loopback).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1100",
    "--remote-debugging-port=0",
]


class Browser:
    """One Chromium process and one page, driven through CDP."""

    def __init__(self, timeout: float = 30.0) -> None:
        from websockets.sync.client import connect

        if CHROMIUM is None:
            raise RuntimeError("chromium is not installed")
        self.profile = Path(tempfile.mkdtemp(prefix="cja-chromium-"))
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        page = next(
            t
            for t in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            if t["type"] == "page"
        )
        self._closing = ExitStack()
        self.ws = self._closing.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout)
        )
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict:
        message_id = next(self._ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for_text(self, text: str, timeout: float = 30.0) -> str:
        """Wait until the page's visible text contains ``text``; return that text."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.evaluate("document.body ? document.body.innerText : ''") or ""
            if text in body:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{text!r} not on the page after {timeout:.0f} s; it shows:\n{body[:3000]}"
                )
            time.sleep(0.3)

    def wait_until(self, expression: str, timeout: float = 10.0) -> None:
        """Wait until a JavaScript expression is truthy (e.g. no animation is still running)."""
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise AssertionError(f"still false after {timeout:.0f} s: {expression}")
            time.sleep(0.1)

    def click_text(self, text: str, selector: str = "button") -> None:
        clicked = self.evaluate(
            f"(() => {{ const el = [...document.querySelectorAll({json.dumps(selector)})]"
            f".find(e => e.innerText.trim() === {json.dumps(text)}); if (el) {{ el.click(); return true; }}"
            f" return false; }})()"
        )
        if not clicked:
            raise AssertionError(f"no {selector} labelled {text!r}")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        if getattr(self, "_closing", None) is not None:
            self._closing.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
