"""The playground page in a real browser: Debian's chromium driven by playwright (`make test-browser`).

Skips, saying why, when chromium or playwright is missing, so `make test` runs without a browser. Playwright
never downloads a browser here: it launches /usr/bin/chromium.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import randomize

import innerpissa as ip
from innerpissa.adapter import AdapterConfig

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("INNERPISSA_CHROMIUM", "/usr/bin/chromium"))
#: the flags a sandboxed CI container needs (no GPU, no network services, no first-run UI)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch_chromium(playwright):
    """Debian's chromium through playwright (never playwright's own browser download)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)


@pytest.fixture(scope="module")
def sync_playwright():
    if not CHROMIUM.exists():
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install -y chromium (.ci/run does; make test-browser runs this)")
    mod = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[browser]' "
                              "(make test-browser does)")
    return mod.sync_playwright


def test_slider_generate_shows_different_continuations_at_minus_and_plus_one(sync_playwright, tmp_path, one_thread):
    pytest.importorskip("fastapi")
    from innerpissa.serve.launch import Serve, background, build_app

    model, _ = ip.load_model("tiny-random")
    ip.attach(model, AdapterConfig(r=8))
    randomize(ip.adapter_parameters(model), std=1.0)  # large enough that c = -1 and +1 read differently
    ip.save_adapter(model, tmp_path / "a", coeff_range=(-1.0, 1.0), extra={"config": {"data": {"builtin": "sentiment"}}})
    app = build_app(Serve(adapter=(f"sentiment={tmp_path / 'a'}",), model="tiny-random", max_tokens=64))
    with background(app) as url, sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.goto(url)
            slider = page.locator("#slider-sentiment")
            slider.wait_for()
            assert slider.input_value() == "0.5"
            slider.focus()
            for _ in range(10):  # the user moves the slider: 0.5 -> 1.0 in steps of 0.05
                page.keyboard.press("ArrowRight")
            assert slider.input_value() == "1"
            assert page.locator("#value-sentiment").inner_text() == "1.00"
            page.click("#generate")
            page.wait_for_selector("#status[data-state=done]", timeout=120_000)
            cols = page.locator("#row .col")
            assert cols.count() == 5
            assert [cols.nth(i).get_attribute("data-c") for i in range(5)] == ["-1", "-0.5", "0", "0.5", "1"]
            minus = page.locator('.col[data-c="-1"] .text').inner_text()
            plus = page.locator('.col[data-c="1"] .text').inner_text()
            assert minus.strip() and plus.strip() and minus != plus
            assert "sentiment" in page.locator('.col[data-c="1"] .score').inner_text()  # the VADER score is shown
            assert page.locator("#error").inner_text() == ""
        finally:
            browser.close()
