"""Every reader under broken logs: cut short, corrupt, newer, appearing and vanishing.

The faults are made for real: the project's own writer's files truncated at
every 997th byte, a layer table protobuf cannot parse, data written with the
next format version, a job killed before its first row. Readers are the real
ones: `tb-gradflow check` (in a subprocess, as CI runs it), `Reader`, and
the plugin inside a real `tensorboard` with each loader, its routes fuzzed
with hypothesis. What must hold: a run that cannot be read is named with the
reason, every other run reads exactly as if the broken one were not there,
and nothing answers 5xx or prints a traceback.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin_fixtures import (
    CUT_REASON_WORDS,
    event_file,
    faulty_logdir,
    good_only_logdir,
    has_data_server,
    http_get,
    tensorboard_server,
    truncate_copy,
    wait_for_run,
    wait_for_runs,
    write_synthetic_run,
    write_table_only_run,
)
from tb_gradflow import cli, metadata
from tb_gradflow.reader import Reader, UnreadableRunError

GOOD = ("good/a", "good/b")
UNREADABLE = {
    "killed/train": CUT_REASON_WORDS,
    "corrupt/train": "layer table cannot be decoded",
    "newer/train": f"version {metadata.PROTO_VERSION + 1}",
}
LOADERS = ["--load_fast=false", "--load_fast=true"]
ROUTES = ("/runs", "/layers", "/heatmap", "/alert_cells", "/profile", "/histogram", "/alerts", "/saturation")


# ------------------------------------------------------------------ the CLI and the Reader
def _check(logdir):
    """`tb-gradflow check LOGDIR --json` as CI runs it: (exit status, report, stderr)."""
    result = subprocess.run(
        [sys.executable, "-c", "from tb_gradflow.cli import console_main; console_main()", "check", str(logdir),
         "--json"],
        capture_output=True, text=True, timeout=120,
    )
    return result.returncode, json.loads(result.stdout), result.stderr


def test_check_names_each_unreadable_run_and_checks_the_others():
    status, report, stderr = _check(faulty_logdir())
    assert "Traceback" not in stderr
    unreadable = {u["run"]: u["reason"] for u in report["unreadable"]}
    for run, words in UNREADABLE.items():
        assert words in unreadable[run], (run, unreadable[run])
    newer = unreadable["newer/train"]
    assert f"version {metadata.PROTO_VERSION + 1}" in newer and f"up to {metadata.PROTO_VERSION}" in newer
    assert "grad_rms" in unreadable["partial/train"]  # no alerts can be evaluated without the rules' inputs
    checked = {r["run"]: r for r in report["runs"]}
    assert set(checked) == {"good/a", "good/b", "cut/train"}
    # good/a holds a NaN at step 30: the good runs' alerts still fail the check.
    assert status == cli.EXIT_ALERTS
    _, alone, _ = _check(good_only_logdir())
    assert [checked[run] for run in GOOD] == [r for r in alone["runs"] if r["run"] in GOOD]


def test_check_exit_status_3_when_no_alert_fired_but_a_run_was_unreadable(tmp_path, capsys):
    write_synthetic_run(tmp_path / "fine", n_layers=1, n_steps=5)  # one layer: nothing to vanish against
    write_table_only_run(tmp_path / "killed")
    assert cli.main(["check", str(tmp_path / "fine")]) == cli.EXIT_OK
    capsys.readouterr()
    assert cli.main(["check", str(tmp_path)]) == cli.EXIT_UNREADABLE
    out = capsys.readouterr().out
    assert "fine: 1 layers, 5 logged steps" in out
    assert "killed: cannot be read" in out and "1 run(s) unreadable -> failing" in out
    shutil.rmtree(tmp_path / "fine")
    assert cli.main(["check", str(tmp_path), "--json"]) == cli.EXIT_UNREADABLE
    report = json.loads(capsys.readouterr().out)
    assert report["runs"] == [] and [u["run"] for u in report["unreadable"]] == ["killed"]


@pytest.fixture(scope="module")
def cut_logdir(tmp_path_factory):
    """A run of the project's own writer copied 120 times, each cut at a multiple of 997 bytes, beside a good run."""
    logdir = tmp_path_factory.mktemp("cut")
    source = tmp_path_factory.mktemp("cut_source")
    write_synthetic_run(source, n_layers=5, n_steps=150, seed=4, histogram_every=10, saturation=True)
    size = os.path.getsize(event_file(source))
    offsets = list(range(997, size, 997))[:120]
    assert len(offsets) == 120, size  # the file is long enough for the 120 cuts
    for i, offset in enumerate(offsets):
        truncate_copy(str(source), str(logdir / "cut" / f"{i:03d}"), offset)
    write_synthetic_run(logdir / "good", n_layers=3, n_steps=40, seed=2, nonfinite_at=(9, 1))
    return logdir, offsets


