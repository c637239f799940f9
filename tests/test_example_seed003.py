"""Seed 003's activation comparison (examples/seed003_activations.py), briefly: what the saturation view shows."""

import numpy as np
import pytest

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def seed003(tmp_path_factory):
    import seed003_activations

    logdir = tmp_path_factory.mktemp("seed003")
    accuracy = seed003_activations.train(str(logdir), epochs=2)
    return logdir, accuracy, seed003_activations.summary(str(logdir))


def test_one_run_per_activation_with_activation_statistics(seed003):
    from tb_gradflow.reader import Reader

    logdir, _, summary = seed003
    reader = Reader.for_logdir(str(logdir))
    assert reader.runs() == sorted(f"{a}/train" for a in summary)
    for run in reader.runs():
        table = reader.layer_table(run)
        assert [layer.activation_capture for layer in table.layers] == ["in-step"] * 4 + [""]
        assert reader.has_activation_statistics(run)


def test_gaussian_saturates_the_others_do_not(seed003):
    _, _, summary = seed003
    print({a: (round(r["saturated_fraction"], 3), round(r["dead_fraction"], 3), r["alerts"]) for a, r in summary.items()})
    assert any(alert.startswith("saturation:") for alert in summary["gaussian"]["alerts"])
    for activation in ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "swish", "scaled_swish"):
        assert not any(a.startswith(("saturation:", "dead_units:")) for a in summary[activation]["alerts"]), activation
    # Two-sided activations in their saturated range: exp(-x^2) far more than tanh.
    assert summary["gaussian"]["saturated_fraction"] > 5 * summary["tanh"]["saturated_fraction"]


def test_sigmoid_vanishes_without_saturating(seed003):
    """Seed 003's finding: sigmoid's trouble is its small peak derivative (0.25), not saturation."""
    _, _, summary = seed003
    assert any(a.startswith("vanishing:") for a in summary["sigmoid"]["alerts"])
    assert summary["sigmoid"]["saturated_fraction"] < 0.05
    # Not zero-centred (seed 002): sigmoid's mean activation near 0.5, tanh's near 0.
    assert summary["sigmoid"]["activation_mean"] > 0.3 > abs(summary["tanh"]["activation_mean"]) + 0.25


def test_relu_has_dead_units_leaky_relu_and_elu_cannot(seed003):
    _, _, summary = seed003
    assert summary["relu"]["dead_fraction"] > 0
    assert summary["leaky_relu"]["dead_fraction"] == 0 and summary["elu"]["dead_fraction"] == 0
    # Half of a ReLU layer's unit activations sit in its zero region (one-sided).
    assert 0.3 < summary["relu"]["saturated_fraction"] < 0.7
    assert np.isfinite(summary["relu"]["activation_mean"])
