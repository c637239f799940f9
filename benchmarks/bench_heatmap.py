"""Benchmark: the heatmap of a 300-layer x 10,000-step run, from disk to first paint.

    python benchmarks/bench_heatmap.py              # prints a table, writes benchmarks/results/heatmap.json
    python benchmarks/bench_heatmap.py --layers 50 --steps 2000 --no-browser

Not a test: it measures, it does not assert. What it times:

1. writing the synthetic run (EventWriter, no TensorFlow) - context only;
2. loading it through TensorBoard's Python data provider (EventMultiplexer,
   every sample kept, as the plugin's loader configures it);
3. the BASELINE: one raw `read_tensors` of one statistic, all samples, which
   every heatmap request must at least do;
4. the /heatmap route (server downsampling to 1024 columns), cold (first
   request: read, decode, downsample, evaluate the alert rules over every
   step) and warm (series cached), and its response size;
5. the /alerts route, cold;
6. first paint in headless Chromium (Debian's /usr/bin/chromium via Playwright)
   against a real `tensorboard` (default loader): milliseconds from the
   plugin iframe's navigation start to the heatmap being drawn, and to the
   alert marks being drawn, on the first visit (cold server) and on revisits.
"""

import argparse
import datetime
import gzip
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from tb_gradflow import metadata, rules  # noqa: E402
from tb_gradflow.proto import plugin_data_pb2  # noqa: E402
from tb_gradflow.writer import EventWriter  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def write_run(run_dir, n_layers, n_steps, seed=0):
    rng = np.random.default_rng(seed)
    writer = EventWriter(run_dir)
    table = plugin_data_pb2.LayerTable(
        layers=[
            plugin_data_pb2.Layer(name=f"model/block_{i // 3:03d}/dense_{i % 3}", class_name="Dense",
                                  depth=i, parameter_count=4096, has_gradient=True)
            for i in range(n_layers)
        ],
        update_freq=1,
        thresholds=rules.DEFAULT_THRESHOLDS.to_dict(),
        source="benchmarks/bench_heatmap.py (synthetic)",
    )
    writer.write_layer_table(0, table)
    depth = 10.0 ** np.linspace(-4, 0, n_layers)
    for i in range(n_steps):
        norm = (depth * 10.0 ** rng.normal(0, 0.2, n_layers)).astype(np.float32)
        writer.write_layer_statistics(i + 1, {
            metadata.GRAD_NORM: norm,
            metadata.GRAD_RMS: norm / 64,
            metadata.GRAD_MEAN_ABS: norm / 80,
            metadata.GRAD_NORM_INTERVAL_MAX: norm * 1.1,
            metadata.NONFINITE_COUNT: np.zeros(n_layers, np.float32),
        })
    writer.close()


def timed(fn, repeat=1):
    times = []
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, (statistics.median(times) if repeat > 1 else times[0])


def bench_server(logdir, run, columns):
    from tensorboard import context
    from tensorboard.backend import application
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.data import provider as tb_provider
    from tensorboard.plugins import base_plugin
    from werkzeug import test as werkzeug_test
    from werkzeug import wrappers

    from tb_gradflow.plugin.gradflow_plugin import GradFlowPlugin

    def load():
        mux = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={metadata.PLUGIN_NAME: 0})
        mux.AddRunsFromDirectory(logdir)
        mux.Reload()
        return data_provider.MultiplexerDataProvider(mux, logdir)

    provider, load_s = timed(load)
    ctx = context.RequestContext()

    def raw_read():
        return provider.read_tensors(
            ctx, experiment_id="", plugin_name=metadata.PLUGIN_NAME, downsample=10**9,
            run_tag_filter=tb_provider.RunTagFilter(runs=[run], tags=[metadata.layer_statistic_tag("grad_norm")]),
        )

    data, raw_s = timed(raw_read, repeat=3)
    samples = len(data[run][metadata.layer_statistic_tag("grad_norm")])

    def client():
        plugin = GradFlowPlugin(base_plugin.TBContext(logdir=logdir, data_provider=provider))
        return werkzeug_test.Client(application.TensorBoardWSGI([plugin], data_provider=provider), wrappers.Response)

    url = f"/data/plugin/gradflow/heatmap?run={run}&columns={columns}"
    results = {}
    for name, suffix in (("heatmap_cold_no_alerts", "&alerts=false"), ("heatmap_cold", "")):
        c = client()  # a fresh plugin: nothing cached
        response, seconds = timed(lambda: c.get(url + suffix))
        assert response.status_code == 200, response.get_data()[:300]
        results[name] = seconds
    c = client()
    c.get(url)
    response, results["heatmap_warm"] = timed(lambda: c.get(url), repeat=5)
    body = response.get_data()
    results["heatmap_bytes"] = len(body)
    results["heatmap_gzip_bytes"] = len(gzip.compress(body, 6))
    results["heatmap_columns"] = json.loads(body)["column_count"]
    c = client()
    response, results["alerts_cold"] = timed(lambda: c.get("/data/plugin/gradflow/alerts"))
    assert response.status_code == 200
    return dict(results, load=load_s, raw_read=raw_s, samples=samples)


