"""What the browser tests share: Chromium's path, an app served on a free port, viewports and page checks.

Playwright drives Debian's Chromium (``/usr/bin/chromium``; Playwright's own browser
download needs the internet). ``make test`` installs both; elsewhere the tests skip cleanly.
The fixtures built on these (``browser``, ``base_url``, ``shot_dir``) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@contextlib.contextmanager
def serving(app):
    """Serve ``app`` on a free loopback port for the browser; yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


@contextlib.contextmanager
def serving_model(model_file):
    """Serve an app on ``model_file`` (a fixture model whose card says what the test is about)."""
    from server import create_app

    with serving(create_app({"MODEL_PATH": str(model_file), "TESTING": True, "SECRET_KEY": "test-secret"})) as url:
        yield url


PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
VIEWPORTS = {"phone": PHONE, "desktop": DESKTOP}
GREY = (128, 128, 128)  # the colour fixture cannot tell: an uncertain answer
# Every green the stylesheet uses (--low, --low-bg), as computed styles give them, and any other clear green.
GREEN_JS = """root => {
  const known = ['rgb(29, 107, 53)', 'rgb(232, 245, 236)'];
  const green = c => { const m = c.match(/rgba?\\((\\d+), (\\d+), (\\d+)/); if (!m) return false;
    const [r, g, b] = m.slice(1).map(Number); return known.includes(`rgb(${r}, ${g}, ${b})`) || (g - Math.max(r, b) > 40); };
  const hits = [];
  for (const el of [root, ...root.querySelectorAll('*')]) {
    if (!el.getClientRects().length) continue;
    const s = getComputedStyle(el);
    for (const p of ['color', 'background-color', 'border-left-color', 'fill'])
      if (green(s[p]) && !(p === 'fill' && el.tagName !== 'rect'))
        hits.push(`${el.tagName}#${el.id}.${el.className.baseVal ?? el.className} ${p} ${s[p]}`);
  }
  return hits;
}"""


def watch(page) -> list[str]:
    """Requests answered 404 or 5xx while the page loads (the favicon included)."""
    failures: list[str] = []
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status == 404 or r.status >= 500 else None)
    return failures


def overflow(page) -> int:
    return page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")


def screen_in_browser(page, base_url, image_path):
    page.goto(base_url + "/")
    page.set_input_files("#image", str(image_path))
    with page.expect_navigation():
        page.click("#submit")


def assert_answer_above_the_fold(page, viewport):
    for selector in ("#verdict", "#advice"):
        box = page.locator(selector).bounding_box()
        assert box and box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"], \
            f"{selector} is not on the first screen: {box}"
