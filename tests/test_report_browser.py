"""report.html in a real browser: headless Chromium, driven over the DevTools protocol.

Chromium is started with `--remote-debugging-pipe` (JSON messages ending in NUL on file
descriptors 3 and 4), so no websocket client or other Python package is needed. The test loads
the report from a file:// URL with the network disabled, then checks what a user would see:
no console errors, every plot decoded, the summary table sorted by a real mouse click. A
screenshot is saved to test-artifacts/ in the repository root.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from headbench.report import write_report
from test_report import ALL_PLOTS, make_run

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
WIDTH, HEIGHT = 1280, 2000
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio",
         "--remote-debugging-pipe", f"--window-size={WIDTH},{HEIGHT}"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


class Browser:
    """Headless Chromium and one page, spoken to over the DevTools pipe."""

    def __init__(self, executable: str, timeout: float = 60.0):
        self.timeout, self.events, self._next_id, self._buffer = timeout, [], 0, b""
        self.profile = tempfile.mkdtemp(prefix="headbench-chromium-")
        self.log = open(Path(self.profile) / "stderr.log", "w+b")
        to_chrome_r, self._out = os.pipe()
        self._in, from_chrome_w = os.pipe()

        def child_fds() -> None:  # Chromium reads commands on fd 3 and writes replies on fd 4
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome_r, from_chrome_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={self.profile}",
                                      "about:blank"], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log, preexec_fn=child_fds,
                                     close_fds=False)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]

    def call(self, method: str, params: dict | None = None, page: bool = False) -> dict:
        """Send one command (to the page when `page`) and return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if page:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def page(self, method: str, params: dict | None = None) -> dict:
        return self.call(method, params, page=True)

    def evaluate(self, expression: str):
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, method: str) -> dict:
        while True:
            for event in self.events:
                if event.get("method") == method:
                    self.events.remove(event)
                    return event
            self._read()

    def click(self, selector: str) -> None:
        """A real mouse click (press + release) at the centre of the element."""
        x, y = self.evaluate(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                   "button": "left", "clickCount": 1})

    def _read(self) -> dict:
        """The next message; events are kept in self.events."""
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"Chromium did not answer (exit code {self.proc.poll()}):\n"
                                   + self.stderr_tail())
            if select.select([self._in], [], [], min(left, 1.0))[0]:
                self._buffer += os.read(self._in, 1 << 20)
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def stderr_tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._in, self._out):
            os.close(fd)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def console_errors(events: list[dict]) -> list[str]:
    """Uncaught exceptions, console.error/assert calls and error log entries (failed loads)."""
    errors = []
    for e in events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.exceptionThrown":
            details = p.get("exceptionDetails") or {}
            errors.append((details.get("exception") or {}).get("description")
                          or details.get("text", "uncaught exception"))
        elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif e.get("method") == "Log.entryAdded" and p["entry"].get("level") == "error":
            errors.append(f"{p['entry'].get('source')}: {p['entry'].get('text')} "
                          f"{p['entry'].get('url', '')}")
    return errors


@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        pytest.skip("Chromium not installed: apt-get install chromium (the CI script installs it)")
    b = Browser(executable)
    yield b
    b.close()


def open_report(browser: Browser, report: Path) -> None:
    browser.events.clear()
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.page(f"{domain}.enable")
    browser.page("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                      "downloadThroughput": -1,
                                                      "uploadThroughput": -1})
    browser.page("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": HEIGHT,
                                                        "deviceScaleFactor": 1, "mobile": False})
    browser.page("Page.navigate", {"url": report.resolve().as_uri()})
    browser.wait_for("Page.loadEventFired")


def summary_order(browser: Browser) -> list[str]:
    return browser.evaluate("Array.from(document.querySelectorAll('#summary-table tbody tr'))"
                            ".map(r => r.cells[0].textContent)")


def column_values(browser: Browser, column: int) -> list[float]:
    return browser.evaluate(f"""Array.from(document.querySelectorAll('#summary-table tbody tr'))
        .map(r => Number(r.cells[{column}].getAttribute('data-value')))""")


def screenshot(browser: Browser, path: Path) -> None:
    """The whole page (up to 12000 px tall) as PNG."""
    height = browser.page("Page.getLayoutMetrics")["cssContentSize"]["height"]
    shot = browser.page("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": WIDTH, "height": min(height, 12000), "scale": 1}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def check_report_in_browser(browser: Browser, run_dir: Path, name: str) -> list[str]:
    """Render `run_dir`'s report and check it as a user sees it; returns the plots' alt texts.

    Asserts: every image (plots, thumbnails, CAMs) decoded, clicking the test-accuracy header
    sorts the table ascending then descending, no console errors. Saves
    test-artifacts/<name>.png (after expanding the head sections).
    """
    open_report(browser, write_report(run_dir))
    plots = browser.evaluate("Array.from(document.querySelectorAll('img.plot'))"
                             ".map(i => [i.alt, i.complete, i.naturalWidth])")
    assert plots and all(complete and width > 0 for _, complete, width in plots), plots
    broken = browser.evaluate("Array.from(document.images).filter(i => !i.naturalWidth)"
                              ".map(i => i.alt)")
    assert broken == []
    for expected in (sorted, lambda v: sorted(v, reverse=True)):
        browser.click("#summary-table th:nth-child(2)")  # test accuracy
        values = column_values(browser, 1)
        assert values == expected(values), values
    browser.click("#heads button")  # 'expand all', so the screenshot shows every head
    screenshot(browser, ARTIFACTS / f"{name}.png")
    assert console_errors(browser.events) == []
    return [alt for alt, _, _ in plots]


