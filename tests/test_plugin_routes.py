"""The plugin's HTTP routes over real event files, through TensorBoard's own app.

The app is TensorBoard's WSGI app built the way `tensorboard --load_fast=false`
builds it (flags parsed with our loader's fix_flags, LocalDataIngester,
TensorBoardWSGIApp), served in-process with werkzeug's test client. The Rust
data server (`--load_fast=true`) is covered in test_plugin_loaders.py.

Every response is checked for JSON and for never being a 500.
"""

import base64
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from werkzeug import test as werkzeug_test
from werkzeug import wrappers

from plugin_fixtures import SATURATION_STATISTIC, XSS_LAYER, demo_logdir, synthetic_logdir
from tb_gradflow import metadata
from tb_gradflow import schedule
from tb_gradflow.plugin import gradflow_plugin
from tb_gradflow.plugin.loader import GradFlowLoader
from tb_gradflow.reader import Reader

PREFIX = "/data/plugin/gradflow"


def make_app(logdir, *extra_flags):
    """TensorBoard's WSGI app over `logdir` with the Python loader, as the CLI builds it."""
    from tensorboard import program
    from tensorboard.backend import application
    from tensorboard.backend.event_processing import data_ingester
    from tensorboard.plugins.core import core_plugin

    tb = program.TensorBoard(plugins=[core_plugin.CorePluginLoader, GradFlowLoader])
    tb.configure(
        argv=["", "--logdir", str(logdir), "--load_fast=false", "--reload_interval=0", "--reload_task=blocking",
              *extra_flags]
    )
    assert tb.flags.samples_per_plugin == {"gradflow": 0}  # our fix_flags ran
    ingester = data_ingester.LocalDataIngester(tb.flags)
    ingester.start()
    app = application.TensorBoardWSGIApp(
        tb.flags, tb.plugin_loaders, ingester.data_provider, tb.assets_zip_provider, ingester.deprecated_multiplexer
    )
    return werkzeug_test.Client(app, wrappers.Response)


class Api:
    def __init__(self, client):
        self.client = client

    def get(self, route, expect=200, **params):
        response = self.client.get(PREFIX + route, query_string=params)
        assert response.status_code != 500, response.get_data(as_text=True)
        assert response.status_code == expect, (route, params, response.status_code, response.get_data(as_text=True))
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        return json.loads(response.get_data())


@pytest.fixture(scope="module")
def demo(seed001_logdir):
    return Api(make_app(demo_logdir(str(seed001_logdir["logdir"]))))


@pytest.fixture(scope="module")
def synthetic():
    return Api(make_app(synthetic_logdir()))


def decode(b64, dtype):
    return np.frombuffer(base64.b64decode(b64), dtype=dtype)


# ------------------------------------------------------------------ TensorBoard integration
def test_tab_is_listed_enabled_with_an_iframe_module(demo):
    listing = json.loads(demo.client.get("/data/plugins_listing").get_data())["gradflow"]
    assert listing["enabled"] is True
    assert listing["tab_name"] == "Gradient Flow"
    assert listing["loading_mechanism"] == {"type": "IFRAME", "module_path": "/data/plugin/gradflow/index.js"}
    entry = demo.client.get("/data/plugin_entry.html?name=gradflow")
    assert entry.status_code == 200 and b'import("./index.js")' in entry.get_data()


def test_tab_stays_out_of_the_way_without_data(tmp_path):
    (tmp_path / "empty").mkdir()
    client = make_app(tmp_path)
    listing = json.loads(client.get("/data/plugins_listing").get_data())["gradflow"]
    assert listing["enabled"] is False
    assert Api(client).get("/runs")["runs"] == []


def test_works_under_a_path_prefix():
    client = make_app(synthetic_logdir(), "--path_prefix=/team/tb")
    listing = json.loads(client.get("/team/tb/data/plugins_listing").get_data())["gradflow"]
    assert listing["enabled"] is True
    entry = client.get("/team/tb/data/plugin_entry.html?name=gradflow").get_data(as_text=True)
    assert '<base href="plugin/gradflow/" />' in entry  # relative URLs resolve under the prefix
    response = client.get("/team/tb/data/plugin/gradflow/heatmap?run=small")
    assert response.status_code == 200 and json.loads(response.get_data())["sample_count"] == 100
    assert client.get("/team/tb/data/plugin/gradflow/static/app.js").status_code == 200


