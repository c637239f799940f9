"""The reader's direct decode of stored tensors gives what TensorBoard's public read_tensors gives.

Over a run with rows the fast path must hand to make_ndarray (float64, int,
another width, a [1, n] matrix, steps out of order), under the Python
loader; tests/test_plugin_loaders.py covers the Rust data server.
"""

import numpy as np
import pytest

from tb_gradflow import metadata
from tb_gradflow import reader as reader_lib
from tb_gradflow.writer import EventWriter
from plugin_fixtures import write_synthetic_run


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    write_synthetic_run(str(root / "a"), n_layers=4, n_steps=50, nonfinite_at=(20, 1), seed=3)
    write_synthetic_run(str(root / "b"), n_layers=3, n_steps=30, seed=4)
    writer = EventWriter(str(root / "a"), filename_suffix=".gradflow.odd")
    tag = metadata.layer_statistic_tag(metadata.GRAD_NORM)
    md = metadata.create_statistic_metadata(metadata.GRAD_NORM, per="layer")
    odd = {100: np.arange(4, dtype=np.float64) + 0.1, 101: np.arange(4, dtype=np.int32),
           102: np.ones(5, np.float32), 103: np.ones((1, 4), np.float32), 0: np.full(4, 7.0, np.float32)}
    for step, array in odd.items():
        writer._emit(step, [writer._summary_value(tag, array, md)])
    writer.close()
    return str(root)


def _series(reader, monkeypatch, public):
    if public:
        monkeypatch.setattr(reader_lib, "_rows_reader", lambda provider: reader_lib._public_rows)
    out = {}
    for run in ("a", "b"):
        for statistic in reader.statistics(run):
            s = reader.layer_series(run, statistic)
            out[run, statistic] = s
    return out


def test_direct_decode_equals_read_tensors(logdir, monkeypatch):
    reader = reader_lib.Reader.for_logdir(logdir)
    assert reader_lib._rows_reader(reader._provider) is reader_lib._multiplexer_rows
    fast = _series(reader, monkeypatch, public=False)
    public = _series(reader, monkeypatch, public=True)
    assert fast.keys() == public.keys() and len(fast) > 10
    for key in fast:
        for field in ("steps", "wall_times", "values"):
            np.testing.assert_array_equal(getattr(fast[key], field), getattr(public[key], field), err_msg=str(key))
    norm = fast["a", metadata.GRAD_NORM]
    # float64 and int rows kept, the 5-wide and [1, 4] rows dropped, step 0 sorted first.
    assert norm.steps[0] == 0 and {100, 101} <= set(norm.steps.tolist()) and not {102, 103} & set(norm.steps.tolist())
    np.testing.assert_array_equal(norm.values[norm.steps == 101][0], [0, 1, 2, 3])
    assert np.isnan(norm.values[norm.steps == 20][0, 1])


def test_batched_alerts_equal_run_by_run(logdir):
    batched = reader_lib.Reader.for_logdir(logdir)
    batched.prefetch_rule_inputs(["a", "b"])
    assert batched._prefetched and set(batched._prefetched_tables) == {"a", "b"}
    one_by_one = reader_lib.Reader.for_logdir(logdir)
    for run in ("a", "b"):
        assert batched.alerts(run) == one_by_one.alerts(run)
    assert not batched._prefetched  # every prefetched series was used
    assert any(a.kind == "nonfinite" for a in one_by_one.alerts("a"))


def test_both_loaders_answer_the_same_alerts_and_heatmaps():
    """The direct decode under each of TensorBoard's loaders (the Rust data
    server's gRPC answer, the multiplexer's protos) gives the same bodies."""
    import json

    from plugin_fixtures import faulty_logdir, has_data_server, http_get, tensorboard_server, wait_for_runs

    if not has_data_server():
        pytest.skip("tensorboard-data-server is not installed")
    bodies = []
    for flag in ("--load_fast=false", "--load_fast=true"):
        with tensorboard_server(faulty_logdir(), flag, "--reload_interval=0") as url:
            wait_for_runs(url, ["good/a", "good/b", "killed/train", "corrupt/train", "newer/train"])
            got = {}
            for route in ("alerts", "heatmap?run=good/a&columns=7", "heatmap?run=good/b", "profile?run=good/a&step=30"):
                status, _, body = http_get(f"{url}/data/plugin/gradflow/{route}")
                assert status == 200, (flag, route, body[:300])
                got[route] = json.loads(body)
            bodies.append(got)
        # The direct decode ran (no fallback to read_tensors).
        assert "reading stored tensors directly failed" not in tensorboard_server.last_log, tensorboard_server.last_log
    assert bodies[0] == bodies[1]
    assert any(a["kind"] == "nonfinite" and a["run"] == "good/a" for a in bodies[0]["alerts"]["alerts"])
    assert {u["run"] for u in bodies[0]["alerts"]["unreadable"]} >= {"killed/train", "corrupt/train", "newer/train"}


def test_reader_verdicts_equal_evaluate_series_on_runs_read_back(tmp_path):
    """Runs written by the EventWriter and read back through TensorBoard's
    loader (a fade over 40 layers, a spike, a NaN, layers without gradient):
    the reader's fast evaluation fires exactly where evaluate_series fires,
    with the same values, and the vanishing_signal statistic is the rule's
    value at every row."""
    from tb_gradflow import rules

    write_synthetic_run(str(tmp_path / "fade"), n_layers=40, n_steps=300, seed=5, spike_at=(150, 20),
                        nonfinite_at=(90, 3))
    write_synthetic_run(str(tmp_path / "detached"), n_layers=6, n_steps=120, seed=6,
                        has_gradient=[True, False, True, True, True, True])
    reader = reader_lib.Reader.for_logdir(str(tmp_path))
    fired_kinds = set()
    for run in ("fade", "detached"):
        steps, verdicts, _ = reader.verdicts(run)
        gradient_steps, aligned, _, gradient_rules = reader._rule_inputs(run, None, reader.run_tags(run))
        np.testing.assert_array_equal(steps, gradient_steps)
        whole = rules.evaluate_series(aligned, **gradient_rules)
        for kind in rules.KINDS:
            fired, value = whole[kind]
            np.testing.assert_array_equal(verdicts[kind][0], fired, err_msg=f"{run} {kind}")
            np.testing.assert_array_equal(verdicts[kind][1][fired], value[fired], err_msg=f"{run} {kind}")
            fired_kinds |= {kind} if fired.any() else set()
        relative = reader.rule_series(run, "vanishing_signal")
        keep = ~np.all(np.isnan(whole[rules.VANISHING][1]), axis=1)
        np.testing.assert_array_equal(relative.values, whole[rules.VANISHING][1][keep])
        np.testing.assert_array_equal(relative.steps, steps[keep])
    assert fired_kinds >= {rules.VANISHING, rules.EXPLODING, rules.NONFINITE}
