"""The plugin inside a real `tensorboard` process, with each data loader.

`--load_fast=false` is the Python multiplexer, `--load_fast=true` the Rust
data server (tensorboard-data-server). Both must light the tab, keep every
logged step of a 10,000-step run (TensorBoard's defaults would keep 10 or
100 samples of a third-party plugin's series) and answer errors as JSON.
"""

import base64
import json

import numpy as np
import pytest

from tb_gradflow import schedule
from plugin_fixtures import combined_logdir, has_data_server, http_get, tensorboard_server, wait_for_run, wait_for_runs

LOADERS = ["--load_fast=false", "--load_fast=true"]


@pytest.fixture(scope="module", params=LOADERS)
def server(request, seed001_logdir):
    if request.param == "--load_fast=true" and not has_data_server():
        pytest.skip("tensorboard-data-server is not installed")
    logdir = combined_logdir(str(seed001_logdir["logdir"]))
    with tensorboard_server(logdir, request.param, "--reload_interval=0") as url:
        # Every run the tests read: either loader lists runs as it loads
        # them, in no fixed order (a loaded machine showed it).
        wait_for_run(url, "synthetic/long")
        wait_for_runs(url, ["synthetic/small", "seed001/sigmoid/train", "seed001/tanh/train", "seed001/relu/train"])
        yield url


def get_json(url, expect=200):
    status, headers, body = http_get(url)
    assert status != 500, body
    assert status == expect, (url, status, body[:500])
    assert headers["Content-Type"].startswith("application/json")
    return json.loads(body)


def test_tab_is_enabled(server):
    listing = get_json(server + "/data/plugins_listing")["gradflow"]
    assert listing["enabled"] is True and listing["tab_name"] == "Gradient Flow"
    status, headers, body = http_get(server + "/data/plugin/gradflow/index.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")


def test_every_one_of_10000_logged_steps_is_kept(server):
    body = get_json(server + "/data/plugin/gradflow/heatmap?run=synthetic/long&columns=8192")
    assert body["sample_count"] == 10_000
    assert body["steps"] == list(range(1, 10_001))
    assert body["column_count"] == 8192


def test_runs_and_alerts_over_real_hook_data(server):
    runs = {r["run"]: r for r in get_json(server + "/data/plugin/gradflow/runs")["runs"]}
    assert {"seed001/sigmoid/train", "seed001/relu/train", "seed001/tanh/train", "synthetic/small"} <= set(runs)
    alerts = get_json(server + "/data/plugin/gradflow/alerts?run=seed001/sigmoid/train")["alerts"]
    assert ("sigmoid/sigmoid1", "vanishing") in {(a["layer"], a["kind"]) for a in alerts}


def test_heatmap_profile_and_histogram(server):
    body = get_json(server + "/data/plugin/gradflow/heatmap?run=seed001/sigmoid/train&statistic=grad_norm")
    rows = sum(schedule.is_due(s, 10) for s in range(1, 961))  # update_freq=10, dense at the start
    assert body["sample_count"] == rows
    values = np.frombuffer(base64.b64decode(body["values"]), "<f4")
    assert values.size == rows * 5 and np.all(np.isfinite(values))
    profile = get_json(server + "/data/plugin/gradflow/profile?run=seed001/sigmoid/train&step=500")
    assert profile["step"] == 500 and len(profile["values"]) == 5
    histogram = get_json(
        server + "/data/plugin/gradflow/histogram?run=seed001/sigmoid/train&layer=sigmoid/sigmoid1&step=500"
    )
    assert histogram["available"] is True and histogram["step"] == 500
    small = get_json(server + "/data/plugin/gradflow/heatmap?run=synthetic/small&columns=100")
    assert np.isnan(np.frombuffer(base64.b64decode(small["values"]), "<f4").reshape(100, 5)[39, 2])


def test_errors_are_json(server):
    assert "error" in get_json(server + "/data/plugin/gradflow/heatmap?run=nope", expect=404)
    assert "error" in get_json(server + "/data/plugin/gradflow/heatmap?run=synthetic/small&columns=x", expect=400)
    assert "error" in get_json(server + "/data/plugin/gradflow/profile?run=synthetic/small", expect=400)