def test_a_file_cut_at_any_of_120_offsets_is_read_up_to_the_cut(cut_logdir):
    logdir, offsets = cut_logdir
    report, _ = cli.check_impl(logdir)
    checked = {r["run"]: r for r in report["runs"]}
    unreadable = {u["run"]: u["reason"] for u in report["unreadable"]}
    alone, _ = cli.check_impl(logdir / "good")
    assert checked["good"] == dict(alone["runs"][0], run="good")
    previous = 0
    for i in range(len(offsets)):
        run = f"cut/{i:03d}"
        if run in checked:
            rows = checked[run]["logged_steps"]
            # Steps 1..rows: every complete record before the cut, nothing invented.
            assert checked[run]["first_step"] == 1 and checked[run]["last_step"] == rows
            assert rows >= previous  # a longer file never reads fewer rows
            previous = rows
        else:
            # Cut before the first row (or inside the layer table: no tb_gradflow run at all).
            assert run not in unreadable or CUT_REASON_WORDS in unreadable[run], unreadable[run]
            assert previous == 0
    assert previous > 50  # the 120th cut keeps more than a third of the 150 rows


def test_reader_refuses_a_newer_version_per_run_and_warns(caplog):
    reader = Reader.for_logdir(faulty_logdir())
    with pytest.raises(UnreadableRunError) as refused:
        reader.layer_series("newer/train", "grad_norm")
    assert refused.value.run == "newer/train" and "upgrade tb_gradflow" in str(refused.value)
    readable, unreadable = reader.survey()
    assert {"good/a", "good/b"} <= set(readable)
    assert {u.run for u in unreadable} == set(UNREADABLE)
    assert reader.layer_series("good/a", "grad_norm").values.shape == (60, 4)


# ------------------------------------------------------------------ the plugin in a real tensorboard
@pytest.fixture(scope="module", params=LOADERS)
def servers(request):
    """(faulty server URL, good-only server URL) under one loader."""
    if request.param == "--load_fast=true" and not has_data_server():
        pytest.skip("tensorboard-data-server is not installed")
    with tensorboard_server(faulty_logdir(), request.param, "--reload_interval=0") as faulty, \
            tensorboard_server(good_only_logdir(), request.param, "--reload_interval=0") as good:
        # Both loaders list runs as they load them: wait until every run,
        # broken ones included, is known.
        wait_for_runs(faulty, ["good/a", "good/b", "cut/train", "partial/train", *UNREADABLE])
        wait_for_runs(good, ["good/a", "good/b"])
        yield faulty, good


def _get(base, route, **params):
    query = urllib.parse.urlencode(params, doseq=True)
    status, headers, body = http_get(f"{base}/data/plugin/gradflow{route}" + (f"?{query}" if query else ""))
    assert headers.get("Content-Type", "").startswith("application/json"), (route, params, status, body[:300])
    text = body.decode("utf-8")
    assert "Traceback" not in text
    return status, json.loads(text)


def _good_requests():
    for run, layer in (("good/a", "model/dense_1"), ("good/b", "model/dense_2")):
        yield "/layers", {"run": run}
        yield "/heatmap", {"run": run, "columns": 7}
        yield "/heatmap", {"run": run, "statistic": "grad_rms", "alerts": "false"}
        yield "/alert_cells", {"run": run, "columns": 5}
        yield "/profile", {"run": run, "step": 30}
        yield "/histogram", {"run": run, "layer": layer, "step": 20}
        yield "/alerts", {"run": run}
        yield "/saturation", {"run": run}


