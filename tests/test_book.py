"""The book builds offline and its chapter pages render, figures included, in a real browser.

`bash tools/build_book.sh` (Jupyter Book 1.0.4) must turn every notebook in notebooks/ into a
page from its committed outputs. Each page is then opened in headless Chromium (Debian's
/usr/bin/chromium, driven by Playwright; no browser is downloaded, and the page may not reach
the network): the chapter title must be visible, every figure must have decoded
(naturalWidth > 0), there must be at least as many figures as the notebook has image outputs,
and the exercises' solutions must be folded. A screenshot of each page is saved to
book/_build/screenshots/<chapter>.png.

Skipped, with a message, only when jupyter-book is not installed (the `book` extra).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "jupyter_book",
    reason="jupyter-book is not installed; install the book extra: pip install -e '.[book]'",
)

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "book" / "_build" / "html"
SHOTS = ROOT / "book" / "_build" / "screenshots"
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _title(notebook: Path) -> str:
    """The first level-1 heading of the notebook's markdown."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    raise AssertionError(f"{notebook.name} has no '# Title' heading")


def _image_outputs(notebook: Path) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return sum(
        "image/png" in out.get("data", {})
        for cell in cells
        if cell["cell_type"] == "code"
        for out in cell.get("outputs", [])
    )


@pytest.fixture(scope="module")
def site() -> Path:
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", str(ROOT / "tools" / "build_book.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, f"tools/build_book.sh failed:\n{log[-5000:]}"
    assert "Executing" not in log, "the book must use the committed outputs, not run notebooks"
    assert (HTML / "index.html").is_file()
    return HTML


@pytest.fixture(scope="module")
def browser_context(site, tmp_path_factory):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is part of the book extra"
    )
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium), "
            "or point $CHROMIUM at a Chromium binary"
        )
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        # Offline, by construction: local files only (the theme's CDN scripts for MathJax and
        # widgets fail fast instead of waiting on a network that is not there).
        context.route(
            "**/*",
            lambda route: (
                route.continue_() if route.request.url.startswith("file:") else route.abort()
            ),
        )
        yield context
        context.close()


def test_every_chapter_has_a_page_and_a_toc_entry(site):
    assert CHAPTERS, "no notebooks found in notebooks/"
    index = (site / "intro.html").read_text()
    for notebook in CHAPTERS:
        page = site / "notebooks" / f"{notebook.stem}.html"
        assert page.is_file(), f"{notebook.name} was not built"
        assert f"notebooks/{notebook.stem}.html" in index, f"{notebook.name} is not in the toc"


@pytest.mark.parametrize("notebook", CHAPTERS, ids=[n.stem for n in CHAPTERS])
def test_chapter_renders_with_its_figures(browser_context, notebook):
    page = browser_context.new_page()
    try:
        url = (HTML / "notebooks" / f"{notebook.stem}.html").as_uri()
        page.goto(url, wait_until="load")
        title = _title(notebook)
        heading = page.locator("article h1").first
        assert heading.is_visible(), f"{notebook.stem}: no visible title"
        assert title in heading.inner_text(), (title, heading.inner_text())

        images = page.evaluate(
            """() => Array.from(document.querySelectorAll("article img")).map(img => ({
                   src: img.getAttribute('src'), complete: img.complete,
                   width: img.naturalWidth}))"""
        )
        broken = [img["src"] for img in images if not (img["complete"] and img["width"] > 0)]
        assert not broken, f"{notebook.stem}: images that did not load: {broken}"
        expected = _image_outputs(notebook)
        assert expected > 0, f"{notebook.stem} has no figures: every chapter explains in pictures"
        assert len(images) >= expected, (notebook.stem, len(images), expected)

        solutions = page.locator("article details")
        assert solutions.count() >= 1, f"{notebook.stem}: no <details> solutions"
        assert not solutions.first.evaluate("d => d.open"), "solutions must start folded"
        assert "Solution" in solutions.first.locator("summary").inner_text()

        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{notebook.stem}.png"), full_page=True)
    finally:
        page.close()
