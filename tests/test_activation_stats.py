"""Activation statistics (saturation, dead units) from real fits, checked
against an eager reference computed on the same batch and weights.

Each run trains with update_freq = activation_freq = 1, so every step is
written; a second, unhooked model starts from the same weights and is fitted
one batch at a time, and before each of its steps the reference recomputes
z = h @ W + b layer by layer in numpy and the derivative analytically.
"""

import math
import os
import pickle
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tb_gradflow import metadata  # noqa: E402
from tb_gradflow import recorder as recorder_module  # noqa: E402
from tb_gradflow import rules  # noqa: E402
from tb_gradflow.keras.callback import GradFlow  # noqa: E402
from tb_gradflow.reader import Reader, logdir_data_provider  # noqa: E402

BATCH, STEPS, FEATURES = 16, 5, 12
Dense = keras.layers.Dense
MAX_ERROR = {}

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _normal_cdf(z):
    return 0.5 * (1 + _erf(z / math.sqrt(2)))


DERIVATIVE = {
    "sigmoid": lambda z: (lambda s: s * (1 - s))(1 / (1 + np.exp(-z))),
    "tanh": lambda z: 1 - np.tanh(z) ** 2,
    "relu": lambda z: (z > 0).astype(np.float64),
    # Keras' exact GELU, z * Phi(z): Phi(z) + z * phi(z).
    "gelu": lambda z: _normal_cdf(z) + z * np.exp(-z * z / 2) / math.sqrt(2 * math.pi),
}
FUNCTION = {"sigmoid": lambda z: 1 / (1 + np.exp(-z)), "tanh": np.tanh, "relu": lambda z: np.maximum(z, 0),
            "gelu": lambda z: z * _normal_cdf(z)}
# The largest |f'|: GELU's is at z = sqrt(2).
PEAK = {"sigmoid": 0.25, "tanh": 1.0, "relu": 1.0, "gelu": float(DERIVATIVE["gelu"](np.sqrt(2.0)))}
# Weightless activation layers (their input is z), by class name.
LEAKY_SLOPE = 0.2
LAYER_FUNCTION = {"LeakyReLU": "leaky_relu"}
DERIVATIVE["leaky_relu"] = lambda z: np.where(z > 0, 1.0, LEAKY_SLOPE)
FUNCTION["leaky_relu"] = lambda z: np.where(z > 0, z, LEAKY_SLOPE * z)
PEAK["leaky_relu"] = 1.0


def sigmoid_mlp():
    init = keras.initializers.RandomNormal(0.0, 1.0)
    return keras.Sequential(
        [keras.Input((FEATURES,))]
        + [Dense(128, activation="sigmoid", kernel_initializer=init, name=f"sig{i}") for i in range(3)]
        + [Dense(3, name="out")],
        name="sigmoid_mlp",
    )


def dead_relu():
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            Dense(32, activation="relu", name="alive"),
            Dense(32, activation="relu", bias_initializer=keras.initializers.Constant(-20.0), name="dead"),
            Dense(3, name="out"),
        ],
        name="relu_mlp",
    )


def tanh_glorot():
    return keras.Sequential(
        [keras.Input((FEATURES,))]
        + [Dense(32, activation="tanh", name=f"tanh{i}") for i in range(3)]
        + [Dense(3, name="out")],
        name="tanh_mlp",
    )


def gelu_mlp():
    return keras.Sequential(
        [keras.Input((FEATURES,))]
        + [Dense(32, activation="gelu", name=f"gelu{i}") for i in range(2)]
        + [Dense(3, name="out")],
        name="gelu_mlp",
    )


def leaky_relu_layer():
    return keras.Sequential(
        [keras.Input((FEATURES,)), Dense(32, name="pre"), keras.layers.LeakyReLU(LEAKY_SLOPE, name="leaky"),
         Dense(3, name="out")],
        name="leaky_relu_mlp",
    )


CASES = {
    # name: (model_fn, input scale)
    # Inputs with std 3, as unnormalised features often have.
    "sigmoid_normal_init": (sigmoid_mlp, 3.0),
    "relu_negative_bias": (dead_relu, 1.0),
    "tanh_glorot_small_inputs": (tanh_glorot, 0.1),
    # Read at its input z, f'(z) by autodiff (GELU's derivative does not follow from its output).
    "gelu_glorot": (gelu_mlp, 2.0),
    # A layer captured by wrapping its `call`, read at its input.
    "leaky_relu_layer": (leaky_relu_layer, 2.0),
}
# The dead-unit rule waits for a full window of dead_window (10) activation rows.
CASE_STEPS = {"relu_negative_bias": 12}


def data(scale, n):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, FEATURES)) * scale).astype("float32"), rng.normal(size=(n, 3)).astype("float32")


