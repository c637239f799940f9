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
# graph of an execution that records everything, in the ops TensorFlow's
# executor runs (the step and the functions it calls). Measured at 19
# (2026-12-05): a call each for the copy of its gradients, the weight
# snapshot and the copy of its activation, the handles they take, and, in
# the call that measures the activation copies, its copy's shape, its
# emptying and its row of the uncompiled branch. The per-layer statistics of
# models above recorder.FUSED_MAX_ELEMENTS measured 12 (a call each for the
# moments and histograms, the weight snapshot, the weight and update sums and
# the activation statistics, and their handles).
RECORDING_OPS_PER_LAYER = 20
PER_LAYER_RECORDING_OPS_PER_LAYER = 14
# ... and in the bodies of the XLA-compiled calls that compute every layer's
# statistics at once (recorder.GradientRecorder.track_gradients, and
# ActivationRecorder._record_copied), which XLA compiles as one computation
# each and the executor does not run op by op. Measured at 21 (2026-12-05):
# six variable reads for the gradients' (two gradient copies, two weights, two
# snapshots) and the activation copy's read, flattening and row count.
COMPILED_OPS_PER_LAYER = 24
# What the light function (every step between rows at the defaults) adds to
# the plain step graph, whatever the depth: the step count and the loss
# watch's scalar ops. On a dispatch-bound step each costs about what an op
# of the model costs; at 32 nodes the light function called directly reads
# 0.997x-1.006x plain fit on seed003_mlp in one process (2026-12-05), and
# the bound keeps it there. Measured at 32 nodes (2026-12-05: 19 kernels,
# the rest the variables' handles, constants and identities), 44 while the
# loss's max and min were folded apart, 72 while the light step still
# evaluated the row schedule, which cannot fall there.
LIGHT_OPS = 36


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
    """(nodes of `graph` and of the functions of its library the executor
    runs, nodes of those XLA compiles)."""
    graph_def = graph.as_graph_def()
    run, compiled = len(graph_def.node), 0
    for function in graph_def.library.function:
        if function.attr["_XlaMustCompile"].b:
            compiled += len(function.node_def)
        else:
            run += len(function.node_def)
    return run, compiled


def traced_ops(depth, callback_kwargs):
    """Op counts (`graph_ops`) of each one-step graph traced while `fit`
    trains `STEPS` steps of a `depth`-layer MLP (with
    GradFlow(**callback_kwargs) unless None), in tracing order."""
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
    ((shallow, none),), ((deep, _),) = traced_ops(SHALLOW, None), traced_ops(DEEP, None)
    assert none == 0
    return (deep - shallow) / (DEEP - SHALLOW)


def added_per_layer(callback_kwargs, plain_ops_per_layer):
    """Per traced function: (the ops the hook adds per layer that the
    executor runs, those it adds per layer in XLA-compiled calls)."""
    shallow, deep = traced_ops(SHALLOW, callback_kwargs), traced_ops(DEEP, callback_kwargs)
    assert len(shallow) == len(deep)
    return [((d[0] - s[0]) / (DEEP - SHALLOW) - plain_ops_per_layer, (d[1] - s[1]) / (DEEP - SHALLOW))
            for s, d in zip(shallow, deep)]


def test_recording_everything_adds_a_few_ops_per_layer(plain_ops_per_layer):
    added = added_per_layer(dict(update_freq=1, histogram_freq=1, activation_freq=1), plain_ops_per_layer)
    assert len(added) == 1  # one function serves every step
    run, compiled = added[0]
    assert 0 < run <= RECORDING_OPS_PER_LAYER, added
    assert 0 < compiled <= COMPILED_OPS_PER_LAYER, added


def test_per_layer_statistics_add_a_few_ops_per_layer(plain_ops_per_layer, monkeypatch):
    monkeypatch.setattr(recorder, "FUSED_MAX_ELEMENTS", 0)
    added = added_per_layer(dict(update_freq=1, histogram_freq=1, activation_freq=1), plain_ops_per_layer)
    assert len(added) == 1
    run, compiled = added[0]
    assert 0 < run <= PER_LAYER_RECORDING_OPS_PER_LAYER, added
    assert compiled == 0, added  # nothing copied, nothing compiled


def test_steps_between_rows_trace_the_plain_graph(plain_ops_per_layer):
    # At the defaults the first 15 steps sample (rows and activations); the
    # steps after them run the light function: the user's step and the
    # loss's few scalar ops, nothing per layer.
    added = added_per_layer({}, plain_ops_per_layer)
    assert len(added) == 2, added
    (sampling, sampling_compiled), (light, light_compiled) = added
    assert 0 < sampling <= RECORDING_OPS_PER_LAYER
    # At the defaults nothing is compiled (recorder.statistics_compiled).
    assert sampling_compiled == light_compiled == light == 0


def test_steps_between_rows_add_a_fixed_few_ops():
    ((plain, _),) = traced_ops(SHALLOW, None)
    (_, (light, light_compiled)) = traced_ops(SHALLOW, {})
    assert light_compiled == 0
    assert 0 < light - plain <= LIGHT_OPS, light - plain
