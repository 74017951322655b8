"""Headless Chromium for the tests: found once, started with the same flags, and driven over the DevTools
protocol through a pipe (``--remote-debugging-pipe``: no port, no websocket library) so that a test can wait
for a single-page app to render what its API calls return, instead of guessing a virtual time budget."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP_REASON = "Debian's chromium is not installed (.ci/run installs it)"


def flags(profile: str | os.PathLike) -> list[str]:
    """Chromium headless, sandbox-less (root in CI), talking to nothing but the pages it is given."""
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio", f"--user-data-dir={profile}"]


# put the pipes at fds 3 and 4 and become chromium (a shell cannot: dash redirects only fds 0-9)
PLACE_FDS = ("import os, sys; r, w = map(int, sys.argv[1:3]); os.dup2(r, 3); os.dup2(w, 4); os.close(r); os.close(w); "
             "os.execv(sys.argv[3], sys.argv[3:])")


def high_fd(fd: int) -> int:
    """``fd`` moved to a number >= 10 (closing the original)."""
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def stop_process_group(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM to the process group that ``process`` leads (started with ``start_new_session=True``), SIGKILL to
    what is left after ``grace`` seconds. The leader is reaped only then, so its group id cannot have been reused
    by an unrelated process in between."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and os.waitid(os.P_PID, process.pid,
                                                     os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        time.sleep(0.05)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


class BrowserError(AssertionError):
    """Chromium died, a command failed, or what a test waited for never appeared (with what the page showed)."""


class Browser:
    """One Chromium process; ``open(url)`` gives a ``Page``. Use as a context manager: the process group is
    killed on exit, so no renderer or GPU helper is left behind."""

    def __init__(self, profile: str | os.PathLike, window: tuple[int, int] = (1600, 1200)):
        if CHROMIUM is None:
            raise BrowserError(SKIP_REASON)
        Path(profile).mkdir(parents=True, exist_ok=True)
        self.log = Path(profile) / "chromium.log"  # a file, not a pipe: nobody reads it until something fails
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        to_chrome_r, from_chrome_w = (high_fd(fd) for fd in (to_chrome_r, from_chrome_w))  # clear of 3 and 4
        # Chromium reads commands from fd 3 and writes replies to fd 4 (NUL-terminated JSON)
        command = [*flags(profile), "--remote-debugging-pipe", f"--window-size={window[0]},{window[1]}", "about:blank"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", PLACE_FDS, str(to_chrome_r), str(from_chrome_w), *command],
                pass_fds=(to_chrome_r, from_chrome_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0

    # ------------------------------------------------------------------ protocol

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise BrowserError(f"chromium exited: {self._stderr()}") from None
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply is None:
                raise BrowserError(f"no reply to {method} within {timeout} s")
            if reply.get("id") == self._next_id:  # anything else is an event: none is needed
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self, deadline: float) -> dict | None:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise BrowserError(f"chromium exited: {self._stderr()}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _stderr(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    # ------------------------------------------------------------------ pages

    def open(self, url: str) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, target)
        page.goto(url)
        return page

    def close(self) -> None:
        """Ask Chromium to quit, then stop what is left of its process group (renderers, zygote, GPU helper)."""
        if self.process.returncode is not None:
            return
        try:
            self.send("Browser.close", timeout=5)
        except (BrowserError, OSError):
            pass
        stop_process_group(self.process, grace=10)
        os.close(self._to_chrome)
        os.close(self._from_chrome)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    """One tab, attached over the browser's pipe (a flat session: its commands carry its session id)."""

    def __init__(self, browser: Browser, session: str, target: str):
        self.browser, self.session, self.target = browser, session, target

    def send(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def goto(self, url: str, timeout: float = 60.0) -> None:
        """Navigate, and wait until the new document is parsed (``Page.navigate`` answers before that: an
        expression evaluated at once may still see the previous document, or one without a body yet)."""
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"{url}: {result['errorText']}")
        document = json.dumps(url.split("#")[0])
        self.wait_for(f"location.href.split('#')[0] === {document} && document.readyState !== 'loading'"
                      " && !!document.body", timeout, what=f"{url} to load")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (awaited when it is a promise), as JSON."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"{expression[:200]}: {details.get('exception', {}).get('description', details)}")
        return result["result"].get("value")

    def text(self) -> str:
        """What the page shows, as a user reads it (``innerText``, whitespace collapsed)."""
        return self.evaluate("document.body ? document.body.innerText.replace(/\\s+/g, ' ') : ''") or ""

    def poll(self, expression: str, until, timeout: float = 30.0, interval: float = 0.25):
        """Evaluate ``expression`` until ``until(value)`` holds or ``timeout`` passes; return the last value
        either way (so that the caller's asserts say what was missing)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if until(value) or time.monotonic() > deadline:
                return value
            time.sleep(interval)

    def wait_for(self, expression: str, timeout: float = 60.0, what: str | None = None, interval: float = 0.25):
        """Poll ``expression`` until it is truthy and return its value; on timeout fail with the page's text."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"waited {timeout:.0f} s for {what or expression}; "
                                   f"the page shows: {self.text()[:3000]}")
            time.sleep(interval)

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) in the middle of the first element matching ``selector``."""
        box = self.evaluate(f"""(() => {{
            const el = document.querySelector({json.dumps(selector)});
            if (!el) return null;
            el.scrollIntoView({{block: "center"}});
            const r = el.getBoundingClientRect();
            return {{x: r.left + r.width / 2, y: r.top + r.height / 2}}; }})()""")
        if not box:
            raise BrowserError(f"nothing to click at {selector!r}; the page shows: {self.text()[:2000]}")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"], "button": "left",
                                                   "clickCount": 1})

    def close(self) -> None:
        """Close the tab (its renderer goes; the browser stays)."""
        self.browser.send("Target.closeTarget", {"targetId": self.target})

    def __enter__(self) -> "Page":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def screenshot(self, path: str | os.PathLike) -> Path:
        """The tab as a PNG (for looking at what a failing test saw)."""
        import base64

        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)