def test_one_broken_run_never_changes_another_runs_responses(servers):
    faulty, good = servers
    for route, params in _good_requests():
        assert _get(faulty, route, **params) == _get(good, route, **params), (route, params)
    status, runs = _get(faulty, "/runs")
    assert status == 200
    assert {r["run"] for r in runs["runs"]} == {"good/a", "good/b", "cut/train", "partial/train"}
    reasons = {u["run"]: u["reason"] for u in runs["unreadable"]}
    for run, words in UNREADABLE.items():
        assert words in reasons[run], (run, reasons)
    good_runs = {r["run"]: r for r in _get(good, "/runs")[1]["runs"]}
    assert [r for r in runs["runs"] if r["run"] in GOOD] == [good_runs[run] for run in GOOD]
    status, alerts = _get(faulty, "/alerts")
    assert status == 200
    assert [a for a in alerts["alerts"] if a["run"] in GOOD] == _get(good, "/alerts")[1]["alerts"]
    assert {u["run"] for u in alerts["unreadable"]} == set(UNREADABLE) | {"partial/train"}


@pytest.mark.parametrize("run", sorted(UNREADABLE))
def test_a_broken_runs_own_routes_say_why(servers, run):
    faulty, _ = servers
    for route in ("/layers", "/heatmap", "/alert_cells", "/saturation"):
        status, body = _get(faulty, route, run=run)
        assert status == 422 and run in body["error"] and UNREADABLE[run] in body["error"], (route, status, body)
    for route, params in (("/profile", {"step": 1}), ("/histogram", {"layer": "model/dense_0", "step": 1})):
        status, body = _get(faulty, route, run=run, **params)
        assert status == 422 and run in body["error"] and UNREADABLE[run] in body["error"], (route, status, body)
    status, body = _get(faulty, "/alerts", run=run)
    assert status == 200 and body["alerts"] == [] and [u["run"] for u in body["unreadable"]] == [run]


_TEXT = st.text(max_size=40)
_RUNS = st.sampled_from(["good/a", "good/b", "cut/train", "partial/train", *UNREADABLE, "nope", ""]) | _TEXT
_INTEGERS = st.integers(-(2**70), 2**70).map(str) | _TEXT | st.sampled_from(["1e3", "0x10", " 5", "١٢", "5_0"])
_PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "run": _RUNS,
        "statistic": st.sampled_from(metadata.STATISTICS + metadata.ACTIVATION_STATISTICS) | _TEXT,
        "columns": _INTEGERS,
        "step": _INTEGERS,
        "layer": st.sampled_from(["model/dense_0", "model/dense_2", "killed/dense_0"]) | _TEXT,
        "alerts": st.sampled_from(["true", "false", "0", "1"]) | _TEXT,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), params=_PARAMS)
def test_fuzzed_parameters_never_answer_5xx(servers, route, params):
    faulty, _ = servers
    status, body = _get(faulty, route, **params)
    assert status in (200, 400, 404, 422), (route, params, status, body)
    if status != 200:
        assert set(body) == {"error"} and body["error"]


def test_a_run_appearing_growing_and_vanishing_under_a_live_tensorboard(tmp_path):
    """Python loader with a 1 s reload: a run shows up as unreadable (table, no
    rows), becomes readable, then its directory is deleted; the other run's
    answers never change and no request answers 5xx."""
    shutil.copytree(os.path.join(good_only_logdir(), "good", "a"), tmp_path / "steady")
    live = tmp_path / "live"
    with tensorboard_server(tmp_path, "--load_fast=false", "--reload_interval=1") as url:
        wait_for_run(url, "steady")
        steady = _get(url, "/heatmap", run="steady")

        def wait(predicate, what):
            deadline = time.time() + 60
            while time.time() < deadline:
                status, runs = _get(url, "/runs")
                assert status == 200
                for route in ("/heatmap", "/alerts", "/layers"):
                    assert _get(url, route, run="live")[0] in (200, 404, 422)
                if predicate(runs):
                    return runs
                time.sleep(0.3)
            raise AssertionError(f"timed out waiting for {what}: {runs}")

        write_table_only_run(live)
        wait(lambda r: "live" in {u["run"] for u in r["unreadable"]}, "the table-only run to be unreadable")
        write_synthetic_run(live, n_layers=2, n_steps=12, seed=9)
        wait(lambda r: "live" in {x["run"] for x in r["runs"]}, "the run to become readable")
        assert _get(url, "/heatmap", run="live")[1]["sample_count"] == 12
        shutil.rmtree(live)
        time.sleep(2.5)  # two reloads over the deleted directory
        for route in ("/runs", "/alerts"):
            assert _get(url, route)[0] == 200
        assert _get(url, "/heatmap", run="live")[0] in (200, 404, 422)
        assert _get(url, "/heatmap", run="steady") == steady