def test_is_active_is_cheap_and_relies_on_the_data_provider_listing():
    from tensorboard.plugins import base_plugin

    plugin = gradflow_plugin.GradFlowPlugin(base_plugin.TBContext())
    assert plugin.is_active() is False
    assert plugin.data_plugin_names() == (metadata.PLUGIN_NAME,)
    assert plugin.frontend_metadata().es_module_path == "/index.js"


def test_static_files_are_served_as_javascript_and_css(demo):
    index = demo.client.get(PREFIX + "/index.js")
    assert index.status_code == 200
    assert index.headers["Content-Type"].startswith("text/javascript")
    assert b"export { render }" in index.get_data()
    for name, kind in (("app.js", "text/javascript"), ("heatmap.js", "text/javascript"), ("style.css", "text/css")):
        response = demo.client.get(f"{PREFIX}/static/{name}")
        assert response.status_code == 200 and response.headers["Content-Type"].startswith(kind), name
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    ["/static/../loader.py", "/static/%2e%2e/loader.py", "/static/..%2Floader.py", "/static/nope.js",
     "/static/build.py", "/static/..\\loader.py"],
)
def test_static_route_serves_nothing_else(demo, path):
    response = demo.client.get(PREFIX + path)
    assert response.status_code == 404
    assert "error" in json.loads(response.get_data())
    # A bare directory never reaches the plugin: TensorBoard's router answers 404.
    assert demo.client.get(PREFIX + "/static/").status_code == 404


# ------------------------------------------------------------------ runs, layers
def test_runs_lists_each_run_with_what_it_holds(demo):
    body = demo.get("/runs")
    runs = {r["run"]: r for r in body["runs"]}
    assert set(runs) == {"seed001/relu/train", "seed001/sigmoid/train", "seed001/tanh/train", "xss", "names"}
    assert [u["run"] for u in body["unreadable"]] == ["killed"] and "no statistic rows" in body["unreadable"][0]["reason"]
    sigmoid = runs["seed001/sigmoid/train"]
    assert sigmoid["layer_count"] == 5
    assert set(sigmoid["statistics"]) >= {"grad_norm", "grad_rms", "grad_max_abs", "update_ratio"}
    assert sigmoid["has_histograms"] is True
    assert isinstance(sigmoid["has_saturation"], bool)  # True once the hook writes activation statistics
    assert sigmoid["max_step"] == 960 and sigmoid["update_freq"] == 10
    assert [s["name"] for s in body["statistics"]][:4] == ["grad_norm", "grad_rms", "grad_max_abs", "update_ratio"]
    assert [k["kind"] for k in body["alert_kinds"]][:3] == ["vanishing", "exploding", "nonfinite"]


def test_a_statistic_without_a_label_is_listed_under_its_own_name(synthetic, monkeypatch):
    from tb_gradflow.plugin import responses

    monkeypatch.delitem(responses.STATISTIC_LABELS, metadata.CLIP_FACTOR)
    choices = synthetic.get("/runs")["statistics"]
    assert [c["name"] for c in choices][:2] == ["grad_norm", "grad_rms"]
    assert choices[-1] == {"name": metadata.CLIP_FACTOR, "label": metadata.CLIP_FACTOR}


def test_layers_in_depth_order_with_untouched_names(demo):
    body = demo.get("/layers", run="xss")
    assert [layer["name"] for layer in body["layers"]] == ["xss/hidden", XSS_LAYER, "xss/out"]
    assert [layer["depth"] for layer in body["layers"]] == [0, 1, 2]
    assert "vanishing_relative_signal" in demo.get("/layers", run="seed001/sigmoid/train")["thresholds"]


# ------------------------------------------------------------------ heatmap
def test_heatmap_cells_are_the_exact_logged_values(demo, seed001_logdir):
    body = demo.get("/heatmap", run="seed001/sigmoid/train", statistic="grad_rms", columns=4096)
    series = Reader.for_logdir(demo_logdir(str(seed001_logdir["logdir"]))).layer_series(
        "seed001/sigmoid/train", "grad_rms"
    )
    assert body["sample_count"] == series.steps.size == sum(schedule.is_due(s, 10) for s in range(1, 961))
    assert body["downsampled"] is False and "cell_index" not in body
    assert body["column_first_step"] == series.steps.tolist() == body["column_last_step"]
    values = decode(body["values"], "<f4").reshape(body["column_count"], 5)
    np.testing.assert_array_equal(values, series.values.astype(np.float32))
    lo, hi = body["log10_range"]
    assert lo == pytest.approx(np.log10(series.values.min())) and hi == pytest.approx(np.log10(series.values.max()))


