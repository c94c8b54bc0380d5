"""The web page in real headless Chromium (Debian's package, driven by Playwright): upload an image, see the
class, the probability and the Grad-CAM overlay. `make test` installs chromium when it is missing."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlab.core.runs import RunDir
from cxrlab.data.task import load_task
from tests.conftest import start_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these, Chromium tries to reach Google's services at start-up, which a closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def server(exported_run):
    process, url = start_server(exported_run)
    yield url
    process.terminate()
    process.wait(timeout=30)


def visible(page, selector: str) -> bool:
    return page.is_visible(selector)


def test_the_page_shows_each_state_as_such(server, exported_run, tmp_path):
    """Before an upload, after a chest X-ray, after an image unlike the training images, after a refused file."""
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    cfg = RunDir(exported_run).load_config()
    image = load_task(cfg.data_root, 28, cfg.classes, splits=("val",)).splits["val"].images[0].numpy()
    upload = tmp_path / "chest.png"
    Image.fromarray(image).resize((256, 256)).save(upload)
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8)).save(noise)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image")
    shots = Path(os.environ.get("CXRLAB_SCREENSHOTS", tmp_path))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(server)
        assert "not a diagnosis" in page.inner_text("#disclaimer")
        # 1. before any upload: nothing of a result (no empty images, no "P() =", no empty warning box)
        assert (
            not visible(page, "#result") and not visible(page, "#flagged") and not visible(page, "#error") and not visible(page, "#login")
        )
        assert not visible(page, "#preview") and "P() =" not in page.inner_text("body")
        page.screenshot(path=str(shots / "page_empty.png"), full_page=True)
        # 2. a chest X-ray: class, probability, overlay
        page.set_input_files("#file", str(upload))
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        assert page.inner_text("#class") in cfg.classes and 0 <= float(page.inner_text("#probability")) <= 1
        page.wait_for_function("document.getElementById('overlay').naturalWidth > 0", timeout=30_000)
        assert page.evaluate("document.getElementById('overlay').naturalWidth") == 224
        assert "PHANTOM" in page.inner_text("#result-disclaimer") and not visible(page, "#flagged")
        page.screenshot(path=str(shots / "page_xray.png"), full_page=True)
        # 3. an image unlike the training images: flagged, no class
        page.set_input_files("#file", str(noise))
        page.wait_for_selector("#flagged:not([hidden])", timeout=60_000)
        assert "does not look like the images the model was trained on" in page.inner_text("#flagged")
        assert "Refer: no class is given" in page.inner_text("#flagged") and not visible(page, "#result")
        page.screenshot(path=str(shots / "page_flagged.png"), full_page=True)
        # 4. a refused file: the server's message, nothing else
        page.set_input_files("#file", str(bad))
        page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30_000)
        assert "notes.png" in page.inner_text("#error") and "not an image file" in page.inner_text("#error")
        assert not visible(page, "#result") and not visible(page, "#flagged")
        page.screenshot(path=str(shots / "page_refused.png"), full_page=True)
        browser.close()
    assert all((shots / f"page_{state}.png").stat().st_size > 10_000 for state in ("empty", "xray", "flagged", "refused"))


def test_a_locked_page_asks_for_the_token_and_shows_a_wrong_one_as_such(exported_run, tmp_path):
    from playwright.sync_api import sync_playwright

    token = "browser-test-token-0123456789"
    process, url = start_server(exported_run, env={**os.environ, "CXRLAB_TOKEN": token})
    upload = tmp_path / "chest.png"
    Image.fromarray(np.linspace(0, 255, 256 * 256).reshape(256, 256).astype(np.uint8)).save(upload)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url)
            assert visible(page, "#login") and not visible(page, "#drop") and "trained on" not in page.inner_text("body")
            page.fill("#token", "wrong-token-0123456789")
            page.click("#login button")
            page.wait_for_load_state()
            page.set_input_files("#file", str(upload))
            page.wait_for_function("document.getElementById('error').textContent.includes('token')", timeout=30_000)
            assert visible(page, "#login") and "missing or wrong" in page.inner_text("#error")
            page.goto(f"{url}/?token={token}")  # the start-up link
            assert "trained on" in page.inner_text("body") and "token" not in page.url and not visible(page, "#login")
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_an_image_in_the_refer_band_shows_refer_not_a_class(exported_run, tmp_path):
    """A copy of the run whose refer band is set around its probability for one val image: the page says refer,
    why, and the band's two thresholds; the class line holds no class name."""
    from playwright.sync_api import sync_playwright

    import cxrlab
    from tests.conftest import band_around

    run = tmp_path / "banded"
    shutil.copytree(exported_run, run)
    cfg = RunDir(run).load_config()
    upload = tmp_path / "chest.png"
    Image.fromarray(load_task(cfg.data_root, 28, cfg.classes, splits=("val",)).splits["val"].images[0].numpy()).save(upload)
    point = band_around(run, cxrlab.load_run(run).predict(upload)[0].probability)
    process, url = start_server(run)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url)
            page.set_input_files("#file", str(upload))
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            assert page.inner_text("#class").startswith("Refer") and not any(c in page.inner_text("#class") for c in cfg.classes)
            rule = page.inner_text("#rule")
            assert "too uncertain to answer" in rule and f"{point['rule_out']:.3f}" in rule and f"{point['rule_in']:.3f}" in rule
            page.screenshot(path=str(Path(os.environ.get("CXRLAB_SCREENSHOTS", tmp_path)) / "page_refer.png"), full_page=True)
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
