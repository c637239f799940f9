"""Seed 001's experiment end to end: train, read back, diagnose (the issue's acceptance case)."""

import json
import subprocess
import sys

import numpy as np

from tb_gradflow import cli
from tb_gradflow import schedule
from tb_gradflow.reader import Reader


def test_sigmoid_run_vanishes_in_early_layers_relu_does_not(seed001_logdir):
    reader = Reader.for_logdir(seed001_logdir["logdir"])
    assert reader.runs() == ["relu/train", "sigmoid/train", "tanh/train"]
    sigmoid = reader.alerts("sigmoid/train")
    vanishing_layers = {a.layer for a in sigmoid if a.kind == "vanishing"}
    assert "sigmoid/sigmoid1" in vanishing_layers, sigmoid
    # Only early layers: the output side of the net is where gradients are large.
    assert vanishing_layers <= {"sigmoid/sigmoid1", "sigmoid/sigmoid2", "sigmoid/sigmoid3"}, sigmoid
    assert reader.alerts("tanh/train") == []
    # The ReLU twin's narrow Dense(5) layers, initialised N(0, 1), lose units
    # (the dead-unit rule may see them); its gradient does not vanish.
    assert {a.kind for a in reader.alerts("relu/train")} <= {"dead_units"}
    # Cause and effect on the alert: the sigmoid layers' explanation, if any, names activations.
    for alert in sigmoid:
        assert alert.explanation == "" or "activations of" in alert.explanation


def test_seed001_layer_table_is_in_depth_order(seed001_logdir):
    table = Reader.for_logdir(seed001_logdir["logdir"]).layer_table("sigmoid/train")
    assert [layer.name for layer in table.layers] == [f"sigmoid/sigmoid{i}" for i in range(1, 6)]
    assert [layer.activation for layer in table.layers] == ["sigmoid"] * 5
    assert [layer.parameter_count for layer in table.layers] == [15, 30, 30, 30, 6]
    assert all(layer.has_gradient for layer in table.layers)
    # The sigmoid output feeds the loss: its saturation is by design, not alerted.
    assert [layer.is_output for layer in table.layers] == [False] * 4 + [True]


def test_sigmoid_gradients_are_smaller_than_relu_in_the_first_layer(seed001_logdir):
    """The tutorial's observation: sigmoid gradient magnitudes sit about an order below."""
    reader = Reader.for_logdir(seed001_logdir["logdir"])
    sigmoid = np.median(reader.layer_series("sigmoid/train", "grad_rms").values[:, 0])
    relu = np.median(reader.layer_series("relu/train", "grad_rms").values[:, 0])
    assert sigmoid < relu / 5


def test_every_logged_step_survives_reading(seed001_logdir):
    """30 epochs x 32 batches at update_freq=10, dense at the start: every row
    of the schedule, not a sample of them."""
    series = Reader.for_logdir(seed001_logdir["logdir"]).layer_series("relu/train", "grad_norm")
    assert series.steps.tolist() == [s for s in range(1, 961) if schedule.is_due(s, 10)]
    assert series.steps[:15].tolist() == list(range(1, 16)) and series.steps[-1] == 960


def test_check_cli_exits_1_and_names_the_sigmoid_layers(seed001_logdir):
    result = subprocess.run(
        [sys.executable, "-m", "tb_gradflow.cli", "check", str(seed001_logdir["logdir"])],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == cli.EXIT_ALERTS, result.stderr
    assert "sigmoid/sigmoid1" in result.stdout and "vanishing" in result.stdout
    assert "relu/train: 5 layers" in result.stdout


def test_check_cli_json_is_stable(seed001_logdir):
    result = subprocess.run(
        [sys.executable, "-m", "tb_gradflow.cli", "check", str(seed001_logdir["logdir"]), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == cli.EXIT_ALERTS, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "tb_gradflow.check/1"
    assert set(report) == {"format", "logdir", "fail_on", "runs", "unreadable", "alert_count"}
    assert report["unreadable"] == []
    runs = {run["run"]: run for run in report["runs"]}
    assert set(runs) == {"relu/train", "sigmoid/train", "tanh/train"}
    alert = runs["sigmoid/train"]["alerts"][0]
    assert set(alert) == {"layer", "layer_index", "kind", "first_step", "last_step", "worst_step",
                          "worst_value", "steps_fired", "explanation"}
    assert runs["sigmoid/train"]["thresholds"]["vanishing_patience"] == 3
    assert report["alert_count"] == sum(len(run["alerts"]) for run in runs.values())


def test_check_cli_fail_on_filters_kinds(seed001_logdir):
    status = cli.main(["check", str(seed001_logdir["logdir"]), "--fail-on", "nonfinite,exploding"])
    assert status == cli.EXIT_OK
