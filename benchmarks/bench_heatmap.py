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
   step; a fresh plugin each time, the median of --repeat) and warm (series
   cached), and its response size;
5. the /alerts route, cold (median of --repeat);
6. first paint in headless Chromium (Debian's /usr/bin/chromium via Playwright)
   against a real `tensorboard` (default loader): milliseconds from the
   plugin iframe's navigation start to the heatmap being drawn, and to the
   alert marks being drawn, on the first visit (cold server) and on revisits.
"""

import argparse
import datetime
import gzip
import importlib.abc
import json
import os
import pathlib
import platform
import shutil
import statistics
import sys
import tempfile
import time

# The reading side is measured as a TensorBoard server runs it: without
# TensorFlow (TensorBoard would otherwise import it and read files through it).
class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"{name} is not installed here")


sys.meta_path.insert(0, _NoTensorFlow())

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from tb_gradflow import metadata, rules  # noqa: E402
from tb_gradflow.proto import plugin_data_pb2  # noqa: E402
from tb_gradflow.writer import EventWriter  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
LOADERS = ("--load_fast=false", "--load_fast=true")

# The statistics a Keras run writes per layer on every write step (clip_factor
# only under a clipping optimizer), per variable, and per layer on every
# activation row (activation_freq = update_freq by default).
ALERT_RUN_LAYER_STATISTICS = tuple(s for s in metadata.STATISTICS if s != metadata.CLIP_FACTOR)
ALERT_RUN_VARIABLE_STATISTICS = (metadata.GRAD_NORM, metadata.GRAD_RMS, metadata.WEIGHT_NORM, metadata.UPDATE_RATIO)


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


def _float_value(tag, array, summary_metadata=None):
    """A Summary.Value of a float32 vector, as make_tensor_proto writes it (tensor_content),
    built directly: the 50-run logdir holds millions of vectors."""
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

    value = summary_pb2.Summary.Value(tag=tag, tensor=tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=array.size)]),
        tensor_content=np.ascontiguousarray(array, "<f4").tobytes(),
    ))
    if summary_metadata is not None:
        value.metadata.CopyFrom(summary_metadata)
    return value


def write_alert_run(run_dir, n_layers, n_steps, seed):
    """A run as the Keras callback writes it at update_freq=1 (every row a write
    step and an activation row): a layer table with a kernel and a bias per
    layer, 10 layer statistics, 4 variable statistics, 5 activation statistics
    and the 5 alert-count scalars per row. Every 5th run has a vanishing first
    half of the network, every 7th a gradient spike, every 11th a NaN."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.scalar import metadata as scalar_metadata

    rng = np.random.default_rng(seed)
    writer = EventWriter(run_dir)
    layers = [plugin_data_pb2.Layer(name=f"model/dense_{i}", class_name="Dense", activation="tanh", depth=i,
                                    parameter_count=4160, has_gradient=True, activation_capture="in-step",
                                    activation_two_sided=True, is_output=i == n_layers - 1)
              for i in range(n_layers)]
    variables = [plugin_data_pb2.Variable(name=f"model/dense_{i // 2}/{'bias' if i % 2 else 'kernel'}",
                                          layer_index=i // 2, has_gradient=True) for i in range(2 * n_layers)]
    writer.write_layer_table(0, plugin_data_pb2.LayerTable(
        layers=layers, variables=variables, update_freq=1, activation_freq=1,
        thresholds=rules.DEFAULT_THRESHOLDS.to_dict(), source="benchmarks/bench_heatmap.py (synthetic)"))
    depth = 10.0 ** np.linspace(-2 if seed % 5 else -6, 0, n_layers)
    first = set()

    def value(tag, array, make_metadata):
        md = None
        if tag not in first:
            first.add(tag)
            md = make_metadata()
        return _float_value(tag, array, md)

    for i in range(n_steps):
        norm = (depth * 10.0 ** rng.normal(0, 0.2, n_layers)).astype(np.float32)
        nonfinite = np.zeros(n_layers, np.float32)
        if seed % 7 == 0 and i == n_steps // 2:
            norm[n_layers // 2] *= 1e4
        if seed % 11 == 0 and i == n_steps // 3:
            norm[1], nonfinite[1] = np.nan, 3
        layer = dict.fromkeys(ALERT_RUN_LAYER_STATISTICS, norm)
        layer.update({metadata.GRAD_RMS: norm / 64, metadata.GRAD_NORM_INTERVAL_MAX: norm * 1.1,
                      metadata.NONFINITE_COUNT: nonfinite})
        variable = np.repeat(norm / 64, 2)
        activation = rng.uniform(0.0, 0.3, n_layers).astype(np.float32)
        values = [value(metadata.layer_statistic_tag(name), array,
                        lambda name=name: metadata.create_statistic_metadata(name, per="layer"))
                  for name, array in layer.items()]
        values += [value(metadata.variable_statistic_tag(name), variable,
                         lambda name=name: metadata.create_statistic_metadata(name, per="variable"))
                   for name in ALERT_RUN_VARIABLE_STATISTICS]
        values += [value(metadata.activation_statistic_tag(name), activation,
                         lambda name=name: metadata.create_activation_statistic_metadata(name))
                   for name in metadata.ACTIVATION_STATISTICS]
        for kind in rules.KINDS:
            tag = metadata.alert_count_tag(kind)
            scalar = summary_pb2.Summary.Value(tag=tag, simple_value=0.0)
            if tag not in first:
                first.add(tag)
                scalar.metadata.CopyFrom(scalar_metadata.create_summary_metadata(display_name=tag, description=""))
            values.append(scalar)
        writer._emit(i + 1, values)
    writer.close()


def timed(fn, repeat=1):
    times = []
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, (statistics.median(times) if repeat > 1 else times[0])


def load_provider(logdir):
    """TensorBoard's Python data provider over `logdir`, every sample kept (as the plugin's loader configures it)."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer

    mux = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={metadata.PLUGIN_NAME: 0})
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    return data_provider.MultiplexerDataProvider(mux, logdir)


def plugin_client(logdir, provider):
    """A werkzeug test client of TensorBoard's WSGI app with a fresh GradFlow plugin (nothing cached)."""
    from tensorboard.backend import application
    from tensorboard.plugins import base_plugin
    from werkzeug import test as werkzeug_test
    from werkzeug import wrappers

    from tb_gradflow.plugin.gradflow_plugin import GradFlowPlugin

    plugin = GradFlowPlugin(base_plugin.TBContext(logdir=logdir, data_provider=provider))
    return werkzeug_test.Client(application.TensorBoardWSGI([plugin], data_provider=provider), wrappers.Response)


def bench_server(logdir, run, columns, repeat=5):
    from tensorboard import context
    from tensorboard.data import provider as tb_provider

    provider, load_s = timed(lambda: load_provider(logdir))
    ctx = context.RequestContext()

    def raw_read():
        return provider.read_tensors(
            ctx, experiment_id="", plugin_name=metadata.PLUGIN_NAME, downsample=10**9,
            run_tag_filter=tb_provider.RunTagFilter(runs=[run], tags=[metadata.layer_statistic_tag("grad_norm")]),
        )

    data, raw_s = timed(raw_read, repeat=3)
    samples = len(data[run][metadata.layer_statistic_tag("grad_norm")])

    def client():
        return plugin_client(logdir, provider)

    url = f"/data/plugin/gradflow/heatmap?run={run}&columns={columns}"
    results = {}
    # Cold: a fresh plugin each time (nothing cached), the two cases interleaved;
    # the median of `repeat` (the machine may be shared).
    cold = {"heatmap_cold_no_alerts": [], "heatmap_cold": []}
    for _ in range(repeat):
        for name, suffix in (("heatmap_cold_no_alerts", "&alerts=false"), ("heatmap_cold", "")):
            c = client()
            response, seconds = timed(lambda: c.get(url + suffix))
            assert response.status_code == 200, response.get_data()[:300]
            cold[name].append(seconds)
    for name, seconds in cold.items():
        results[name] = statistics.median(seconds)
        results[name + "_samples"] = seconds
    c = client()
    c.get(url)
    response, results["heatmap_warm"] = timed(lambda: c.get(url), repeat=5)
    body = response.get_data()
    results["heatmap_bytes"] = len(body)
    results["heatmap_gzip_bytes"] = len(gzip.compress(body, 6))
    results["heatmap_columns"] = json.loads(body)["column_count"]
    alerts = []
    for _ in range(repeat):
        c = client()
        response, seconds = timed(lambda: c.get("/data/plugin/gradflow/alerts"))
        assert response.status_code == 200
        alerts.append(seconds)
    results["alerts_cold"] = statistics.median(alerts)
    return dict(results, load=load_s, raw_read=raw_s, samples=samples, cold_repeats=repeat)


def _probe(logdir, run, columns):
    """In this (fresh) process: load the logdir, then the dashboard's two requests
    on one plugin, as a first visit after `tensorboard` started makes them: the
    heatmap without marks, then its alert marks. Prints their seconds as JSON."""
    client = plugin_client(logdir, load_provider(logdir))
    out = {}
    for name, route in (("heatmap", "heatmap"), ("alert_cells", "alert_cells")):
        query = f"/data/plugin/gradflow/{route}?run={run}&columns={columns}" + ("&alerts=false" if route == "heatmap" else "")
        response, out[name] = timed(lambda: client.get(query))
        assert response.status_code == 200, response.get_data()[:300]
    print(json.dumps(out))


def bench_fresh_processes(logdir, run, columns, repeat):
    """`_probe` in `repeat` fresh processes: cold as on a `tensorboard` just
    started. (Cold requests inside one long process depend on what it
    allocated and freed before: on this project's VM a fresh page costs
    ~10-100 us, and whether a request's temporaries land in fresh pages
    varies with the allocator's state.)"""
    import subprocess

    samples = {"heatmap": [], "alert_cells": []}
    for _ in range(repeat):
        answer = subprocess.run([sys.executable, __file__, "--probe", logdir, "--probe-run", run,
                                 "--columns", str(columns)], check=True, capture_output=True, text=True)
        for name, seconds in json.loads(answer.stdout.strip().splitlines()[-1]).items():
            samples[name].append(seconds)
    marks = [a + b for a, b in zip(samples["heatmap"], samples["alert_cells"])]
    return {
        "fresh_process_heatmap_no_alerts": statistics.median(samples["heatmap"]),
        "fresh_process_alert_cells": statistics.median(samples["alert_cells"]),
        "fresh_process_heatmap_then_marks": statistics.median(marks),
        "fresh_process_samples": samples,
    }


# A tensorboard process without TensorFlow, as on a server that installed only
# tensorboard and tb_gradflow (tests/test_tf_free.py blocks it the same way).
_TF_FREE_TENSORBOARD = """
import importlib.abc, sys
class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(name + " is not installed here")
sys.meta_path.insert(0, NoTensorFlow())
from tensorboard import main
sys.argv = ["tensorboard"] + sys.argv[1:]
main.run_main()
"""


def tensorboard_process(logdir, *flags):
    """A real, TensorFlow-free `tensorboard` on 127.0.0.1 that loads the logdir once; returns a
    context manager yielding its URL."""
    from plugin_fixtures import tensorboard_server

    return tensorboard_server(logdir, "--reload_interval=0", *flags, startup_timeout=600,
                              launcher=("-c", _TF_FREE_TENSORBOARD))


def bench_alerts(logdir, n_runs, n_steps, loaders=LOADERS):
    """Cold and warm /alerts over `n_runs` runs against a real tensorboard, per loader.

    Cold is the first /alerts after the dashboard's /runs (which is how the
    dashboard starts, and how this waits for the loader to have every row).
    """
    from plugin_fixtures import has_data_server, http_get

    results = {}
    for flag in loaders:
        name = flag.split("=", 1)[1]
        if flag == "--load_fast=true" and not has_data_server():
            print(f"skipping {flag}: tensorboard-data-server is not installed")
            continue
        start = time.perf_counter()
        with tensorboard_process(logdir, flag) as url:
            while True:  # the data server loads in the background
                status, _, body = http_get(url + "/data/plugin/gradflow/runs", timeout=600)
                runs = json.loads(body)["runs"] if status == 200 else []
                if len(runs) == n_runs and all(r["max_step"] == n_steps for r in runs):
                    break
                time.sleep(1)
            loaded = time.perf_counter() - start
            timings = []
            for _ in range(3):  # cold, then warm (verdicts cached until a run gets new data)
                (status, _, body), seconds = timed(lambda: http_get(url + "/data/plugin/gradflow/alerts", timeout=600))
                assert status == 200, body[:300]
                timings.append(seconds)
            answer = json.loads(body)
            assert not answer["unreadable"], answer["unreadable"]
        results[name] = {"load_s": loaded, "alerts_cold_s": timings[0], "alerts_warm_s": min(timings[1:]),
                         "alert_rows": len(answer["alerts"]), "alerts_bytes": len(body)}
    return results


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
                # Which requests the first visit waited on: route, start and end (ms).
                requests = frame.evaluate(
                    "performance.getEntriesByType('resource').map(e => [e.name.split('/').pop(), "
                    "Math.round(e.startTime), Math.round(e.responseEnd)])")
            else:
                paints.append(ms)
                alert_paints.append(alerts_ms)
            page.close()
        browser.close()
    return {
        "first_visit_requests": requests,
        "first_paint_cold_ms": cold,
        "alert_marks_cold_ms": cold_alerts,
        "first_paint_warm_ms": statistics.median(paints) if paints else None,
        "alert_marks_warm_ms": statistics.median(alert_paints) if alert_paints else None,
    }


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def _logdir(keep, name):
    """(path, whether it must be written): under --keep, reused when complete."""
    if keep is None:
        return tempfile.mkdtemp(prefix=f"tb_gradflow_bench_{name}_"), True
    path = os.path.join(keep, name)
    done = os.path.exists(os.path.join(path, ".complete"))
    if not done:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
    return path, not done


def _mark_complete(path):
    open(os.path.join(path, ".complete"), "w").close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=300)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--columns", type=int, default=1024)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--repeat", type=int, default=5, help="cold requests per case (fresh plugin each); the median")
    parser.add_argument("--alerts-runs", type=int, default=50,
                        help="also time /alerts over a logdir of this many runs under each loader (0: skip)")
    parser.add_argument("--alerts-layers", type=int, default=50)
    parser.add_argument("--alerts-steps", type=int, default=500,
                        help="logged steps per run of the /alerts logdir (the Python loader holds every row in memory)")
    parser.add_argument("--only-alerts", action="store_true", help="skip the 300-layer heatmap run")
    parser.add_argument("--keep", help="write the logdirs under this folder, and reuse them from an earlier run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "heatmap.json"))
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # bench_fresh_processes' child: this logdir
    parser.add_argument("--probe-run", default="bench", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        return _probe(args.probe, args.probe_run, args.columns)

    results = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()} {_cpu_model()}, "
                   f"{platform.python_implementation()} {platform.python_version()}, no GPU, TensorFlow-free reader",
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    rows = []
    if not args.only_alerts:
        logdir, write = _logdir(args.keep, f"heatmap_{args.layers}x{args.steps}")
        write_s = None
        if write:
            _, write_s = timed(lambda: write_run(os.path.join(logdir, "bench"), args.layers, args.steps))
            _mark_complete(logdir)
        server = bench_server(logdir, "bench", args.columns, args.repeat)
        server.update(bench_fresh_processes(logdir, "bench", args.columns, args.repeat))
        browser = {}
        if not args.no_browser and os.path.exists(CHROMIUM):
            browser = bench_first_paint(logdir, repeat=3)
        results.update({
            "layers": args.layers,
            "steps": args.steps,
            "write_s": write_s,
            **server,
            **browser,
            "ratio_heatmap_cold_to_raw_read": server["heatmap_cold"] / server["raw_read"],
            "ratio_heatmap_cold_no_alerts_to_raw_read": server["heatmap_cold_no_alerts"] / server["raw_read"],
            "ratio_heatmap_warm_to_raw_read": server["heatmap_warm"] / server["raw_read"],
        })
        rows += [
            ("write synthetic run (EventWriter)", f"{write_s:.2f} s" if write_s else "reused", ""),
            ("load via data provider (Python, all samples)", f"{server['load']:.2f} s", ""),
            ("raw read_tensors, 1 statistic  [baseline]", f"{server['raw_read']:.3f} s", "1.00x"),
            (f"/heatmap cold, {server['heatmap_columns']} cols, no alerts", f"{server['heatmap_cold_no_alerts']:.3f} s",
             f"{results['ratio_heatmap_cold_no_alerts_to_raw_read']:.2f}x"),
            (f"/heatmap cold, {server['heatmap_columns']} cols, with alert marks", f"{server['heatmap_cold']:.3f} s",
             f"{results['ratio_heatmap_cold_to_raw_read']:.2f}x"),
            ("fresh process: /heatmap, no alerts (median)", f"{server['fresh_process_heatmap_no_alerts']:.3f} s", ""),
            ("fresh process: then /alert_cells", f"{server['fresh_process_alert_cells']:.3f} s", ""),
            ("fresh process: heatmap + its marks", f"{server['fresh_process_heatmap_then_marks']:.3f} s", ""),
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
    if args.alerts_runs:
        logdir, write = _logdir(args.keep, f"alerts_{args.alerts_runs}x{args.alerts_layers}x{args.alerts_steps}")
        if write:
            for i in range(args.alerts_runs):
                write_alert_run(os.path.join(logdir, f"run_{i:03d}"), args.alerts_layers, args.alerts_steps, seed=i)
            _mark_complete(logdir)
        by_loader = bench_alerts(logdir, args.alerts_runs, args.alerts_steps)
        results["alerts_logdir"] = {"runs": args.alerts_runs, "layers": args.alerts_layers, "steps": args.alerts_steps,
                                    **by_loader}
        for loader, r in by_loader.items():
            rows += [
                (f"/alerts cold, {args.alerts_runs} runs, --load_fast={loader}", f"{r['alerts_cold_s']:.3f} s", ""),
                (f"/alerts warm, {args.alerts_runs} runs, --load_fast={loader}", f"{r['alerts_warm_s']:.3f} s", ""),
            ]

    print(f"\nHeatmap benchmark; {results['machine']}; {results['date']}")
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
