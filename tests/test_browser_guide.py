"""The guide's screenshots (docs/report.md): the demo report's pages open offline in headless Chromium without an
error, and each is photographed. With DMD2REPORT_SCREENSHOTS=1 the demo is built at its own sizes and the pictures,
scaled and reduced to a palette, replace docs/images/; otherwise they go to test-artifacts/.

    DMD2REPORT_SCREENSHOTS=1 pytest -q tests/test_browser_guide.py
"""

import os
from pathlib import Path

import pytest

from conftest import ARTIFACTS, CHROMIUM, SCREENSHOTS   # and the `browser` and `demo_build` fixtures

pytestmark = pytest.mark.browser

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); browser tests need Debian's Chromium",
                allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')")

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
# The guide's picture of each page: its file in the site, and the picture's name in docs/images/.
PAGES = {"index.html": "overview", "map.html": "map", "variants.html": "variants", "classes.html": "classes",
         "classes/class-3.html": "class", "metrics.html": "metrics", "atlas.html": "atlas"}
WIDTH = 1000   # pixels of a picture in the guide (the page is shot at 1400 x 900 and scaled)


def _save(png: bytes, path: Path) -> None:
    """The screenshot scaled to WIDTH and reduced to 128 colours: a few hundred KiB for the guide, not megabytes."""
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    im = im.resize((WIDTH, round(im.height * WIDTH / im.width)), Image.Resampling.LANCZOS)
    im.quantize(128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def test_every_page_of_the_demo_opens_offline_and_is_photographed(demo_build, browser):
    _, site, _, _ = demo_build
    out = IMAGES if SCREENSHOTS else ARTIFACTS / "guide"
    out.mkdir(parents=True, exist_ok=True)
    for page_file, name in PAGES.items():
        ctx = browser.new_context(viewport={"width": 1400, "height": 900})
        page = ctx.new_page()
        problems, requests = [], []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((site / page_file).as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=20000)
        page.wait_for_timeout(300)   # the map's first draw
        assert problems == [], (page_file, problems)
        assert [u for u in requests if not u.startswith("file://")] == [], page_file
        _save(page.screenshot(), out / f"{name}.png")
        ctx.close()
    assert set(PAGES.values()) <= {p.stem for p in out.glob("*.png")}
