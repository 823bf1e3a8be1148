"""The dashboard page, rendered in a real headless Chromium (Debian's `chromium`).

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages
separated by NUL bytes on file descriptors 3 and 4), so no extra Python package is needed. The
test collects console errors, uncaught exceptions and network requests, counts the plotted
points, selects an experiment, and takes a screenshot.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from eval import log as explog
from eval.dashboard import main as dashboard_main
from eval.ruler import load_ruler

try:
    from tests.explog_helpers import log_synthetic
except ImportError:
    from explog_helpers import log_synthetic

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
INSTALL_HINT = ("Chromium is not installed: run `bash scripts/ensure-chromium.sh` (installs "
                "Debian's chromium with apt-get) and re-run the tests")


def chromium_path() -> str:
    for p in CHROMIUM_CANDIDATES:
        if os.access(p, os.X_OK):
            return p
    found = shutil.which("chromium")
    if found:
        return found
    pytest.fail(INSTALL_HINT, pytrace=False)


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, chromium: str, profile: Path, log_path: Path):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Copy the child's ends to free descriptors >= 10, so that the dup2 onto 3 and 4 in the
        # child cannot clobber one with the other.
        hi_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
        hi_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def wire_fds():
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        args = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                f"--user-data-dir={profile}", "--remote-debugging-pipe",
                "--window-size=1100,1400", "about:blank"]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, pass_fds=(3, 4, hi_r, hi_w),
                                     preexec_fn=wire_fds)
        os.close(hi_r)
        os.close(hi_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from Chromium in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed the debugging pipe (see its log)")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        deadline = time.monotonic() + timeout
        while True:
            ev = self._read_message(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read_message(deadline))
        except TimeoutError:
            pass

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 — it may already be gone
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()


def problems_in(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions, error log entries and any network fetch."""
    out = []
    for ev in events:
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console." + p["type"] + ": " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append("exception: " + str(d.get("exception", {}).get("description")
                                           or d.get("text")))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append("log error: " + p["entry"].get("text", ""))
        elif m == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            if not url.startswith(("file:", "data:", "about:")):
                out.append("network request: " + url)
    return out


@pytest.fixture(scope="module")
def log_db(tmp_path_factory):
    """Six experiments: two judges, a new best, a discard, a leak and a later invalidation."""
    cases = load_ruler()[0]
    db = tmp_path_factory.mktemp("dash") / "experiments.db"
    log_synthetic(db, cases, "base", 2.0)
    log_synthetic(db, cases, "sft-1", 3.5, lever="sft")
    log_synthetic(db, cases, "overgen", 3.0, spec_fail_every=4)
    log_synthetic(db, cases, "leaky <script>alert(1)</script>", 4.5, lever="sft",
                  invalid_reason="leak: ruler-01 in training data")
    bad, _ = log_synthetic(db, cases, "sft-2", 4.0, lever="sft")
    log_synthetic(db, cases, "sonnet-sft-1", 3.0, judge="anthropic:claude-sonnet-4-6")
    explog.invalidate(db, bad.id, "trained on a stale data file")
    return db


def test_dashboard_renders_in_chromium(log_db, tmp_path):
    chromium = chromium_path()
    out = tmp_path / "dashboard.html"
    assert dashboard_main(["--db", str(log_db), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    # Self-contained: nothing is fetched from anywhere.
    for needle in ("http://", "https://", "<link rel=\"stylesheet\"", "src=\""):
        assert needle not in text.replace("http://www.w3.org/2000/svg", ""), needle
    assert "<script>alert(1)</script>" not in text      # labels cannot break out of the JSON

    dt = DevTools(chromium, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        target = dt.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = dt.call("Target.attachToTarget", {"targetId": target, "flatten": True}
                          )["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            dt.call(f"{domain}.enable", session=session)
        dt.call("Page.navigate", {"url": out.as_uri()}, session=session)
        dt.wait_for("Page.loadEventFired", timeout=60)

        def js(expr):
            r = dt.call("Runtime.evaluate", {"expression": expr, "returnByValue": True},
                        session=session)
            if "exceptionDetails" in r:
                raise AssertionError(f"{expr}: {r['exceptionDetails']}")
            return r["result"].get("value")

        assert js("document.body.dataset.ready") == "1"
        exps = explog.read_experiments(log_db)
        assert js("document.querySelectorAll('#headline-chart .exp-point').length") == len(exps)
        statuses = js("Array.from(document.querySelectorAll('#headline-chart .exp-point'))"
                      ".map(c => c.getAttribute('data-status'))")
        assert statuses == [e.effective_status for e in exps]
        assert statuses.count("invalid") == 2            # the leak and the invalidated run
        assert js("document.querySelectorAll('#headline-chart .best-line').length") == 2
        assert js("document.querySelectorAll('#dims-chart .dim-line').length") == 5
        assert js("document.querySelectorAll('#exp-table tbody tr').length") == len(exps)
        # Selecting an experiment shows its per-case notes.
        second = exps[1]
        js(f"document.querySelector('#exp-table tr[data-id=\"{second.id}\"]').click()")
        assert js("document.querySelectorAll('#detail .case-row').length") == 30
        notes = js("Array.from(document.querySelectorAll('#detail .case-notes'))"
                   ".map(td => td.textContent)")
        assert notes[0] == f"synthetic note sft-1 case {load_ruler()[0][0].id}"
        # Clicking a point selects too; the leaky label is shown as text, not run.
        leaky = exps[3]
        js(f"document.querySelector('.exp-point[data-id=\"{leaky.id}\"]')"
           ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
        assert "<script>" in js("document.querySelector('#detail h2').textContent")
        assert "leak: ruler-01" in js("document.getElementById('detail').textContent")
        shot = dt.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                       session=session)
        png = base64.b64decode(shot["data"])
        dt.drain(0.5)
        problems = problems_in(dt.events)
    finally:
        dt.close()
    shot_path = tmp_path / "dashboard.png"
    shot_path.write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert problems == [], problems


def test_problem_detection_catches_a_broken_page(tmp_path):
    """The console-error check is real: a page that throws and logs an error is caught."""
    chromium = chromium_path()
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body>"
                    "<script>console.error('boom'); undefinedFunction();</script></body></html>")
    dt = DevTools(chromium, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        target = dt.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = dt.call("Target.attachToTarget", {"targetId": target, "flatten": True}
                          )["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            dt.call(f"{domain}.enable", session=session)
        dt.call("Page.navigate", {"url": page.as_uri()}, session=session)
        dt.wait_for("Page.loadEventFired", timeout=60)
        dt.drain(0.5)
        problems = problems_in(dt.events)
    finally:
        dt.close()
    assert any("boom" in p for p in problems), problems
    assert any("undefinedFunction" in p for p in problems), problems


def test_dashboard_of_an_empty_or_missing_log(tmp_path, capsys):
    assert dashboard_main(["--db", str(tmp_path / "none.db"), "--out",
                           str(tmp_path / "d.html")]) == 2
    assert "no experiment log" in capsys.readouterr().err
    db = tmp_path / "empty.db"
    explog.connect(db).close()
    assert dashboard_main(["--db", str(db), "--out", str(tmp_path / "d.html")]) == 0
    assert '"experiments": []' in (tmp_path / "d.html").read_text()
