"""Refreshes the README's dashboard screenshots from the demo logdir.

    python examples/demo.py --logdir logs/demo
    python docs/screenshots.py logs/demo

Starts a real `tensorboard` on 127.0.0.1 over the logdir and photographs the
Gradient Flow tab with Debian's chromium (Playwright): seed 001's runs, and
the saturation view of four of seed 003's.
"""

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from plugin_fixtures import tensorboard_server  # noqa: E402
from test_browser_e2e import CHROMIUM, CHROMIUM_ARGS, _plugin_frame  # noqa: E402

# file -> the runs to select (name prefixes), and the page element to photograph.
SHOTS = {
    "screenshot.png": (("seed001/",), None),
    "screenshot_saturation.png": (
        ("seed003/sigmoid/", "seed003/gaussian/", "seed003/relu/", "seed003/tanh/"),
        "#saturation",
    ),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tensorboard_server(args.logdir) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for name, (prefixes, element) in SHOTS.items():
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, color_scheme="light")
            page.goto(f"{url}/#gradflow")
            frame = _plugin_frame(page)
            frame.wait_for_function("document.body.dataset.heatmapPainted === 'true'", timeout=120_000)
            # Keep only the runs of this experiment selected.
            boxes = frame.locator("input[type=checkbox][data-run]")
            for i in range(boxes.count()):
                box = boxes.nth(i)
                if box.get_attribute("data-run").startswith(prefixes) != box.is_checked():
                    box.click()
            frame.wait_for_function("document.body.dataset.heatmapPainted === 'true'", timeout=120_000)
            frame.wait_for_function("document.body.dataset.alertsPainted === 'true'", timeout=120_000)
            page.wait_for_timeout(1500)
            if element is None:
                page.screenshot(path=str(ROOT / "docs" / name))
            else:
                frame.locator(element).scroll_into_view_if_needed()
                page.wait_for_timeout(500)
                frame.locator(element).screenshot(path=str(ROOT / "docs" / name))
            print("wrote", ROOT / "docs" / name)
            page.close()
        browser.close()


if __name__ == "__main__":
    main()