def reference_statistics(model, x, thresholds):
    """{layer name: {statistic: value}} for one batch at the model's current weights."""
    out, h = {}, x.astype(np.float32)
    for layer in model.layers:
        weights = [np.asarray(w) for w in layer.get_weights()]
        if weights:  # Dense: z = h @ W + b, then its activation.
            kernel, bias = weights
            z = h @ kernel + bias
            name = layer.activation.__name__
        else:  # An activation layer: its input is z.
            z, name = h, LAYER_FUNCTION[type(layer).__name__]
        if name == "linear":
            h = z
            continue
        d = np.abs(DERIVATIVE[name](z.astype(np.float64)))
        a = FUNCTION[name](z.astype(np.float64))
        out[layer.name] = {
            "saturated_fraction": float(np.mean(d < np.float32(thresholds.saturation_derivative * PEAK[name]))),
            "dead_fraction": float(np.mean(np.all(d == 0, axis=0))),
            "active": np.sum(d > 0, axis=0),
            "activation_mean": float(np.mean(a)),
            "activation_std": float(np.std(a)),
            "z_range": (float(z.min()), float(z.max())),
            # float32, as the step computes a: the histogram of an activation
            # read at its output spans these.
            "a_range": (float(FUNCTION[name](z).astype(np.float32).min()), float(FUNCTION[name](z).astype(np.float32).max())),
        }
        h = a.astype(np.float32)
    return out


def run_case(name, log_root, steps=STEPS, activation_freq=1, steps_per_execution=1, callbacks=(), dense_start=8,
             jit_compile=False, samples=None):
    model_fn, scale = CASES[name]
    keras.utils.set_random_seed(11)
    model = model_fn()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", steps_per_execution=steps_per_execution,
                  jit_compile=jit_compile)
    initial = model.get_weights()
    x, y = data(scale, samples or BATCH * steps)
    xv, yv = data(scale * 3, BATCH)
    log_dir = os.path.join(log_root, name)
    callback = GradFlow(log_dir, update_freq=steps_per_execution, activation_freq=activation_freq, histogram_freq=0,
                        dense_start=dense_start)
    # Validation data: the evaluate step is traced while the wrappers are in
    # place, and must record nothing.
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[callback, *(make(callback) for make in callbacks)], validation_data=(xv, yv))
    reference = reference_run(model_fn, initial, x, y, BATCH, steps, jit_compile=jit_compile)
    return {"log_dir": log_dir, "reference": reference, "model": model, "callback": callback}


