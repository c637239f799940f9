"""End to end: a real `tensorboard --logdir` and a real headless Chromium.

Starts TensorBoard on 127.0.0.1 over the demo logdir (seed 001's sigmoid /
tanh / relu runs trained with the hook, plus a run whose layer is named
`<img src=x onerror=alert(1)>`), opens the Gradient Flow tab with Debian's
chromium driven by Playwright, and checks what a user sees. Saves a
screenshot to test-artifacts/ (gitignored); with TB_GRADFLOW_UPDATE_SCREENSHOT=1
it refreshes docs/screenshot.png instead. Nothing is downloaded or installed
at run time.
"""

import os
import pathlib
import time

import pytest

from plugin_fixtures import LONG_LAYER, RLO_LAYER, XSS_LAYER, demo_logdir, tensorboard_server

CHROMIUM = "/usr/bin/chromium"
ROOT = pathlib.Path(__file__).resolve().parent.parent
SCREENSHOT = (
    ROOT / "docs" / "screenshot.png"
    if os.environ.get("TB_GRADFLOW_UPDATE_SCREENSHOT") == "1"
    else ROOT / "test-artifacts" / "gradflow_tab.png"
)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install chromium)")

# Pixels of the first heatmap canvas that are not the page background.
PAINTED_PIXELS_JS = """
() => {
  const canvas = document.querySelector("#heatmaps canvas.heatmap-canvas");
  const ctx = canvas.getContext("2d");
  const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const colours = new Set();
  let painted = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] === 0) continue;  // cleared canvas = page background
    painted++;
    colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
  }
  return { painted, total: data.length / 4, colours: colours.size };
}
"""