def bench_first_paint(logdir, repeat):
    from playwright.sync_api import sync_playwright

    from plugin_fixtures import tensorboard_server, wait_for_run

    paints, alert_paints = [], []
    with tensorboard_server(logdir) as url, sync_playwright() as p:
        wait_for_run(url, "bench")
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        for i in range(repeat + 1):  # the first visit is cold; the others find the plugin's caches warm
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/#gradflow")
            frame = None
            while frame is None:
                frame = next((f for f in page.frames if "plugin_entry.html" in f.url), None)
                page.wait_for_timeout(50)
            frame.wait_for_function("document.body.dataset.heatmapPainted === 'true'", timeout=600_000)
            ms = frame.evaluate("performance.getEntriesByName('gradflow:first-paint')[0].startTime")
            # Let the server finish the alert rules before the next visit.
            frame.wait_for_function("document.body.dataset.alertsPainted === 'true'", timeout=600_000)
            alerts_ms = frame.evaluate("performance.getEntriesByName('gradflow:alerts-painted')[0].startTime")
            if i == 0:
                cold, cold_alerts = ms, alerts_ms
            else:
                paints.append(ms)
                alert_paints.append(alerts_ms)
            page.close()
        browser.close()
    return {
        "first_paint_cold_ms": cold,
        "alert_marks_cold_ms": cold_alerts,
        "first_paint_warm_ms": statistics.median(paints) if paints else None,
        "alert_marks_warm_ms": statistics.median(alert_paints) if alert_paints else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=300)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--columns", type=int, default=1024)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "heatmap.json"))
    args = parser.parse_args()

    logdir = tempfile.mkdtemp(prefix="tb_gradflow_bench_")
    _, write_s = timed(lambda: write_run(os.path.join(logdir, "bench"), args.layers, args.steps))
    server = bench_server(logdir, "bench", args.columns)
    browser = {}
    if not args.no_browser and os.path.exists(CHROMIUM):
        browser = bench_first_paint(logdir, repeat=3)

    results = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, {platform.python_implementation()} "
                   f"{platform.python_version()}, no GPU",
        "layers": args.layers,
        "steps": args.steps,
        "write_s": write_s,
        **server,
        **browser,
        "ratio_heatmap_cold_to_raw_read": server["heatmap_cold"] / server["raw_read"],
        "ratio_heatmap_cold_no_alerts_to_raw_read": server["heatmap_cold_no_alerts"] / server["raw_read"],
        "ratio_heatmap_warm_to_raw_read": server["heatmap_warm"] / server["raw_read"],
    }
    rows = [
        ("write synthetic run (EventWriter)", f"{write_s:.2f} s", ""),
        ("load via data provider (Python, all samples)", f"{server['load']:.2f} s", ""),
        ("raw read_tensors, 1 statistic  [baseline]", f"{server['raw_read']:.3f} s", "1.00x"),
        (f"/heatmap cold, {server['heatmap_columns']} cols, no alerts", f"{server['heatmap_cold_no_alerts']:.3f} s",
         f"{results['ratio_heatmap_cold_no_alerts_to_raw_read']:.2f}x"),
        (f"/heatmap cold, {server['heatmap_columns']} cols, with alert marks", f"{server['heatmap_cold']:.3f} s",
         f"{results['ratio_heatmap_cold_to_raw_read']:.2f}x"),
        ("/heatmap warm (series cached)", f"{server['heatmap_warm']:.3f} s",
         f"{results['ratio_heatmap_warm_to_raw_read']:.2f}x"),
        ("/heatmap response (JSON / gzip)",
         f"{server['heatmap_bytes'] / 1e6:.2f} / {server['heatmap_gzip_bytes'] / 1e6:.2f} MB", ""),
        ("/alerts cold (rules over every step)", f"{server['alerts_cold']:.3f} s", ""),
    ]
    if browser:
        rows += [
            ("Chromium, first visit: heatmap painted", f"{browser['first_paint_cold_ms']:.0f} ms", ""),
            ("Chromium, first visit: alert marks painted", f"{browser['alert_marks_cold_ms']:.0f} ms", ""),
            ("Chromium, revisit: heatmap painted (median of 3)", f"{browser['first_paint_warm_ms']:.0f} ms", ""),
            ("Chromium, revisit: alert marks painted", f"{browser['alert_marks_warm_ms']:.0f} ms", ""),
        ]
    print(f"\nHeatmap benchmark: {args.layers} layers x {args.steps} logged steps; {results['machine']}; {results['date']}")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'time':>14}  {'vs baseline':>11}")
    for name, value, ratio in rows:
        print(f"{name:<{width}}  {value:>14}  {ratio:>11}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
