"""The web page in real headless Chromium (Debian's package, driven by Playwright): upload an image, see the
class, the probability and the Grad-CAM overlay. `make test` installs chromium when it is missing."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from cxrlab.data.task import load_task
from cxrlab.runs import RunDir

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these, Chromium tries to reach Google's services at start-up, which a closed network refuses.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(exported_run):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "cxrlab", "serve", str(exported_run), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail("cxrlab serve exited: " + process.stdout.read())
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("cxrlab serve did not answer /health within 120 s")
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_upload_in_chromium_shows_class_probability_and_overlay(server, exported_run, tmp_path):
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    cfg = RunDir(exported_run).load_config()
    image = load_task(cfg.data_root, 28, cfg.classes, splits=("val",)).splits["val"].images[0].numpy()
    upload = tmp_path / "chest.png"
    Image.fromarray(image).resize((256, 256)).save(upload)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(server)
        assert "not a diagnosis" in page.inner_text("#disclaimer")
        page.set_input_files("#file", str(upload))
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        assert page.inner_text("#class") in cfg.classes
        probability = float(page.inner_text("#probability"))
        assert 0 <= probability <= 1
        page.wait_for_function("document.getElementById('overlay').naturalWidth > 0", timeout=30_000)
        assert page.evaluate("document.getElementById('overlay').naturalWidth") == 224
        assert "PHANTOM" in page.inner_text("#result-disclaimer")
        shot = Path(os.environ.get("CXRLAB_SCREENSHOT", tmp_path / "page.png"))
        page.screenshot(path=str(shot), full_page=True)
        # a bad file shows a message and the page keeps working
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"not an image")
        page.set_input_files("#file", str(bad))
        page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30_000)
        assert "notes.png" in page.inner_text("#error")
        browser.close()
    assert shot.stat().st_size > 10_000