def reference_run(model_fn, initial, x, y, batch, steps, replica_share=None, jit_compile=False):
    """{step: reference statistics}: an unhooked copy from the same weights,
    fitted one batch at a time, measured before each step. With
    `replica_share`, each layer also gets the z range of the batch's first
    `replica_share` samples (the first replica's share)."""
    reference_model = model_fn()
    reference_model.set_weights(initial)
    # The same compiler as the hooked run (XLA rounds the step differently).
    reference_model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=jit_compile)
    reference = {}
    for k in range(1, steps + 1):
        xb, yb = x[(k - 1) * batch : k * batch], y[(k - 1) * batch : k * batch]
        reference[k] = reference_statistics(reference_model, xb, rules.DEFAULT_THRESHOLDS)
        if replica_share:
            share = reference_statistics(reference_model, xb[:replica_share], rules.DEFAULT_THRESHOLDS)
            for name, first in share.items():
                reference[k][name]["first_replica_z_range"] = first["z_range"]
                reference[k][name]["first_replica_a_range"] = first["a_range"]
        reference_model.fit(xb, yb, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    return reference


class CompiledAfterFirstBatch(keras.callbacks.Callback):
    """Waits, after the first batch, for the compile of the activation
    statistics that GradFlow's first read started on a thread
    (ActivationRecorder.warm_up), so that the steps after it run compiled."""

    def __init__(self, gradflow):
        super().__init__()
        self.gradflow = gradflow

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self.gradflow._activation_recorder.finish_warm_up()


@pytest.fixture(scope="module")
def runs():
    with tempfile.TemporaryDirectory(prefix="tb_gradflow_act_") as root:
        yield {name: run_case(name, root, steps=CASE_STEPS.get(name, STEPS), callbacks=[CompiledAfterFirstBatch])
               for name in CASES} | {"root": root}


def compare(result, sample_steps=tuple(range(1, STEPS + 1))):
    reader = Reader.for_logdir(result["log_dir"])
    table = reader.layer_table("train")
    names = [layer.name.split("/")[-1] for layer in table.layers]
    assert table.activation_freq == sample_steps[0]
    series = {s: reader.activation_series("train", s) for s in metadata.ACTIVATION_STATISTICS}
    assert series["saturated_fraction"].steps.tolist() == list(sample_steps)
    window = {}
    for i, step in enumerate(series["saturated_fraction"].steps):
        expected = result["reference"][int(step)]
        for layer_name, ref in expected.items():
            j = names.index(layer_name)
            for statistic in ("saturated_fraction", "dead_fraction"):
                assert series[statistic].values[i, j] == pytest.approx(ref[statistic], abs=1e-7), (
                    layer_name, step, statistic)
            for statistic in ("activation_mean", "activation_std"):
                actual, want = series[statistic].values[i, j], ref[statistic]
                np.testing.assert_allclose(actual, want, rtol=1e-5, atol=1e-7, err_msg=f"{layer_name} {statistic}")
                if abs(want) > 1e-7:
                    MAX_ERROR[statistic] = max(MAX_ERROR.get(statistic, 0.0), abs(actual - want) / abs(want))
            window.setdefault(layer_name, []).append(ref["active"])
            seen = np.sum(window[layer_name][-rules.DEFAULT_THRESHOLDS.dead_window :], axis=0)
            elements = result.get("batch", BATCH) * len(window[layer_name][-rules.DEFAULT_THRESHOLDS.dead_window :])
            inactive = float(np.mean(seen < rules.DEFAULT_THRESHOLDS.dead_inactivity * elements))
            assert series["inactive_fraction"].values[i, j] == pytest.approx(inactive, abs=1e-7)
        # Layers without activation: NaN.
        for j, layer in enumerate(table.layers):
            if layer.activation_capture != "in-step":
                assert np.isnan(series["saturated_fraction"].values[i, j])
    return reader, table, series


@pytest.fixture(scope="module")
def xla_runs():
    with tempfile.TemporaryDirectory(prefix="tb_gradflow_act_xla_") as root:
        yield {name: run_case(name, root, steps=CASE_STEPS.get(name, STEPS), jit_compile=True)
               for name in ("sigmoid_normal_init", "relu_negative_bias", "gelu_glorot", "leaky_relu_layer")}


READ_AT_INPUT = ("gelu_glorot", "leaky_relu_layer")


@pytest.mark.parametrize("name", ["sigmoid_normal_init", "relu_negative_bias", *READ_AT_INPUT])
def test_statistics_under_xla_match_reference(xla_runs, name):
    """Under XLA a step's activations are measured together at its end,
    stacked by kind and width (three sigmoid layers of 128 units and two
    ReLU layers of 32 read at their output; two GELU layers of 32 and a
    LeakyReLU layer read at their input z, their statistics taken from the
    outputs the step computed and f'(z) from z): the same statistics as the
    reference, and the same pre-activation ranges."""
    compare(xla_runs[name], sample_steps=tuple(range(1, CASE_STEPS.get(name, STEPS) + 1)))
    ranges = activation_ranges(xla_runs[name])
    # Sigmoid and ReLU are read at their output (their derivative follows from it), the others at their input.
    read = "z_range" if name in READ_AT_INPUT else "a_range"
    for step, expected in xla_runs[name]["reference"].items():
        for layer_name, ref in expected.items():
            np.testing.assert_allclose(ranges[layer_name][step], ref[read], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{layer_name} step {step}")


def test_graph_runs_measure_copies_in_one_compiled_call(runs):
    """Without XLA, at activation rows every step, each activation is copied
    as the step makes it and measured at the step's end
    (recorder.ActivationRecorder._record_copied): the first step one copy at
    a time, the steps after it by the call compiled meanwhile for BATCH
    rows (the cases' statistics, compared with the reference in the tests
    above, come from both), without a warning."""
    for name in CASES:
        recorder = runs[name]["callback"]._activation_recorder
        assert recorder.copies is not None, name
        assert recorder._copies_warning is None, name
        assert recorder._compiled_rows.numpy().tolist() == [BATCH] * len(recorder.units), name
        assert int(recorder.compiled_steps.numpy()) == CASE_STEPS.get(name, STEPS) - 1, name
        # Emptied after the step: between steps the copies hold nothing.
        assert all(copy.value().shape[0] == 0 for copy in recorder.copies), name


def test_one_read_of_both_recorders_is_their_two_reads(runs):
    """Rows of both kinds due at one step are read by one call
    (GradientRecorder.read_with; the cases' rows above came through it): the
    snapshots of the two reads, field by field."""
    callback = runs["relu_negative_bias"]["callback"]
    gradients, activations = callback._recorder.read_with(callback._activation_recorder)
    alone = (callback._recorder.read(), callback._activation_recorder.read())
    assert gradients.step == alone[0].step == activations.step == alone[1].step == CASE_STEPS.get(
        "relu_negative_bias", STEPS)
    for joint, single in zip((gradients, activations), alone):
        assert vars(joint).keys() == vars(single).keys()
        for field, value in vars(joint).items():
            if isinstance(value, list):
                assert len(value) == len(vars(single)[field]), field
                for a, b in zip(value, vars(single)[field]):
                    np.testing.assert_array_equal(a, b, err_msg=field)
            else:
                np.testing.assert_array_equal(value, vars(single)[field], err_msg=field)


@pytest.mark.parametrize("name", ["relu_negative_bias", "gelu_glorot"])
def test_per_activation_calls_match_reference(tmp_path, monkeypatch, name):
    """Models above recorder.FUSED_MAX_ELEMENTS keep one isolated call per
    activation, no copy: the same statistics as the reference."""
    monkeypatch.setattr(recorder_module, "FUSED_MAX_ELEMENTS", -1)
    result = run_case(name, str(tmp_path), steps=CASE_STEPS.get(name, STEPS))
    assert result["callback"]._activation_recorder.copies is None
    compare(result, sample_steps=tuple(range(1, CASE_STEPS.get(name, STEPS) + 1)))


def test_a_smaller_last_batch_is_measured_uncompiled(tmp_path):
    """A step of other row counts than the compiled ones (here the last,
    smaller batch of a fit) takes the uncompiled branch, not a second XLA
    compile: its statistics still match the reference, and the compiled row
    counts stay those of the full batches."""
    result = run_case("gelu_glorot", str(tmp_path), steps=3, samples=2 * BATCH + 5,
                      callbacks=[CompiledAfterFirstBatch])
    compare(result, sample_steps=(1, 2, 3))
    recorder = result["callback"]._activation_recorder
    assert recorder._compiled_rows.numpy().tolist() == [BATCH] * len(recorder.units)
    assert int(recorder.compiled_steps.numpy()) == 1  # the second step only


def test_statistics_xla_cannot_compile_fall_back_with_one_warning(tmp_path, monkeypatch):
    """An activation statistic with an op XLA has no kernel for (here a
    `tf.numpy_function` identity slipped into them) cannot be compiled: the
    compile on its thread fails, the step never runs the call, one warning
    names it, and the statistics are computed uncompiled, still equal to the
    reference."""
    import tensorflow as tf

    from tb_gradflow import stats

    measured = stats.multi_activation_statistics

    def with_host_identity(*args, **kwargs):
        moments, *rest = measured(*args, **kwargs)
        moments = tf.reshape(tf.numpy_function(lambda m: m, [moments], tf.float32), tf.shape(moments))
        return (moments, *rest)

    monkeypatch.setattr(stats, "multi_activation_statistics", with_host_identity)
    with pytest.warns(UserWarning, match="compiled activation statistics failed to build") as caught:
        result = run_case("gelu_glorot", str(tmp_path), callbacks=[CompiledAfterFirstBatch])
    assert sum("tb_gradflow" in str(w.message) for w in caught) == 1
    recorder = result["callback"]._activation_recorder
    assert recorder._copies_warning is not None and recorder._compiled_rows.numpy().tolist() == [-1, -1]
    assert int(recorder.compiled_steps.numpy()) == 0
    compare(result)


@pytest.mark.parametrize("name", READ_AT_INPUT)
def test_activation_read_at_its_input_matches_reference(runs, name):
    """GELU (an `activation` function) and a LeakyReLU layer (its `call`
    wrapped), read at their input z with f'(z) by autodiff, in TensorFlow
    graphs: their statistics as the reference's, none dead, and the
    pre-activation histograms spanning z; GELU has saturated elements
    (|f'| small near z = -0.75 and below -3), LeakyReLU (|f'| >= 0.2) none."""
    reader, table, series = compare(runs[name])
    names = [layer.name.split("/")[-1] for layer in table.layers]
    expected = runs[name]["reference"][1]
    assert all(table.layers[names.index(layer)].activation_capture == "in-step" for layer in expected)
    saturated = np.nanmax(series["saturated_fraction"].values)
    assert saturated > 0 if name == "gelu_glorot" else saturated == 0.0
    assert np.nanmax(series["dead_fraction"].values) == 0.0
    ranges = activation_ranges(runs[name])
    for step, expected in runs[name]["reference"].items():
        for layer_name, ref in expected.items():
            np.testing.assert_allclose(ranges[layer_name][step], ref["z_range"], rtol=1e-5, atol=1e-7)


def histograms_plugin_tensors(result):
    """{tag: [TensorDatum]} of the run's histograms, as TensorBoard's histograms plugin reads them."""
    from tensorboard import context
    provider = logdir_data_provider(result["log_dir"], ("histograms",))
    return provider.read_tensors(context.RequestContext(), experiment_id="", plugin_name="histograms",
                                 downsample=10**9)["train"]


def activation_ranges(result):
    """{layer: {step: (low, high)}} of the activation histograms, as
    TensorBoard's histograms plugin serves them."""
    tensors = histograms_plugin_tensors(result)
    out = {}
    for layer in Reader.for_logdir(result["log_dir"]).layer_table("train").layers:
        tag = metadata.histogram_tag(layer.depth, layer.name, metadata.HISTOGRAM_KIND_PREACTIVATION)
        if tag in tensors:
            out[layer.name.split("/")[-1]] = {
                d.step: (np.asarray(d.numpy)[0, 0], np.asarray(d.numpy)[-1, 1]) for d in tensors[tag]
            }
    return out


def test_sigmoid_normal_init_saturates_early_layers(runs):
    reader, table, series = compare(runs["sigmoid_normal_init"])
    saturated = series["saturated_fraction"].values
    print("sigmoid saturated fractions per step x layer:", np.round(saturated, 3).tolist())
    assert np.all(saturated[:, :2] > 0.5), saturated
    assert all(layer.activation_two_sided for layer in table.layers[:3])
    kinds = {(a.layer.split("/")[-1], a.kind) for a in reader.alerts("train")}
    assert ("sig0", rules.SATURATION) in kinds, kinds
    assert not any(kind == rules.DEAD_UNITS for _, kind in kinds)
    # Reported with a step: patience 3 -> first at the third activation row.
    alert = next(a for a in reader.alerts("train") if a.kind == rules.SATURATION and a.layer.endswith("sig0"))
    assert alert.first_step == 3


def test_relu_with_negative_bias_reports_dead_units(runs):
    reader, table, series = compare(runs["relu_negative_bias"], tuple(range(1, 13)))
    names = [layer.name.split("/")[-1] for layer in table.layers]
    dead = names.index("dead")
    np.testing.assert_array_equal(series["dead_fraction"].values[:, dead], 1.0)
    np.testing.assert_array_equal(series["inactive_fraction"].values[:, dead], 1.0)
    assert np.all(series["dead_fraction"].values[:, names.index("alive")] < 0.5)
    alerts = [(a.layer.split("/")[-1], a.kind, a.first_step) for a in reader.alerts("train")]
    # From the first full window (10 activation rows, every step here), not from one batch.
    assert ("dead", rules.DEAD_UNITS, 10) in alerts, alerts
    assert not any(layer == "alive" and kind in rules.ACTIVATION_KINDS for layer, kind, _ in alerts), alerts
    # Cause and effect: the dead layer passes no gradient, so the layer before it vanishes.
    assert any(layer == "alive" and kind == rules.VANISHING for layer, kind, _ in alerts), alerts
    # ReLU is one-sided: never a saturation alert, however many zeros.
    assert not table.layers[dead].activation_two_sided
    assert not any(kind == rules.SATURATION for _, kind, _ in alerts)


def test_tanh_glorot_small_inputs_raises_neither(runs):
    reader, table, series = compare(runs["tanh_glorot_small_inputs"])
    assert np.nanmax(series["saturated_fraction"].values) < 0.05
    assert np.nanmax(series["dead_fraction"].values) == 0.0
    assert not [a for a in reader.alerts("train") if a.kind in rules.ACTIVATION_KINDS]


def test_preactivation_histograms_in_the_histograms_plugin(runs):
    result = runs["sigmoid_normal_init"]
    tensors = histograms_plugin_tensors(result)
    table = Reader.for_logdir(result["log_dir"]).layer_table("train")
    for layer in table.layers[:3]:
        data_ = tensors[metadata.histogram_tag(layer.depth, layer.name, metadata.HISTOGRAM_KIND_PREACTIVATION)]
        assert [d.step for d in data_] == list(range(1, STEPS + 1))
        for d in data_:
            buckets = np.asarray(d.numpy)
            ref = result["reference"][d.step][layer.name.split("/")[-1]]
            assert buckets.shape == (metadata.HISTOGRAM_BUCKETS, 3)
            assert buckets[:, 2].sum() == BATCH * 128
            # Sigmoid's derivative follows from its output, so the capture
            # reads the output a, not z (layer table: activation_read).
            assert layer.activation_read == "output"
            np.testing.assert_allclose([buckets[0, 0], buckets[-1, 1]], ref["a_range"], rtol=1e-5, atol=1e-7)
    assert not any(metadata.HISTOGRAM_KIND_PREACTIVATION in tag and "out" in tag for tag in tensors)


class FunctionProbe(keras.callbacks.Callback):
    """After GradFlow in the list: which train function each execution runs."""

    def __init__(self, gradflow):
        super().__init__()
        self.gradflow, self.sampling = gradflow, []

    def on_train_batch_begin(self, batch, logs=None):
        [kind] = self.gradflow._train_functions.kinds()  # what GradFlow's on_train_batch_begin selected
        assert self.model.train_function is self.gradflow._train_functions.functions[(kind,)]
        self.sampling.append((batch, "sampling" in kind))


@pytest.mark.parametrize("steps_per_execution, activation_freq, steps", [(1, 3, 7), (2, 4, 10)])
def test_steps_in_between_run_without_activation_statistics(tmp_path, steps_per_execution, activation_freq, steps):
    probes = []
    # dense_start=0: samples at the multiples of activation_freq only, so
    # that steps in between exist (the dense start samples every step).
    result = run_case("sigmoid_normal_init", str(tmp_path), steps=steps, activation_freq=activation_freq,
                      steps_per_execution=steps_per_execution, dense_start=0,
                      callbacks=[lambda gradflow: probes.append(FunctionProbe(gradflow)) or probes[-1]])
    sample_steps = tuple(range(activation_freq, steps + 1, activation_freq))
    # The sampling function runs the first execution (its trace settles the
    # layer table) and the executions holding a sample step, nothing else.
    expected = [(first - 1, first == 1 or any(s in sample_steps for s in range(first, first + steps_per_execution)))
                for first in range(1, steps + 1, steps_per_execution)]
    assert probes[0].sampling == expected
    # Statistics of exactly the sample steps, equal to the reference there
    # (the first execution's sampling function records nothing).
    compare(result, sample_steps)

def test_wrappers_removed_after_fit(runs):
    model, callback = runs["relu_negative_bias"]["model"], runs["relu_negative_bias"]["callback"]
    assert model.get_layer("dead").activation is keras.activations.relu
    assert "train_step" not in model.__dict__
    assert model.train_function is None
    step = int(callback._activation_recorder.step.numpy())
    x, y = data(1.0, 2 * BATCH)
    model.fit(x, y, batch_size=BATCH, verbose=0)
    assert int(callback._activation_recorder.step.numpy()) == step == CASE_STEPS["relu_negative_bias"]


class Custom(keras.layers.Layer):
    """A custom layer exposing `.activation`, used in a subclassed model."""

    def __init__(self, units, activation, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = activation
        self.dense = Dense(units)

    def call(self, x):
        return self.activation(self.dense(x))


def gaussian(x):
    return keras.ops.exp(-keras.ops.square(x))


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.head = Dense(3, activation="softmax", name="head")
        self.custom = Custom(16, gaussian, name="custom")
        self.act = keras.layers.Activation("tanh", name="act")
        self.relu = keras.layers.ReLU(name="relu_layer")
        self.first = Dense(16, name="first")

    def call(self, x):
        h = self.relu(self.first(x))
        h = keras.ops.relu(h)  # a plain function: not visible to the capture
        return self.head(self.act(self.custom(h)))


def test_layer_table_records_capture_and_depth_order(tmp_path):
    keras.utils.set_random_seed(3)
    model = Subclassed(name="sub")
    model(np.zeros((1, FEATURES), "float32"))
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    x, _ = data(1.0, 4 * BATCH)
    y = np.eye(3, dtype="float32")[np.arange(4 * BATCH) % 3]
    model.fit(x, y, batch_size=BATCH, verbose=0,
              callbacks=[GradFlow(str(tmp_path), update_freq=2, activation_freq=2, dense_start=0)])
    reader = Reader.for_logdir(str(tmp_path))
    table = reader.layer_table("train")
    rows = {layer.name.split("/")[-1]: layer for layer in table.layers}
    order = [layer.name.split("/")[-1] for layer in table.layers]
    # Call order, variable-less activation layers at their place.
    assert order.index("first") < order.index("relu_layer") < order.index("custom") < order.index("act") \
        < order.index("head"), order
    assert rows["relu_layer"].activation_capture == "in-step" and not rows["relu_layer"].has_gradient
    assert rows["act"].activation_capture == "in-step" and rows["act"].activation == "tanh"
    assert rows["act"].parameter_count == 0 and not rows["act"].has_gradient
    assert rows["custom"].activation == "gaussian" and rows["custom"].activation_capture == "in-step"
    assert rows["custom"].activation_two_sided
    assert rows["custom"].activation_peak_derivative == pytest.approx(np.sqrt(2 / np.e), rel=1e-3)
    assert rows["head"].activation_capture.startswith("not captured: softmax is not elementwise")
    assert rows["first"].activation_capture == ""
    sat = reader.activation_series("train", "saturated_fraction")
    assert sat.steps.tolist() == [2, 4]
    for name, layer in rows.items():
        column = sat.values[:, layer.depth]
        assert np.all(np.isfinite(column)) == (layer.activation_capture == "in-step"), name
    # Gradient and activation rows share the table's order.
    assert reader.layer_series("train", "grad_norm").values.shape[1] == len(table.layers)
    assert "call" not in model.get_layer("relu_layer").__dict__


def test_activation_freq_zero_writes_nothing_and_reads_fine(tmp_path):
    keras.utils.set_random_seed(3)
    model = dead_relu()
    model.compile(optimizer="sgd", loss="mse")
    x, y = data(1.0, 3 * BATCH)
    model.fit(x, y, batch_size=BATCH, verbose=0, callbacks=[GradFlow(str(tmp_path), update_freq=1, activation_freq=0)])
    reader = Reader.for_logdir(str(tmp_path))
    assert not reader.has_activation_statistics("train")
    table = reader.layer_table("train")
    assert table.activation_freq == 0 and all(layer.activation_capture == "" for layer in table.layers)
    steps, verdicts, _ = reader.verdicts("train")
    assert steps.tolist() == [1, 2, 3] and set(verdicts) == set(rules.KINDS)
    assert not [a for a in reader.alerts("train") if a.kind in rules.ACTIVATION_KINDS]


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_bad_activation_freq(value):
    with pytest.raises(ValueError, match=r"activation_freq must be an integer in \[0, "):
        GradFlow(tempfile.gettempdir(), activation_freq=value)


def test_report_max_errors():
    """Not a check: prints the largest relative errors (run with -s)."""
    for statistic, err in sorted(MAX_ERROR.items()):
        print(f"max relative error {statistic}: {err:.3g}")


def test_output_layers_are_found_for_every_model_form():
    import keras

    from tb_gradflow.keras import model_layers

    sequential = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, "relu", name="a"),
                                   keras.layers.Dense(1, "sigmoid", name="b")])
    assert model_layers.output_layers(sequential, []) == {id(sequential.get_layer("b"))}

    x = keras.Input((2,))
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, "softmax", name="head")], name="inner")
    two = keras.layers.Dense(3, name="side")(x)
    nested = keras.Model(x, [inner(keras.layers.Dense(3, name="trunk")(x)), two])
    assert model_layers.output_layers(nested, []) == {id(inner.get_layer("head")), id(nested.get_layer("side"))}

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.out = keras.layers.Dense(1, "sigmoid")
            self.hidden = keras.layers.Dense(4, "tanh")

        def call(self, x):
            return self.out(self.hidden(x))

    model = Subclassed()
    # No symbolic outputs: the last layer of the recorded call order stands in.
    assert model_layers.output_layers(model, [model.hidden, model.out]) == {id(model.out)}


