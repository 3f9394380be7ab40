"""Render e-mail digests in headless Chromium at phone width and check that they stay readable.

    .venv/bin/python bench/digest_render.py                 # every digest the store would send now
    .venv/bin/python bench/digest_render.py --only org-lichtveld --width 360

Composes each opted-in organisation's digest from the store of MATCHER_DATA_DIR / MATCHER_DB_URL (nothing is
sent or recorded), renders its HTML part with Chromium (the Debian package, /usr/bin/chromium, driven by
playwright) at the given width in CSS pixels, writes a full-page PNG to bench/out/digest-<id>-<width>.png and
prints, per digest: the page's scroll width (must not exceed the viewport: no horizontal scrolling), the
number of elements that stick out on the right, and the smallest font size. Exits 1 when one overflows.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
MEASURE = """() => {
  const texts = Array.from(document.querySelectorAll('p, a, h1, h2, strong')).filter(e => e.textContent.trim());
  return {inner: window.innerWidth, scroll: document.documentElement.scrollWidth,
          minFont: Math.min(...texts.map(e => parseFloat(getComputedStyle(e).fontSize))),
          wide: Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5).length,
          matches: document.querySelectorAll('.match').length};
}"""


def render_to_png(pages: dict[str, str], out: Path, width: int = 390) -> dict[str, dict]:
    """Render each named HTML page at ``width`` CSS pixels, save a full-page PNG per page as out/<name>.png,
    and return each page's layout measurements (inner and scroll width, elements past the right edge,
    smallest font size in px, count of .match blocks)."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 800}, device_scale_factor=1)
            for name, html in pages.items():
                page.set_content(html, wait_until="load")
                page.screenshot(path=str(out / f"{name}.png"), full_page=True)
                results[name] = page.evaluate(MEASURE)
        finally:
            browser.close()
    return results


def main(argv: list[str] | None = None) -> int:
    from matcher import digest
    from matcher.engine import Engine
    from matcher.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="one organisation id")
    parser.add_argument("--width", type=int, default=390, help="viewport width in CSS pixels (default 390)")
    args = parser.parse_args(argv)
    engine = Engine(Settings.from_env()).open()
    composer = digest.Composer(engine)
    pages = {}
    for org_id in [args.only] if args.only else engine.store.digest_recipient_ids():
        org = engine.store.digest_recipient(org_id)
        found = composer.compose(org) if org else None
        if found is not None:
            pages[f"digest-{org_id}-{args.width}"] = found.message.get_body(("html",)).get_content()
    if not pages:
        print("no digest to render: nothing new for anyone (or no opted-in organisation)")
        return 0
    bad = 0
    for name, m in render_to_png(pages, OUT, args.width).items():
        ok = m["inner"] == args.width and m["scroll"] <= args.width and m["wide"] == 0
        bad += not ok
        print(f"{'ok  ' if ok else 'WIDE'} {name}.png: scroll width {m['scroll']}/{m['inner']} px, "
              f"{m['wide']} element(s) past the edge, smallest text {m['minFont']:g} px, {m['matches']} match(es)")
    print(f"{len(pages)} digest(s) rendered to {OUT}; {bad} overflow(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
