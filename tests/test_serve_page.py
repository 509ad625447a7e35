"""End to end: headless Chromium opens the page of a running `genlab serve`, uploads an image
written by `genlab data brain` through the page's file input, and the prediction is read off
the page and checked against the API's answer for the same file.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: commands on
fd 3, replies on fd 4, JSON messages ending in NUL), so the test needs no driver, no extra
Python package and no network. It is skipped when no Chromium is installed (Debian:
`apt-get install chromium`; .ci/run installs it).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="serving needs the [serve] extra")
import httpx
from serve_helpers import start_server, tiny_brain_run

from genlab.cli import main

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser",
                                                        "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                "(Debian: apt-get install chromium; .ci/run installs it)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-pipe"]


class Chromium:
    """A headless Chromium and a minimal DevTools-protocol client over its debugging pipe."""

    def __init__(self, exe: str, profile: Path):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds_3_and_4():  # in the child, before exec: the browser reads fd 3 and writes fd 4
            r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)  # out of the way of 3 and 4
            w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(r, 3)  # dup2 leaves 3 and 4 inheritable; every other pipe end closes on exec
            os.dup2(w, 4)

        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     preexec_fn=fds_3_and_4, close_fds=False,  # noqa: PLW1509 (dup2 only)
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._replies: queue.Queue = queue.Queue()
        self._next = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                data = json.loads(msg)
                if "id" in data:
                    self._replies.put(data)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 20.0) -> dict:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._replies.get(timeout=max(0.01, deadline - time.time()))
            if reply["id"] == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, session: str, expression: str):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        return r["result"].get("value")

    def wait_for(self, session: str, expression: str, timeout: float = 20.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(session, expression)
            if value:
                return value
            time.sleep(0.1)
        status = self.evaluate(session, "document.getElementById('status')?.textContent")
        raise AssertionError(f"timed out waiting for {expression!r}; page status: {status!r}")

    def close(self):
        with contextlib.suppress(Exception):  # it may already be gone
            self.call("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)


def test_page_classifies_an_uploaded_brain_image(tmp_path_factory, tmp_path):
    run_dir = tiny_brain_run(tmp_path_factory)
    data = tmp_path / "brain"
    assert main(["data", "brain", "--out", str(data), "--n", "2", "--split", "test"]) == 0
    image = min(p for p in data.rglob("*.png") if p.parent != data)
    proc, url = start_server(run_dir, log=tmp_path / "serve.log")
    browser = Chromium(CHROMIUM, tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.call("Page.enable", session=session)
        browser.call("Page.navigate", {"url": url + "/"}, session)
        browser.wait_for(session, "document.body && document.body.dataset.state === 'ready'")
        assert browser.evaluate(session, "document.getElementById('model-name').textContent") \
            == "tiny_lesion_brain"
        node = browser.call("Runtime.evaluate", {"expression": "document.getElementById('file')"},
                            session)["result"]["objectId"]
        browser.call("DOM.setFileInputFiles", {"files": [str(image.resolve())], "objectId": node}, session)
        state = browser.wait_for(session, "['done', 'error'].includes(document.body.dataset.state) "
                                          "&& document.body.dataset.state")
        shown = browser.evaluate(session, """({
            cls: document.getElementById('pred-class').textContent,
            lesion: document.getElementById('lesion').textContent,
            probs: Object.fromEntries([...document.querySelectorAll('#probs tr')].map(
                tr => [tr.dataset.cls, tr.querySelector('td.p').textContent])),
            overlay: (document.getElementById('overlay').src || '').slice(0, 22),
            status: document.getElementById('status').textContent})""")
        api = httpx.post(url + "/v1/predict", timeout=30,
                         files={"file": (image.name, image.read_bytes(), "image/png")})
    finally:
        browser.close()
        proc.terminate()
        proc.wait(timeout=20)
    assert state == "done", shown
    assert api.status_code == 200
    p = api.json()["predictions"][0]
    assert shown["cls"] == p["class"]
    assert shown["probs"] == {k: f"{v:.3f}" for k, v in p["probabilities"].items()}
    assert shown["lesion"].startswith("LESION" if p["lesion"]["call"] else "no lesion")
    assert shown["lesion"] == p["lesion"]["summary"]  # the same words as the API and predict
    assert shown["overlay"] == "data:image/png;base64,"
    assert shown["status"] == f"{image.name}: done"