def test_heatmap_marks_the_vanishing_cells_of_the_sigmoid_runs_first_layer(demo):
    body = demo.get("/heatmap", run="seed001/sigmoid/train")
    flags = decode(body["alerts"], "u1").reshape(body["column_count"], 5)
    vanishing = 1 << body["alert_kinds"].index("vanishing")
    assert (flags[:, 0] & vanishing).any()
    assert not (flags[:, 3:] & vanishing).any()
    relu = demo.get("/heatmap", run="seed001/relu/train")
    assert not (decode(relu["alerts"], "u1") & vanishing).any()
    assert "alerts" not in demo.get("/heatmap", run="seed001/relu/train", alerts="false")


def test_alert_cells_match_the_heatmaps_flags(synthetic):
    for columns in (7, 100, 1000):
        heatmap = synthetic.get("/heatmap", run="small", columns=columns)
        cells = synthetic.get("/alert_cells", run="small", columns=columns)
        assert cells["column_count"] == heatmap["column_count"]
        assert cells["alerts"] == heatmap["alerts"] and cells["alert_kinds"] == heatmap["alert_kinds"]
    synthetic.get("/alert_cells", expect=404, run="nope")
    synthetic.get("/alert_cells", expect=400, run="small", columns="-3")


def test_long_run_is_downsampled_on_the_server_with_exact_cells(synthetic):
    body = synthetic.get("/heatmap", run="long", columns=500)
    assert body["sample_count"] == 10_000  # every logged step was kept by TensorBoard
    assert body["column_count"] == 500 and body["downsampled"] is True
    assert body["steps"] == list(range(1, 10_001))
    index = decode(body["cell_index"], "<u4").reshape(500, 3)
    values = decode(body["values"], "<f4").reshape(500, 3)
    first = np.array(body["column_first_step"])
    last = np.array(body["column_last_step"])
    cell_steps = np.array(body["steps"])[index]
    assert np.all((cell_steps >= first[:, None]) & (cell_steps <= last[:, None]))
    from plugin_fixtures import synthetic_values

    written = synthetic_values(10_000, 3, seed=0)
    np.testing.assert_array_equal(values, np.take_along_axis(written, index, axis=0))


def test_nan_and_spike_survive_and_are_flagged(synthetic):
    body = synthetic.get("/heatmap", run="small", columns=10)
    values = decode(body["values"], "<f4").reshape(10, 5)
    flags = decode(body["alerts"], "u1").reshape(10, 5)
    kinds = body["alert_kinds"]
    assert np.isnan(values[3, 2])  # step 40 is in the 4th of 10 columns
    assert flags[3, 2] & (1 << kinds.index("nonfinite"))
    assert values[6, 4] == values[:, 4].max() and values[6, 4] > 1e3  # the spike at step 70
    assert flags[6, 4] & (1 << kinds.index("exploding"))


# ------------------------------------------------------------------ profile, histogram
def test_profile_is_exact_at_the_nearest_logged_step(demo, seed001_logdir):
    body = demo.get("/profile", run="seed001/sigmoid/train", statistic="grad_norm", step=154)
    assert body["step"] == 150 and body["requested_step"] == 154
    series = Reader.for_logdir(demo_logdir(str(seed001_logdir["logdir"]))).layer_series(
        "seed001/sigmoid/train", "grad_norm"
    )
    row = series.values[series.steps.tolist().index(150)]
    assert body["values"] == pytest.approx(row.tolist(), rel=0, abs=0)
    assert body["layers"][0] == "sigmoid/sigmoid1" and len(body["alerts"]) == 5
    assert demo.get("/profile", run="seed001/sigmoid/train", step=10**9)["step"] == 960


def test_profile_sends_non_finite_values_as_strings(synthetic):
    body = synthetic.get("/profile", run="small", step=40)
    assert body["values"][2] == "NaN" and body["alerts"][2] == ["nonfinite"]