def test_report_renders_in_chromium_with_plots_loaded_and_sortable_table(browser, tmp_path):
    run = make_run(tmp_path, classes=("ants", "<bees>"))
    alts = check_report_in_browser(browser, run, "report-browser")
    assert sorted(a.split(":")[0] for a in alts) == sorted(ALL_PLOTS)
    assert (ARTIFACTS / "report-browser.png").stat().st_size > 10_000

    # Ascending again, then by name, then by head params; each a real mouse click.
    browser.click("#summary-table th:nth-child(2)")
    assert summary_order(browser) == ["flatten", "gmp", "attention", "gap"]
    browser.click("#summary-table th:nth-child(1)")
    assert summary_order(browser) == ["attention", "flatten", "gap", "gmp"]
    browser.click("#summary-table th:nth-child(4)")  # head params; ties keep their order
    assert summary_order(browser) == ["gap", "gmp", "flatten", "attention"]
    assert browser.evaluate("document.querySelector('#summary-table tr.best td').textContent") \
        == "gap"
    assert console_errors(browser.events) == []


def test_head_sections_expand_with_the_toggle_button(browser, tmp_path):
    open_report(browser, write_report(make_run(tmp_path, analyses=())))
    closed = "Array.from(document.querySelectorAll('details.head')).filter(d => !d.open).length"
    assert browser.evaluate(closed) == 4
    browser.click("#heads button")  # 'expand all'
    assert browser.evaluate(closed) == 0
    assert console_errors(browser.events) == []


def test_browser_check_catches_console_errors_and_broken_plots(browser, tmp_path):
    # Guards the harness itself: a check that cannot fail would pass any report.
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><link rel="icon" href="data:,">'
                    '<img class="plot" src="gone.png">'
                    '<script>console.error("boom"); notDefined();</script>')
    open_report(browser, page)
    assert browser.evaluate("document.querySelector('img.plot').naturalWidth") == 0
    errors = console_errors(browser.events)
    assert len(errors) == 3, errors
    text = " | ".join(errors)
    assert "boom" in text and "gone.png" in text and "notDefined" in text


@pytest.mark.slow
def test_report_of_a_real_compare_run_works_in_chromium(browser, tmp_path):
    from headbench.compare import compare
    from headbench.synthetic import make_shapes_dataset
    data = make_shapes_dataset(tmp_path / "shapes", per_class=8, image_size=64)
    run = compare(data, backbone="resnet18", weights="none", heads=["gap", "flatten"], seeds=2,
                  epochs=2, input_size=64, out=tmp_path, cache_dir=tmp_path / "cache",
                  shifts=[0, 8], sizes=[64, 96], shots=["1", "all"], cam=1, workers=0,
                  report=False)
    alts = check_report_in_browser(browser, run.run_dir, "report-browser-real-run")
    assert sorted(a.split(":")[0] for a in alts) == sorted([*ALL_PLOTS, "verdict-forest"])
    # the verdict and its forest plot are on the first screen (1400×900 and narrower)
    browser.evaluate("window.scrollTo(0, 0)")
    bottom = browser.evaluate(
        "document.getElementById('verdict-forest').getBoundingClientRect().bottom")
    assert 0 < bottom <= 900, bottom
    assert browser.evaluate("document.querySelectorAll('figure.cam img').length") >= 2


@pytest.mark.slow
def test_report_of_several_backbones_draws_the_pareto_fronts_in_chromium(browser, tmp_path):
    from headbench.compare import compare
    from headbench.synthetic import make_shapes_dataset
    data = make_shapes_dataset(tmp_path / "shapes", per_class=8, image_size=64)
    run = compare(data, backbone="resnet18,mobilenet", weights="none", heads=["gap", "flatten"],
                  seeds=1, epochs=2, input_size=64, out=tmp_path, cache_dir=tmp_path / "cache",
                  shots="none", cam=0, workers=0, report=False)
    alts = check_report_in_browser(browser, run.run_dir, "report-browser-backbones")
    assert {"pareto-latency", "pareto-params"} <= {a.split(":")[0] for a in alts}
    for plot_id in ("pareto-latency", "pareto-params"):
        box = browser.evaluate(f"(() => {{ const i = document.querySelector('#{plot_id} img');"
                               "i.scrollIntoView(); const r = i.getBoundingClientRect();"
                               "return [r.width, r.height, i.naturalWidth]; })()")
        assert box[0] > 300 and box[1] > 200 and box[2] > 0, box
        caption = browser.evaluate(f"document.querySelector('#{plot_id} p').textContent")
        assert "Pareto front" in caption and "recommended pair" in caption
    rows = browser.evaluate("document.querySelectorAll('#summary-table tbody tr').length")
    assert rows == 4  # one table of every pair
