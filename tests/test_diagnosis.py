"""The alerts on labelled networks: the short form of benchmarks/bench_diagnosis.py.

Small, fast cases from each family, trained ~100 steps at GradFlow's
defaults. Each label is first confirmed by the benchmark's independent
reference (probe loss, a plain GradientTape, the activation derivative on
probe inputs); then the alerts read back through `Reader` must say exactly
that: nothing on a healthy network, the right kind on a sick one, early in
the run (the issue's target: within 5% of the steps or the first 50,
whichever is later; from the onset for a fault that starts mid-run). The
keras.applications cases run in the full benchmark.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import bench_diagnosis  # noqa: E402
import diagnosis_cases  # noqa: E402

HEALTHY = ["bn_cnn", "layerscale_residual", "squeeze_excite_cnn", "attention_block"]
SICK = ["sigmoid_depth", "init_scale", "detached_layer", "exploding_nan", "learning_rate_spike", "dead_relu",
        "saturating_inputs"]
# Steps at which a fault starts that is not there from the first step.
ONSET = {"learning_rate_spike": 31}


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("diagnosis"))
    records = {name: bench_diagnosis.run_case(diagnosis_cases.CASES[name], logdir) for name in HEALTHY + SICK}
    bench_diagnosis.score(list(records.values()), logdir)
    return records


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_networks_raise_no_alert(scored, name):
    record = scored[name]
    assert record["label"] == "healthy", record["evidence"]  # the loss falls
    assert record["alerts"] == [], record["alerts"]


@pytest.mark.parametrize("name", SICK)
def test_sick_networks_get_the_right_kind_early(scored, name):
    record = scored[name]
    assert record["label"] == record["expected"], record["evidence"]  # the reference agrees
    assert record["expected"] in record["alert_kinds"], record["alerts"]
    first = record["first_correct_alert_step"] - ONSET.get(name, 0)
    assert first <= max(0.05 * record["steps"], 50), record


def test_a_vanishing_alert_explains_saturated_or_missing_signal(scored):
    assert any("no gradient" in e for e in scored["detached_layer"]["explanations"]), scored["detached_layer"]
