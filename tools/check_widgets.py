"""Check the chapters' widgets in a real JupyterLab, driven through headless Chromium.

The widget callbacks are unit-tested in Python (tests/test_plots_*.py); this checks the other
half, the part only a browser shows: that in JupyterLab each chapter's widget renders its
controls, and that changing a control redraws the figure below it. For each notebook it

1. starts JupyterLab (no token, a private port) and opens the notebook in Chromium;
2. runs every cell (Run > Run All Cells) and waits for the kernel to go idle;
3. finds the first ipywidgets dropdown, slider or toggle, screenshots the widget, changes the
   control (the next dropdown option, a slider step to the right, the other toggle button),
   waits for the redraw, and screenshots it again;
4. reports whether the figure's image changed.

Screenshots go to `book/_build/widgets/<notebook>-{before,after}.png`, to look at by eye.
Needs the `notebooks` and `book` extras (JupyterLab, ipywidgets, playwright) and Debian's
`/usr/bin/chromium`. Run: `.venv-test/bin/python tools/check_widgets.py [NOTEBOOK ...]`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "book" / "_build" / "widgets"
CHROMIUM = "/usr/bin/chromium"
#: the chapters with a widget, and how long running all their cells may take
CHAPTERS = {
    "02_per_layer_embeddings.ipynb": 300,
    "03_hybrid_attention.ipynb": 300,
    "05_moe_routing.ipynb": 400,
    "06_int4_unpacking.ipynb": 300,
    "07_generation_and_verification.ipynb": 300,
    "08_performance.ipynb": 300,
    "09_vision.ipynb": 300,
    "10_audio.ipynb": 300,
}
CONTROLS = ".jp-OutputArea-output .widget-dropdown select, .jp-OutputArea-output .widget-slider"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_settings(folder: Path) -> Path:
    """User settings for this run: no autosave (the committed notebooks keep their outputs) and
    no news pop-up over the widgets."""
    for plugin, value in (
        ("docmanager-extension/plugin", '{"autosave": false}'),
        ("apputils-extension/notification", '{"fetchNews": "false"}'),
    ):
        path = folder / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
    return folder


def start_lab(port: int, settings: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        f"--port={port}",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        "--ServerApp.disable_check_xsrf=True",
        f"--ServerApp.root_dir={ROOT}",
    ]
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings))
    lab = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    for _ in range(120):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return lab
        time.sleep(0.5)
    lab.kill()
    raise RuntimeError("JupyterLab did not start within 60 s")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def check(page, port: int, name: str, timeout_s: int) -> bool:
    """Open, run, poke the first control; True if the widget's picture changed."""
    # ?reset: a fresh workspace, only this notebook open (no tabs left from the last one)
    page.goto(f"http://127.0.0.1:{port}/lab/tree/notebooks/{name}?reset")
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    # a fresh JupyterLab may ask which kernel to start (the notebook's own is preselected)
    select = page.locator(".jp-Dialog button.jp-mod-accept")
    try:
        select.wait_for(timeout=5_000)
        select.click()
    except Exception:
        pass  # no dialog: the kernel started on its own
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    page.click("text=Run", timeout=10_000)
    page.click("text=Run All Cells", timeout=10_000)
    time.sleep(3)
    page.wait_for_selector(
        ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=timeout_s * 1000
    )
    control = page.locator(CONTROLS).first
    control.wait_for(timeout=30_000)
    widget = control.locator("xpath=ancestor::div[contains(@class,'jp-OutputArea-output')][1]")
    widget.scroll_into_view_if_needed()
    time.sleep(1)
    before, after = OUT / f"{Path(name).stem}-before.png", OUT / f"{Path(name).stem}-after.png"
    widget.screenshot(path=str(before))
    tag = control.evaluate("e => e.tagName")
    if tag == "SELECT":
        options = control.locator("option")
        current = control.evaluate("e => e.selectedIndex")
        control.select_option(index=(current + 1) % options.count())
    else:  # a slider: focus its handle and step right
        control.locator(".noUi-handle, .ui-slider-handle, [role=slider]").first.focus()
        page.keyboard.press("ArrowRight")
    time.sleep(2)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    time.sleep(2)
    widget.screenshot(path=str(after))
    changed = digest(before) != digest(after)
    print(f"{name}: {tag.lower()} changed -> figure {'redrawn' if changed else 'UNCHANGED'}")
    print(f"  {before.relative_to(ROOT)}  {after.relative_to(ROOT)}")
    return changed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", default=list(CHAPTERS), help="file names in notebooks/")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lab = start_lab(port, lab_settings(Path(tempfile.mkdtemp(prefix="lab-settings-"))))
    ok = True
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for name in args.notebooks:
                try:
                    ok &= check(page, port, name, CHAPTERS.get(name, 300))
                except Exception as e:  # report every chapter, then fail
                    shot = OUT / f"{Path(name).stem}-error.png"
                    page.screenshot(path=str(shot))
                    print(f"{name}: FAILED ({type(e).__name__}: {str(e).splitlines()[0]})")
                    print(f"  the page at that moment: {shot.relative_to(ROOT)}")
                    ok = False
            browser.close()
    finally:
        lab.terminate()
        lab.wait(timeout=30)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