def test_histogram_of_a_layer_at_the_nearest_histogram_step(demo):
    body = demo.get("/histogram", run="seed001/sigmoid/train", layer="sigmoid/sigmoid1", step=240)
    assert body["available"] is True
    assert body["step"] == 200 and body["histogram_steps"][:3] == [100, 200, 300]
    assert body["tag"] == metadata.histogram_tag(0, "sigmoid/sigmoid1", metadata.HISTOGRAM_KIND_GRADIENT)
    gradient = np.array(body["buckets"]["gradient"], float)
    assert gradient.shape == (metadata.HISTOGRAM_BUCKETS, 3)
    assert gradient[:, 2].sum() == 15  # the layer's 15 parameters
    magnitude = np.array(body["buckets"]["gradient_log10_magnitude"], float)
    assert magnitude.shape == (metadata.LOG10_BUCKETS, 3)


def test_histogram_of_a_layer_without_histograms_is_not_an_error(synthetic):
    body = synthetic.get("/histogram", run="long", layer="model/dense_0", step=5)
    assert body["available"] is False and "histogram" in body["reason"]


def test_histogram_of_the_injection_named_layer(demo):
    body = demo.get("/histogram", run="xss", layer=XSS_LAYER, step=20)
    assert body["available"] is True and XSS_LAYER in body["tag"]


# ------------------------------------------------------------------ alerts, saturation
def test_alerts_name_the_sigmoid_runs_first_hidden_layer(demo):
    body = demo.get("/alerts", run="seed001/sigmoid/train")
    layers = {(a["layer"], a["kind"]) for a in body["alerts"]}
    assert ("sigmoid/sigmoid1", "vanishing") in layers
    first = next(a for a in body["alerts"] if a["layer"] == "sigmoid/sigmoid1")
    assert set(first) >= {"run", "layer", "kind", "first_step", "worst_value", "worst_step", "steps_fired"}
    assert first["run"] == "seed001/sigmoid/train"
    assert {a["kind"] for a in demo.get("/alerts", run="seed001/relu/train")["alerts"]} <= {"dead_units"}
    everything = demo.get("/alerts")
    assert {a["run"] for a in everything["alerts"]} >= {"seed001/sigmoid/train"}
    assert set(everything["kinds"]) >= {"vanishing", "exploding", "nonfinite"}


def test_alerts_table_and_reader_agree(demo, seed001_logdir):
    reader = Reader.for_logdir(demo_logdir(str(seed001_logdir["logdir"])))
    expected = [a.to_json() for a in reader.alerts("seed001/sigmoid/train")]
    got = demo.get("/alerts", run="seed001/sigmoid/train")["alerts"]
    assert [{k: v for k, v in a.items() if k != "run"} for a in got] == expected


def test_saturation_view_is_absent_without_its_data(synthetic):
    assert synthetic.get("/saturation", run="long") == {"run": "long", "available": False}
    assert {r["run"]: r["has_saturation"] for r in synthetic.get("/runs")["runs"]} == {
        "long": False, "small": True, "xss": False}


def test_saturation_view_when_the_data_exists(synthetic):
    body = synthetic.get("/saturation", run="small")
    assert body["available"] is True and body["statistics"] == [SATURATION_STATISTIC]
    values = decode(body["values"], "<f4").reshape(body["column_count"], 5)
    np.testing.assert_allclose(values[0], np.linspace(0.01, 0.6, 5), rtol=1e-6)
    synthetic.get("/saturation", expect=404, run="small", statistic="nope")


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "route,params,code",
    [
        ("/layers", {}, 400),
        ("/layers", {"run": "nope"}, 404),
        ("/heatmap", {}, 400),
        ("/heatmap", {"run": "nope"}, 404),
        ("/heatmap", {"run": "small", "statistic": "bogus"}, 400),
        ("/heatmap", {"run": "small", "statistic": "weight_norm"}, 404),  # valid name, not written
        ("/heatmap", {"run": "small", "columns": "ten"}, 400),
        ("/heatmap", {"run": "small", "columns": "0"}, 400),
        ("/heatmap", {"run": "small", "columns": "999999"}, 400),
        ("/heatmap", {"run": "small", "columns": "1e3"}, 400),
        ("/heatmap", {"run": "small", "alerts": "maybe"}, 400),
        ("/profile", {"run": "small"}, 400),
        ("/profile", {"run": "small", "step": "-1"}, 400),
        ("/profile", {"run": "small", "step": "x"}, 400),
        ("/profile", {"run": "nope", "step": "1"}, 404),
        ("/histogram", {"run": "small", "step": "1"}, 400),
        ("/histogram", {"run": "small", "layer": "nope", "step": "1"}, 404),
        ("/histogram", {"run": "nope", "layer": "x", "step": "1"}, 404),
        ("/alerts", {"run": "nope"}, 404),
        ("/saturation", {}, 400),
        ("/saturation", {"run": "nope"}, 404),
    ],
)
def test_bad_parameters_are_400_and_unknown_things_404_as_json(synthetic, route, params, code):
    body = synthetic.get(route, expect=code, **params)
    assert set(body) == {"error"} and body["error"]
    assert "Traceback" not in body["error"]