# --------------------------------------------------------- MirroredStrategy
def _mirrored_main(out_dir):
    """Subprocess entry (logical devices must be set before TF starts): the
    sigmoid MLP on two replicas, and its reference on the global batch."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    keras.utils.set_random_seed(11)
    with strategy.scope():
        model = sigmoid_mlp()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    initial = model.get_weights()
    batch = 2 * BATCH
    x, y = data(3.0, batch * STEPS)
    log_dir = os.path.join(out_dir, "mirrored")
    model.fit(x, y, batch_size=batch, shuffle=False, verbose=0,
              callbacks=[GradFlow(log_dir, update_freq=1, activation_freq=1, histogram_freq=0)])
    # The same SGD steps on one device over the global batch; the
    # pre-activation histogram is the first replica's share.
    reference = reference_run(sigmoid_mlp, initial, x, y, batch, STEPS, replica_share=BATCH)
    with open(os.path.join(out_dir, "results.pkl"), "wb") as f:
        pickle.dump({"log_dir": log_dir, "reference": reference, "batch": batch}, f)


def test_mirrored_strategy_statistics_cover_the_global_batch(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
               + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "mirrored", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    with open(tmp_path / "results.pkl", "rb") as f:
        result = pickle.load(f)
    # Fractions, mean and std over both replicas' shares, as one device sees the global batch.
    reader, table, series = compare(result)
    from tensorboard import context

    provider = logdir_data_provider(result["log_dir"], ("histograms",))
    tensors = provider.read_tensors(context.RequestContext(), experiment_id="", plugin_name="histograms",
                                    downsample=10**9)["train"]
    for layer in table.layers[:3]:
        for d in tensors[metadata.histogram_tag(layer.depth, layer.name, metadata.HISTOGRAM_KIND_PREACTIVATION)]:
            buckets = np.asarray(d.numpy)
            ref = result["reference"][d.step][layer.name.split("/")[-1]]
            assert buckets[:, 2].sum() == BATCH * 128
            np.testing.assert_allclose(
                [buckets[0, 0], buckets[-1, 1]], ref["first_replica_a_range"], rtol=1e-5, atol=1e-7
            )


def test_stacked_state_under_xla_keeps_each_activations_rows():
    """Under XLA the activations share four variables: a step that records
    only some activations (stacked at the step's end, or one at a time
    outside a `stacked` block) writes their rows and leaves the others'; an
    activation recorded twice in a step (a shared layer) keeps its last
    call's statistics. Each row must equal what the per-activation recorder
    (no XLA) keeps for the same tensors, whose statistics the reference
    tests above check against numpy."""
    import tensorflow as tf

    from tb_gradflow.recorder import ActivationRecorder

    units, thresholds = [4, 3, 4], [0.05, 0.05, 0.1]
    rng = np.random.default_rng(3)
    a, c = [tf.nn.relu(rng.normal(size=(5, 4)).astype("float32")) for _ in range(2)]
    b = tf.constant(rng.normal(size=(5, 3)).astype("float32"))
    stacked = ActivationRecorder(units=units, thresholds=thresholds, activation_freq=1, xla=True)
    separate = ActivationRecorder(units=units, thresholds=thresholds, activation_freq=1)

    @tf.function(jit_compile=True)
    def stacked_step(step):
        with stacked.stacked():  # activations 0 and 2, both ReLU outputs of 4 units: one stack
            stacked.record(0, c, step, output_op="Relu")  # a shared layer's first call: its last is kept
            stacked.record(0, a, step, output_op="Relu")
            stacked.record(2, c, step, output_op="Relu")

    @tf.function(jit_compile=True)
    def one_at_a_time(step):
        stacked.record(1, b, step, function=tf.nn.tanh)  # no `stacked` block: its row alone

    def expected(step, records):
        for index, tensor, kwargs in records:
            separate.record(index, tensor, tf.constant(step, tf.int64), **kwargs)
        return separate.read()

    def assert_same(actual, want, rows):
        assert actual.step == want.step
        for i in rows:
            # Sums may round differently (XLA's reduction order); counts are exact.
            np.testing.assert_allclose(actual.moments[i], want.moments[i], rtol=1e-5, err_msg=f"activation {i}")
            np.testing.assert_array_equal(actual.active[i], want.active[i])
            np.testing.assert_array_equal(actual.histogram_range[i], want.histogram_range[i])
            np.testing.assert_array_equal(actual.histogram_counts[i], want.histogram_counts[i])

    stacked_step(tf.constant(1, tf.int64))
    first = stacked.read()
    assert_same(first, expected(1, [(0, a, dict(output_op="Relu")), (2, c, dict(output_op="Relu"))]), [0, 2])
    assert not np.any(first.moments[1]) and not np.any(first.active[1])  # never recorded

    one_at_a_time(tf.constant(2, tf.int64))
    second = stacked.read()
    assert_same(second, expected(2, [(1, b, dict(function=tf.nn.tanh))]), [1])
    for i in (0, 2):  # untouched by the second step
        np.testing.assert_array_equal(second.moments[i], first.moments[i])
        np.testing.assert_array_equal(second.active[i], first.active[i])
        np.testing.assert_array_equal(second.histogram_counts[i], first.histogram_counts[i])


PROBED = {
    "relu": (keras.activations.relu, True), "sigmoid": (keras.activations.sigmoid, True),
    "gelu": (keras.activations.gelu, True), "hard_silu": (keras.activations.hard_silu, True),
    "leaky_relu": (keras.activations.leaky_relu, True), "selu": (keras.activations.selu, True),
    "softmax": (keras.activations.softmax, False), "log_softmax": (keras.activations.log_softmax, False),
    "centred": (lambda x: x - keras.ops.mean(x, axis=-1, keepdims=True), False),
    "sort along the last axis": (lambda x: keras.ops.sort(x, axis=-1), False),
    "cumulative sum": (lambda x: keras.ops.cumsum(x, axis=-1), False),
    "scaled by its max": (lambda x: x * keras.ops.max(x), False),
    # Mixed precision: the same functions computed in float16.
    "relu in float16": (lambda x: keras.activations.relu(keras.ops.cast(x, "float16")), True),
    "gelu in float16": (lambda x: keras.activations.gelu(keras.ops.cast(x, "float16")), True),
    "softmax in float16": (lambda x: keras.activations.softmax(keras.ops.cast(x, "float16")), False),
    "sigmoid in bfloat16": (lambda x: keras.activations.sigmoid(keras.ops.cast(x, "bfloat16")), True),
    "softmax in bfloat16": (lambda x: keras.activations.softmax(keras.ops.cast(x, "bfloat16")), False),
}


@pytest.mark.parametrize("name", list(PROBED))
def test_probe_tells_elementwise_functions_as_their_whole_jacobian_does(name):
    """The probe tests elementwise-ness with two backward passes; the
    independent reference is the whole Jacobian on the same inputs (diagonal
    or not), and what the function is known to be."""
    import tensorflow as tf

    from tb_gradflow.keras import activation_capture

    function, elementwise = PROBED[name]
    x = tf.constant(activation_capture._PROBE_INPUT)
    with tf.GradientTape(persistent=True) as tape:  # a Jacobian without pfor needs a persistent tape
        tape.watch(x)
        y = tf.cast(function(x), tf.float32)  # tape.jacobian wants y in x's dtype; the cast is elementwise
    jacobian = tf.reshape(tape.jacobian(y, x, experimental_use_pfor=False), [12, 12]).numpy()
    assert bool(np.all(jacobian == np.diag(np.diag(jacobian)))) == elementwise
    assert activation_capture.probe(function).elementwise == elementwise


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":
        _mirrored_main(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
