"""The README's playground screenshot: the server on loopback with an adapter, the page in Debian's chromium
(driven by playwright, never playwright's own browser), one generation, a PNG.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/playground_screenshot.py --adapter runs/sentiment-demo/adapter \
        --out docs/playground.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", required=True, help="NAME=PATH or PATH (named after its concept)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompt", default="Describe the street outside a train station.")
    ap.add_argument("--c", type=float, default=1.0, help="the slider: the row shows -c .. +c")
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--out", type=Path, default=Path("docs/playground.png"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from innerpissa.serve.launch import Serve, background, build_app

    app = build_app(Serve(adapter=(args.adapter,), model=args.model))
    with background(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 760}, device_scale_factor=1)
            page.goto(url)
            slider = page.locator(".slider input[type=range]").first
            slider.wait_for()
            slider.evaluate("(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", args.c)
            page.fill("#prompt", args.prompt)
            page.fill("#maxtokens", str(args.max_tokens))
            page.click("#generate")
            page.wait_for_selector("#status[data-state=done]", timeout=600_000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
        finally:
            browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