def test_an_unexpected_failure_is_a_json_error_not_a_500(synthetic, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire at /secret/path")

    monkeypatch.setattr(gradflow_plugin.reader_lib.Reader, "layer_series", broken)
    # A fresh cache: the series may already be cached from another test.
    body = synthetic.get("/heatmap", expect=422, run="small", statistic="grad_max_abs")
    assert body["error"].startswith("cannot serve") and "RuntimeError" in body["error"]
    assert "/secret/path" not in body["error"] and "Traceback" not in body["error"]


# ------------------------------------------------------------------ flags, TF-free
def test_fix_flags_keeps_every_sample_unless_the_user_chose():
    import argparse

    loader = GradFlowLoader()
    flags = argparse.Namespace(samples_per_plugin={"images": 3})
    loader.fix_flags(flags)
    assert flags.samples_per_plugin == {"images": 3, "gradflow": 0}
    flags = argparse.Namespace(samples_per_plugin={"gradflow": 50})
    loader.fix_flags(flags)
    assert flags.samples_per_plugin == {"gradflow": 50}
    flags = argparse.Namespace(samples_per_plugin="scalars=10")  # TensorBoard().configure(samples_per_plugin=...)
    loader.fix_flags(flags)
    assert flags.samples_per_plugin == {"scalars": 10, "gradflow": 0}


def test_plugin_serves_without_tensorflow():
    logdir = synthetic_logdir()
    script = textwrap.dedent(
        f"""
        import importlib.abc, json, sys
        class NoTensorFlow(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                    raise ImportError(name + " is not installed here")
        sys.meta_path.insert(0, NoTensorFlow())
        sys.path.insert(0, {str(__import__("os").path.dirname(__file__))!r})
        from test_plugin_routes import make_app, PREFIX
        client = make_app({logdir!r})
        r = client.get(PREFIX + "/heatmap?run=small")
        assert r.status_code == 200, r.get_data()
        assert json.loads(r.get_data())["sample_count"] == 100
        r = client.get(PREFIX + "/alerts")
        assert r.status_code == 200, r.get_data()
        leaked = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
        assert not leaked, leaked
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_fast_rules_and_cells_equal_the_plain_definitions_on_trained_runs(demo, seed001_logdir):
    """On seed 001's trained runs read back through TensorBoard: the reader's
    verdicts (evaluate_series_fired: faded prefixes, candidate rows) are
    evaluate_series' verdicts, the alerts' values too; the vanishing_signal
    statistic is its value at every row; the heatmap shows the cells the
    log-space definition picks (tests/test_plugin_downsample.py)."""
    from plugin_fixtures import reference_cells
    from tb_gradflow import rules
    from tb_gradflow.plugin import downsample

    reader = Reader.for_logdir(str(seed001_logdir["logdir"]))
    runs = reader.runs()
    assert len(runs) == 3
    for run in runs:
        steps, verdicts, table = reader.verdicts(run)
        gradient_steps, aligned, _, gradient_rules = reader._rule_inputs(run, None, reader.run_tags(run))
        whole = rules.evaluate_series(aligned, **gradient_rules)
        rows = np.searchsorted(steps, gradient_steps)
        for kind in rules.GRADIENT_KINDS:
            fired, value = whole[kind]
            np.testing.assert_array_equal(verdicts[kind][0][rows], fired, err_msg=f"{run} {kind}")
            np.testing.assert_array_equal(verdicts[kind][1][rows][fired], value[fired], err_msg=f"{run} {kind}")
        relative = reader.rule_series(run, "vanishing_signal")
        keep = ~np.all(np.isnan(whole[rules.VANISHING][1]), axis=1)
        np.testing.assert_array_equal(relative.values, whole[rules.VANISHING][1][keep])
        for statistic in reader.statistics(run):
            values = reader.layer_series(run, statistic).values
            for columns in (7, 64):
                picked = downsample.downsample_columns(values, columns)
                np.testing.assert_array_equal(picked.index, reference_cells(values, columns), err_msg=statistic)
    assert any(a.kind == rules.VANISHING for a in reader.alerts("sigmoid/train"))