def _plugin_frame(page, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for frame in page.frames:
            if "plugin_entry.html" in frame.url and "gradflow" in frame.url:
                return frame
        page.wait_for_timeout(200)  # pumps Playwright events; time.sleep would not
    raise AssertionError(f"no Gradient Flow iframe; frames: {[f.url for f in page.frames]}")


@pytest.fixture(scope="module")
def browser_page(seed001_logdir):
    from playwright.sync_api import sync_playwright

    logdir = demo_logdir(str(seed001_logdir["logdir"]))
    with tensorboard_server(logdir) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, color_scheme="light")
            events = {"dialogs": [], "errors": [], "offsite": []}
            page.on("dialog", lambda d: (events["dialogs"].append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: events["errors"].append(str(e)))
            page.on(
                "request",
                lambda r: None if r.url.startswith(url) or r.url.startswith("data:") else events["offsite"].append(r.url),
            )
            page.goto(f"{url}/#gradflow")
            frame = _plugin_frame(page)
            frame.wait_for_function("document.body.dataset.heatmapPainted === 'true'", timeout=60_000)
            frame.wait_for_function("document.body.dataset.alertsPainted === 'true'", timeout=60_000)
            frame.wait_for_selector("tr.alert-row", timeout=30_000)
            frame.wait_for_function("document.querySelectorAll('#distribution canvas').length > 0", timeout=30_000)
            yield page, frame, events, url
        finally:
            browser.close()


def test_tab_appears(browser_page):
    page, _, _, _ = browser_page
    tabs = page.locator("plugin-selector, .plugin-selector, [role=tablist]").first
    assert "gradient flow" in tabs.inner_text().lower()


def test_heatmap_has_painted(browser_page):
    _, frame, _, _ = browser_page
    pixels = frame.evaluate(PAINTED_PIXELS_JS)
    assert pixels["painted"] > 0.3 * pixels["total"], pixels
    assert pixels["colours"] > 20, pixels  # a colour map, not a blank fill
    assert frame.locator("#heatmaps canvas.heatmap-canvas").count() == 5  # one per readable run


def test_alerts_table_names_the_sigmoid_runs_first_hidden_layer(browser_page):
    _, frame, _, _ = browser_page
    rows = frame.locator("tr.alert-row")
    texts = [rows.nth(i).inner_text() for i in range(rows.count())]
    assert any("seed001/sigmoid/train" in t and "sigmoid/sigmoid1" in t and "vanishing" in t for t in texts), texts
    # The ReLU twin may show dead units (narrow Dense(5) layers), never a vanishing gradient.
    assert not any("relu/train" in t and "vanishing" in t for t in texts), texts


def test_choosing_an_alert_focuses_the_heatmap(browser_page):
    _, frame, _, _ = browser_page
    frame.locator("tr.alert-row", has_text="sigmoid/sigmoid1").first.click()
    frame.wait_for_function("window.gradflowApp.selection.layer === 'sigmoid/sigmoid1'")
    selection = frame.evaluate("window.gradflowApp.selection")
    assert selection["run"] == "seed001/sigmoid/train"
    frame.wait_for_function("document.querySelector('#distribution .panel-meta').textContent.includes('sigmoid1')")
    assert "sigmoid/sigmoid1" in frame.locator("#distribution").inner_text()


def test_hover_shows_layer_step_and_exact_value(browser_page):
    page, frame, _, _ = browser_page
    canvas = frame.locator("#heatmaps section.heatmap-panel[data-run='seed001/sigmoid/train'] canvas")
    page.wait_for_timeout(1000)  # a row click scrolls smoothly; let it settle
    box = canvas.bounding_box()
    canvas.hover(position={"x": box["width"] - 20, "y": 10})
    frame.wait_for_selector(".tooltip:not([hidden])")
    text = frame.locator(".tooltip").inner_text()
    assert "sigmoid/sigmoid1" in text and "step" in text and "gradient norm" in text, text
    page.mouse.move(0, 0)


def test_injection_layer_name_renders_as_text(browser_page):
    _, frame, events, _ = browser_page
    cells = frame.locator("td.layer-cell", has_text=XSS_LAYER)
    assert cells.count() >= 1
    assert cells.first.inner_text() == XSS_LAYER
    assert frame.locator("img").count() == 0
    assert events["dialogs"] == []


NAME_LABELS_JS = """
() => {
  const rows = [...document.querySelectorAll("tr.alert-row[data-run='names']")];
  const label = (row) => row.querySelector("td.layer-cell .name");
  const long = rows.find((r) => r.dataset.layer.startsWith("deep/"));
  const rlo = rows.find((r) => r.dataset.layer.startsWith("head/"));
  const panel = document.querySelector("section.heatmap-panel[data-run='names']");
  return {
    longHeight: long.getBoundingClientRect().height,
    longText: label(long).textContent,
    longTitle: label(long).title,
    rloText: label(rlo).textContent,
    rloTitle: label(rlo).title,
    rloIsolated: getComputedStyle(label(rlo)).unicodeBidi,
    panelHeight: panel.getBoundingClientRect().height,
    rawOverrides: [...document.querySelectorAll("body *")].filter(
      (n) => n.children.length === 0 && /[\u202a-\u202e\u2066-\u2069]/.test(n.textContent)).length,
  };
}
"""


def test_long_and_bidi_names_are_shortened_in_the_middle_and_whole_on_hover(browser_page):
    _, frame, _, _ = browser_page
    frame.wait_for_selector("tr.alert-row[data-run='names']", timeout=30_000)
    labels = frame.evaluate(NAME_LABELS_JS)
    assert labels["longHeight"] < 60, labels["longHeight"]  # one line, not 36,000 px
    text = labels["longText"]
    assert len(text) <= 64 and "…" in text and text.startswith("deep/block_") and text.endswith("end"), text
    assert labels["longTitle"] == LONG_LAYER  # the whole name on hover
    # The override is shown, not obeyed: the label reads in the order written.
    assert labels["rloText"] == labels["rloTitle"] == RLO_LAYER.replace("\u202e", "⟨U+202E⟩")
    assert labels["rloIsolated"] == "isolate"
    assert labels["rawOverrides"] == 0
    assert labels["panelHeight"] < 400


def test_unreadable_runs_are_named_with_the_reason(browser_page):
    _, frame, _, _ = browser_page
    note = frame.locator("#unreadable li[data-run='killed']")
    assert note.count() == 1 and "no statistic rows" in note.inner_text()
    assert frame.locator("#heatmaps section.heatmap-panel[data-run='killed']").count() == 0


def test_no_request_leaves_the_origin_and_no_script_error(browser_page):
    _, _, events, _ = browser_page
    assert events["offsite"] == []
    assert [e for e in events["errors"] if "gradflow" in e or "static/" in e] == []


def test_screenshot(browser_page):
    page, frame, _, _ = browser_page
    frame.locator("tr.alert-row", has_text="sigmoid/sigmoid1").first.click()
    frame.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(800)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size < 300_000


def test_histograms_link_opens_the_histograms_dashboard_on_that_tag(browser_page):
    page, frame, events, url = browser_page
    link = frame.locator("a.dist-link")
    href = link.get_attribute("href")
    assert href.startswith(url + "/#histograms&tagFilter=")
    link.click()
    page.wait_for_function("location.hash.startsWith('#histograms')")
    assert "tagFilter=" in page.evaluate("location.hash")
