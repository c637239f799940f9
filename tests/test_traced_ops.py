"""The training graph grows by a few ops per layer, not a few dozen.

Start-up (tracing, then grappler over the whole step graph) and a step's
dispatch cost grow with the ops the hook adds to the graph Keras traces, and
a keras.applications model has hundreds of layers. These tests count, in
the graph of the traced one-step function (its nodes and every function in
its library: isolated calls, branches), the ops the hook adds per layer: the
difference between a deeper and a shallower model, hooked minus plain, so
what the hook adds once (its isolated functions, the schedule's scalars)
cancels out. Counting the traced graph, before grappler, is the same on any
CPU.

    python -m pytest -n 0 tests/test_traced_ops.py   # ~45 s: 3- and 6-layer MLPs, with and without GradFlow
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from tb_gradflow import recorder  # noqa: E402
from tb_gradflow.keras.callback import GradFlow  # noqa: E402

SHALLOW, DEEP = 3, 6
STEPS = 24  # past the dense start (15): the light function is traced too

# What a hooked Dense layer (kernel, bias, activation) may add to the step
# graph of an execution that records everything. Measured at 19 (2026-12-05):
# a call each for the copy of its gradients, the weight snapshot and the
# activation statistics, the handles they take, and six variable reads (two
# gradient copies, two weights, two snapshots) in the bodies of the two
# XLA-compiled calls that compute every layer's statistics at once
# (recorder.GradientRecorder.track_gradients), which TensorFlow's executor
# does not run. The per-layer statistics of models above
# recorder.FUSED_MAX_ELEMENTS measured 12 (a call each for the moments and
# histograms, the weight snapshot, the weight and update sums and the
# activation statistics, and their handles).
RECORDING_OPS_PER_LAYER = 20
PER_LAYER_RECORDING_OPS_PER_LAYER = 14


class Probe(keras.Sequential):
    """A Sequential whose custom `train_step` notes each graph it is traced in."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.graphs = []

    def train_step(self, data):
        logs = super().train_step(data)
        if not tf.executing_eagerly():
            self.graphs.append(tf.compat.v1.get_default_graph())
        return logs


def graph_ops(graph):
    """Nodes of `graph` and of every function in its library."""
    graph_def = graph.as_graph_def()
    return len(graph_def.node) + sum(len(function.node_def) for function in graph_def.library.function)


def traced_ops(depth, callback_kwargs):
    """Op counts of each one-step graph traced while `fit` trains `STEPS`
    steps of a `depth`-layer MLP (with GradFlow(**callback_kwargs) unless
    None), in tracing order."""
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(8, activation="relu") for _ in range(depth)]
    model = Probe([keras.Input((4,))] + layers + [keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS, 4)).astype("float32")
    y = rng.normal(size=(STEPS, 1)).astype("float32")
    callbacks = [] if callback_kwargs is None else [GradFlow(tempfile.mkdtemp(), **callback_kwargs)]
    model.fit(x, y, batch_size=1, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
    return [graph_ops(graph) for graph in model.graphs]


@pytest.fixture(scope="module")
def plain_ops_per_layer():
    (shallow,), (deep,) = traced_ops(SHALLOW, None), traced_ops(DEEP, None)
    return (deep - shallow) / (DEEP - SHALLOW)


def added_per_layer(callback_kwargs, plain_ops_per_layer):
    """Per traced function: the ops the hook adds per layer."""
    shallow, deep = traced_ops(SHALLOW, callback_kwargs), traced_ops(DEEP, callback_kwargs)
    assert len(shallow) == len(deep)
    return [(d - s) / (DEEP - SHALLOW) - plain_ops_per_layer for s, d in zip(shallow, deep)]


def test_recording_everything_adds_a_few_ops_per_layer(plain_ops_per_layer):
    added = added_per_layer(dict(update_freq=1, histogram_freq=1, activation_freq=1), plain_ops_per_layer)
    assert len(added) == 1  # one function serves every step
    assert 0 < added[0] <= RECORDING_OPS_PER_LAYER, added


def test_per_layer_statistics_add_a_few_ops_per_layer(plain_ops_per_layer, monkeypatch):
    monkeypatch.setattr(recorder, "FUSED_MAX_ELEMENTS", 0)
    added = added_per_layer(dict(update_freq=1, histogram_freq=1, activation_freq=1), plain_ops_per_layer)
    assert len(added) == 1
    assert 0 < added[0] <= PER_LAYER_RECORDING_OPS_PER_LAYER, added


def test_steps_between_rows_trace_the_plain_graph(plain_ops_per_layer):
    # At the defaults the first 15 steps sample (rows and activations); the
    # steps after them run the light function: the user's step and the
    # loss's few scalar ops, nothing per layer.
    added = added_per_layer({}, plain_ops_per_layer)
    assert len(added) == 2, added
    sampling, light = added
    assert 0 < sampling <= RECORDING_OPS_PER_LAYER
    assert light == 0
