"""GradFlow's statistics against a plain GradientTape reference, per model kind.

For each configuration the issue lists (Sequential, Functional, nested,
subclassed with attributes assigned out of call order, jit_compile=True,
steps_per_execution=4, mixed_float16, MirroredStrategy over two logical CPU
devices) a tiny model is trained with the callback on fixed data, the events are
read back through TensorBoard's own loading code (`Reader.for_logdir`), and
every written step is compared with a reference built without the hook:

* the same initial weights and the same optimizer, trained one batch at a
  time with `fit` (same data order, no callback);
* before each step, a plain `tf.GradientTape` over `model(x, training=True)`
  and `model.compute_loss` on that step's batch gives the gradient the step
  applies; the weights before and after the step give weight_norm and
  update_ratio.

Per layer and per variable: grad_norm, grad_rms, grad_max_abs, zero_fraction,
weight_norm, update_ratio (rtol 1e-5; float16's epsilon under mixed
precision, see FLOAT16_RTOL), interval max/min of the layer norm,
non-finite counts (0); also the layer table's depth order and the histograms
(as TensorBoard's "histograms" plugin serves them).

MirroredStrategy needs the logical devices configured before TensorFlow
initializes its devices, so those configurations run this file as a script in
a subprocess (`python tests/test_hook_reference.py mirrored OUT`), which
trains and computes the reference there and pickles it; the comparison runs
here with the same code as the other configurations.
"""

import contextlib
import functools
import os
import pickle
import subprocess
import sys
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorboard.plugins.histogram import summary_v2 as histogram_summary  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from tb_gradflow import metadata  # noqa: E402
from tb_gradflow import recorder  # noqa: E402
from tb_gradflow import schedule  # noqa: E402
from tb_gradflow.keras.callback import GradFlow  # noqa: E402
from tb_gradflow.reader import Reader, logdir_data_provider  # noqa: E402

RTOL = 1e-5
# Under mixed precision the gradient comes out of a float16 backward pass,
# and where oneDNN computes float16 natively a reference tape's kernels
# round otherwise than those of the graph `fit` runs. On an Intel Xeon with
# AVX512-FP16 and AMX (2026-12-05), oneDNN on: an eager tape's statistics
# were up to 3.3e-4 of themselves off (an element of a gradient 1.5e-3),
# the tape in a tf.function used now (`tape_gradients`) 1.1e-4; with
# TF_ENABLE_ONEDNN_OPTS=0 1.4e-7, and the eager tape passed at 1e-5 on the
# AMD EPYC the suite ran on before. The hooked and the unhooked run still
# train to the same bits there (test_hook_behaviour). The float16 epsilon
# (2^-10, 9.8e-4): a float16 gradient is known to no better, and a loss
# scale left in (a factor 2^15) or not divided out exactly is far outside.
FLOAT16_RTOL = 2.0 ** -10


def rtol_for(config):
    return FLOAT16_RTOL if "mixed_float16" in config else RTOL


FEATURES, TARGETS = 6, 3
Dense = keras.layers.Dense

# Largest relative error seen per configuration (printed with -s; the report
# quotes them).
MAX_RELATIVE_ERROR = {}


def data(n_samples, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_samples, FEATURES)).astype("float32")
    y = rng.normal(size=(n_samples, TARGETS)).astype("float32")
    return x, y


# ------------------------------------------------------------------ models
def sequential_model():
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            Dense(16, activation="tanh", name="s_a"),
            Dense(8, activation="relu", name="s_b"),
            Dense(TARGETS, name="s_out"),
        ],
        name="seq",
    )


def functional_model():
    inputs = keras.Input((FEATURES,), name="x")
    h = Dense(16, activation="tanh", name="f_a")(inputs)
    h = Dense(8, activation="relu", name="f_b")(h)
    skip = Dense(8, name="f_skip")(inputs)
    h = keras.layers.Add(name="add")([h, skip])
    outputs = Dense(TARGETS, name="f_out")(h)
    return keras.Model(inputs, outputs, name="func")


def nested_model():
    inner = keras.Sequential(
        [Dense(16, activation="tanh", name="n_a"), Dense(8, activation="tanh", name="n_b")], name="inner"
    )
    inputs = keras.Input((FEATURES,), name="x")
    h = Dense(16, activation="relu", name="n_in")(inputs)
    h = inner(h)
    outputs = Dense(TARGETS, name="n_out")(h)
    return keras.Model(inputs, outputs, name="nested")


def shared_sizes_model():
    """Kernels and biases of equal sizes in different layers (stacked
    together where the statistics run inline, under XLA) and an Embedding,
    whose gradient is sparse (IndexedSlices)."""
    inputs = keras.Input((FEATURES,), name="x")
    tokens = keras.layers.Lambda(lambda t: keras.ops.cast(keras.ops.abs(t) * 3, "int32") % 10, name="tokens")(inputs)
    h = keras.layers.Flatten(name="flat")(keras.layers.Embedding(10, 4, name="j_embed")(tokens))
    h = Dense(8, activation="tanh", name="j_a")(h)
    h = Dense(8, activation="relu", name="j_b")(h)
    h = Dense(8, activation="tanh", name="j_c")(h)
    outputs = Dense(TARGETS, name="j_out")(h)
    return keras.Model(inputs, outputs, name="shared")


class Block(keras.layers.Layer):
    """Two Dense layers, assigned in reverse call order."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.second = Dense(8, activation="tanh", name="blk_second")
        self.first = Dense(16, activation="relu", name="blk_first")

    def call(self, x):
        return self.second(self.first(x))


class Subclassed(keras.Model):
    """Output layer assigned first, input layer last: layers are listed in
    assignment order, so depth must come from the recorded call order."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.z_out = Dense(TARGETS, name="z_out")
        self.block = Block(name="block")
        self.a_in = Dense(16, activation="tanh", name="a_in")

    def call(self, x, training=False):
        return self.z_out(self.block(self.a_in(x)))


class WithUnusedAndFrozen(keras.Model):
    """A frozen layer in the path and a built layer `call` never uses."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = Dense(8, activation="tanh", name="hidden")
        self.frozen = Dense(8, activation="tanh", name="frozen", trainable=False)
        self.unused = Dense(4, name="unused")
        self.head = Dense(TARGETS, name="head")

    def build(self, input_shape):
        self.unused.build(input_shape)

    def call(self, x, training=False):
        return self.head(self.frozen(self.hidden(x)))


def subclassed_model():
    model = Subclassed(name="sub")
    model(np.zeros((1, FEATURES), "float32"))  # build, so weights can be copied
    return model


def mixed_model():
    # Built under the mixed_float16 global policy; the output in float32, as
    # the Keras mixed precision guide recommends.
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            Dense(16, activation="tanh", name="m_a"),
            Dense(8, activation="relu", name="m_b"),
            Dense(TARGETS, name="m_out", dtype="float32"),
        ],
        name="mixed",
    )


def sgd():
    return keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)


def adam():
    return keras.optimizers.Adam(learning_rate=0.01)


# name: (model_fn, optimizer_fn, extra compile kwargs, update_freq,
#        histogram_freq, batches, expected layer names in depth order)
CONFIGS = {
    "sequential": (sequential_model, sgd, {}, 1, 2, 4, ["s_a", "s_b", "s_out"]),
    "functional": (functional_model, adam, {}, 1, 2, 4, None),
    "nested": (nested_model, adam, {}, 1, 2, 4, ["n_in", "n_a", "n_b", "n_out"]),
    "subclassed": (subclassed_model, sgd, {}, 1, 2, 4, ["a_in", "blk_first", "blk_second", "z_out"]),
    "jit_compile": (sequential_model, adam, {"jit_compile": True}, 1, 2, 4, ["s_a", "s_b", "s_out"]),
    "steps_per_execution": (functional_model, sgd, {"steps_per_execution": 4}, 4, 4, 8, None),
    # Writes every 3 steps (histograms every 6): the interval extremes span
    # steps that write nothing, with and without XLA.
    "write_every_3": (sequential_model, adam, {}, 3, 6, 6, ["s_a", "s_b", "s_out"]),
    "write_every_3_jit": (sequential_model, adam, {"jit_compile": True}, 3, 6, 6, ["s_a", "s_b", "s_out"]),
    # Under XLA the statistics of equal-sized gradients are computed stacked
    # (stats.multi_tensor_statistics); the Embedding's sparse gradient apart.
    "jit_compile_shared_sizes": (shared_sizes_model, adam, {"jit_compile": True}, 1, 1, 4,
                                 ["j_embed", "j_a", "j_b", "j_c", "j_out"]),
    "mixed_float16": (mixed_model, adam, {}, 1, 2, 4, ["m_a", "m_b", "m_out"]),
    # Without the update ratio the weight norms are measured alone (under
    # XLA in rows of all weights, stats.multi_tensor_sum_squares).
    "jit_compile_no_update_ratio": (sequential_model, adam, {"jit_compile": True}, 1, 2, 4, ["s_a", "s_b", "s_out"]),
    # Without XLA a row's statistics are computed by compiled calls over
    # copies of every gradient (recorder.GradientRecorder.track_gradients):
    # the Embedding's sparse gradient apart, the weight norms alone without
    # the update ratio. Models above recorder.FUSED_MAX_ELEMENTS keep the
    # per-layer calls (forced here on the tiny models), and so does a fit
    # whose compiled calls fail to build (test_failed_compiled_statistics_fall_back).
    "shared_sizes": (shared_sizes_model, adam, {}, 1, 1, 4, ["j_embed", "j_a", "j_b", "j_c", "j_out"]),
    "no_update_ratio": (sequential_model, adam, {}, 1, 2, 4, ["s_a", "s_b", "s_out"]),
    "per_layer": (sequential_model, adam, {}, 1, 2, 4, ["s_a", "s_b", "s_out"]),
    "per_layer_shared_sizes": (shared_sizes_model, adam, {}, 1, 1, 4, ["j_embed", "j_a", "j_b", "j_c", "j_out"]),
    "per_layer_write_every_3": (sequential_model, adam, {}, 3, 6, 6, ["s_a", "s_b", "s_out"]),
    "failed_compile": (sequential_model, adam, {}, 1, 2, 4, ["s_a", "s_b", "s_out"]),
}
# GradFlow arguments beyond update_freq, histogram_freq and dense_start.
GRADFLOW_KWARGS = {"jit_compile_no_update_ratio": {"update_ratio": False}, "no_update_ratio": {"update_ratio": False}}


@contextlib.contextmanager
def _setting(module, name, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def _failing(*args, **kwargs):
    raise ValueError("a statistic XLA cannot compile")


# The recorder settings a configuration trains under.
SETTINGS = {
    "per_layer": lambda: _setting(recorder, "FUSED_MAX_ELEMENTS", 0),
    "per_layer_shared_sizes": lambda: _setting(recorder, "FUSED_MAX_ELEMENTS", 0),
    "per_layer_write_every_3": lambda: _setting(recorder, "FUSED_MAX_ELEMENTS", 0),
    # The compiled calls' first trace raises (in the warm-up thread).
    "failed_compile": lambda: _setting(recorder.stats, "multi_tensor_statistics", _failing),
}
# The write_every_3 configurations turn the dense start off, so that their
# intervals span several steps; the others log with the default schedule.
DENSE_START = {"write_every_3": 0, "write_every_3_jit": 0, "per_layer_write_every_3": 0}
BATCH = 8


# --------------------------------------------------------------- reference
def tape_gradients(model, optimizer, x, y, replicas=1):
    """The gradient `fit`'s train step hands the optimizer, computed the way
    Keras' TensorFlowTrainer.train_step does, then unscaled as the optimizer
    does before applying it.

    Under mixed precision the loss is multiplied by the LossScaleOptimizer's
    current dynamic scale before differentiating and the gradient divided by
    it afterwards, exactly what train_step (optimizer.scale_loss) and
    LossScaleOptimizer (division before the inner optimizer) do: the float16
    backward pass rounds differently (and small values underflow) without the
    scale, so an unscaled tape would not reproduce the gradient the optimizer
    applies, which is the one GradFlow must report.

    With replicas > 1 the batch is split as MirroredStrategy splits it, each
    share's loss is divided by the replica count (what Keras'
    scale_loss_for_distribution does) and the shares' gradients are summed
    (the all-reduce). Used under mixed precision only: the float16 backward
    pass of half a batch rounds differently from that of the whole batch
    (relative differences ~1e-4), so the single-device gradient of the mean
    loss is not the gradient the optimizer applies there.
    """
    total = None
    for part in range(replicas):
        size = len(x) // replicas
        xs, ys = x[part * size : (part + 1) * size], y[part * size : (part + 1) * size]
        gradients = functools.partial(_tape, model, optimizer, replicas)
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            # In a graph, as `fit` runs it: where oneDNN computes float16
            # natively, eager float16 kernels round otherwise than the
            # graph's fused ones (Intel Xeon with AVX512-FP16, 2026-12-05:
            # elements of the eager tape's gradient 1.5e-3 of themselves
            # off, the graph tape's within 1.1e-4; see FLOAT16_RTOL).
            gradients = tf.function(gradients)
        grads = [None if g is None else g.numpy() for g in gradients(tf.constant(xs), tf.constant(ys))]
        total = grads if total is None else [None if a is None else a + b for a, b in zip(total, grads)]
    return {v.path: (None if g is None else np.asarray(g, np.float64)) for v, g in zip(model.trainable_variables, total)}


def _tape(model, optimizer, replicas, xs, ys):
    """The float32 gradient of one share of the batch, unscaled (see `tape_gradients`)."""
    with tf.GradientTape() as tape:
        y_pred = model(xs, training=True)
        loss = model.compute_loss(x=xs, y=ys, y_pred=y_pred, training=True)
        if replicas > 1:
            loss = loss / replicas
        scaled = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, model.trainable_variables)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        scale = optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale
        scale = tf.cast(scale, tf.float32)
        grads = [None if g is None else tf.cast(g, tf.float32) / scale for g in grads]
    return [None if g is None else tf.cast(tf.convert_to_tensor(g), tf.float32) for g in grads]


def weights_by_path(model):
    return {v.path: np.asarray(v.numpy(), np.float64) for v in model.trainable_variables}


def reference_run(model, optimizer, x, y, batch, steps, grad_model=None, replicas=1, loss_shares=1):
    """Per step k (1-based): the gradient of batch k at the weights before
    step k, and the weights before and after it. `model` is compiled and
    starts from the hooked run's initial weights; `grad_model`, when given, is
    a single-device copy the tape runs on (weights copied in each step)."""
    out = {}
    for k in range(1, steps + 1):
        xb, yb = x[(k - 1) * batch : k * batch], y[(k - 1) * batch : k * batch]
        before = weights_by_path(model)
        if grad_model is not None:
            grad_model.set_weights(model.get_weights())
            grads = tape_gradients(grad_model, optimizer, xb, yb, replicas)
        else:
            grads = tape_gradients(model, optimizer, xb, yb)
        # The loss GradFlow watches: under a strategy, the first replica's share's.
        on = grad_model if grad_model is not None else model
        xs, ys = xb[: len(xb) // loss_shares], yb[: len(yb) // loss_shares]
        loss = float(on.compute_loss(x=xs, y=ys, y_pred=on(xs, training=True), training=True))
        model.fit(xb, yb, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        out[k] = {"grads": grads, "before": before, "after": weights_by_path(model), "loss": loss}
    return out


def train_hooked(model_fn, optimizer_fn, compile_kwargs, update_freq, histogram_freq, batches, log_dir, strategy=None,
                 dense_start=schedule.DENSE_START, gradflow_kwargs=None):
    """(initial weights, hooked model) after one hooked fit."""
    keras.utils.set_random_seed(7)
    scope = strategy.scope() if strategy is not None else _null()
    with scope:
        model = model_fn()
        model.compile(optimizer=optimizer_fn(), loss="mse", **compile_kwargs)
    initial = model.get_weights()
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    x, y = data(BATCH * replicas * batches)
    callback = GradFlow(log_dir, update_freq=update_freq, histogram_freq=histogram_freq, dense_start=dense_start,
                        **(gradflow_kwargs or {}))
    model.fit(x, y, batch_size=BATCH * replicas, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
    return initial, model, callback


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run_config(name, log_root):
    model_fn, optimizer_fn, compile_kwargs, update_freq, histogram_freq, batches, _ = CONFIGS[name]
    log_dir = os.path.join(log_root, name)
    dense_start = DENSE_START.get(name, schedule.DENSE_START)
    with SETTINGS.get(name, contextlib.nullcontext)(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        initial, model, callback = train_hooked(
            model_fn, optimizer_fn, compile_kwargs, update_freq, histogram_freq, batches, log_dir,
            dense_start=dense_start, gradflow_kwargs=GRADFLOW_KWARGS.get(name),
        )
    # The reference: no hook, same weights, same optimizer, one batch per fit.
    # steps_per_execution and XLA change how steps are dispatched, not the
    # math: the reference keeps jit_compile (same compiler) but runs one step
    # per execution, so it can be stopped after any step.
    ref_kwargs = {k: v for k, v in compile_kwargs.items() if k != "steps_per_execution"}
    ref = model_fn()
    ref.set_weights(initial)
    ref.compile(optimizer=optimizer_fn(), loss="mse", **ref_kwargs)
    x, y = data(BATCH * batches)
    reference = reference_run(ref, ref.optimizer, x, y, BATCH, batches)
    return {"log_dir": log_dir, "reference": reference, "update_freq": update_freq, "batches": batches,
            "dense_start": dense_start, "unit": compile_kwargs.get("steps_per_execution", 1),
            "update_ratio": GRADFLOW_KWARGS.get(name, {}).get("update_ratio", True),
            "warnings": [str(w.message) for w in caught], "fused": callback._recorder.gradient_copies is not None}


# -------------------------------------------------------------- comparison
def rel_err(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.maximum(np.abs(expected), 1e-30)
    return float(np.max(np.abs(actual - expected) / scale)) if actual.size else 0.0


def check_close(config, what, actual, expected, atol=0.0):
    np.testing.assert_allclose(actual, expected, rtol=rtol_for(config), atol=atol, err_msg=f"{config}: {what}")
    finite = np.isfinite(np.asarray(expected, np.float64)) & (np.abs(np.asarray(expected, np.float64)) > atol)
    if np.any(finite):
        err = rel_err(np.asarray(actual)[finite], np.asarray(expected)[finite])
        MAX_RELATIVE_ERROR[config] = max(MAX_RELATIVE_ERROR.get(config, 0.0), err)


def variable_series(reader, run, statistic, n_variables):
    """[steps] and [steps x variables] of a per-variable statistic, read the
    way the Reader reads per-layer ones (TensorBoard's data provider)."""
    data_ = reader._provider.read_tensors(
        _ctx(),
        experiment_id="",
        plugin_name=metadata.PLUGIN_NAME,
        downsample=10**9,
        run_tag_filter=_filter(run, metadata.variable_statistic_tag(statistic)),
    )[run][metadata.variable_statistic_tag(statistic)]
    data_ = sorted((d for d in data_ if np.shape(d.numpy) == (n_variables,)), key=lambda d: d.step)
    return np.array([d.step for d in data_]), np.array([np.asarray(d.numpy, np.float64) for d in data_])


def _ctx():
    from tensorboard import context

    return context.RequestContext()


def _filter(run, tag):
    from tensorboard.data import provider

    return provider.RunTagFilter(runs=[run], tags=[tag])


def expected_statistics(reference, step, groups):
    """{statistic: [n_groups]} from the reference at `step`; groups: list of
    variable-path lists (one per layer, or one per variable)."""
    r = reference[step]
    out = {k: [] for k in ("grad_norm", "grad_rms", "grad_max_abs", "zero_fraction", "weight_norm", "update_ratio")}
    for paths in groups:
        grads = [r["grads"][p].ravel() for p in paths if r["grads"][p] is not None]
        before = np.concatenate([r["before"][p].ravel() for p in paths])
        after = np.concatenate([r["after"][p].ravel() for p in paths])
        if grads:
            g = np.concatenate(grads)
            out["grad_norm"].append(np.sqrt(np.sum(g * g)))
            out["grad_rms"].append(np.sqrt(np.mean(g * g)))
            out["grad_max_abs"].append(np.max(np.abs(g)))
            out["zero_fraction"].append(np.mean(g == 0))
        else:
            for k in ("grad_norm", "grad_rms", "grad_max_abs", "zero_fraction"):
                out[k].append(np.nan)
        out["weight_norm"].append(np.linalg.norm(after))
        norm_before = np.linalg.norm(before)
        # NaN where the weights were all 0 (a zero-initialized bias at step 1).
        out["update_ratio"].append(np.linalg.norm(after - before) / norm_before if norm_before > 0 else np.nan)
    return {k: np.array(v) for k, v in out.items()}


def layer_norm(reference, step, paths):
    gs = [reference[step]["grads"][p] for p in paths if reference[step]["grads"][p] is not None]
    return np.sqrt(sum(np.sum(g * g) for g in gs))


def compare(config, result, expected_layers=None):
    """Every written step of the hooked run against the reference."""
    reader = Reader.for_logdir(result["log_dir"])
    assert reader.runs() == ["train"], reader.runs()
    table = reader.layer_table("train")
    reference, update_freq = result["reference"], result["update_freq"]
    paths = [v.name for v in table.variables]
    assert set(paths) == set(reference[1]["grads"]), (paths, list(reference[1]["grads"]))

    # Depth order: the table's layers are in forward call order.
    assert [layer.depth for layer in table.layers] == list(range(len(table.layers)))
    if expected_layers is not None:
        names = [layer.name.split("/")[-1] for layer in table.layers]
        assert names == expected_layers, f"{config}: layer order {names}"
    # Each variable sits under its own layer.
    for v in table.variables:
        assert v.name.startswith(table.layers[v.layer_index].name + "/"), (v.name, table.layers[v.layer_index].name)
        assert v.has_gradient
    assert all(layer.has_gradient for layer in table.layers)

    layer_groups = [[v.name for v in table.variables if v.layer_index == i] for i in range(len(table.layers))]
    variable_groups = [[p] for p in paths]

    steps_written = None
    for statistic in ("grad_norm", "grad_rms", "grad_max_abs", "zero_fraction", "weight_norm", "update_ratio"):
        layer = reader.layer_series("train", statistic)
        steps, values = variable_series(reader, "train", statistic, len(paths))
        np.testing.assert_array_equal(layer.steps, steps)
        steps_written = layer.steps
        if statistic == "update_ratio" and not result.get("update_ratio", True):
            # Not measured: NaN on every row, never a made-up number.
            assert np.all(np.isnan(layer.values)) and np.all(np.isnan(values)), config
            continue
        for i, step in enumerate(layer.steps):
            atol = 1e-12 if statistic == "zero_fraction" else 0.0
            check_close(
                config, f"layer {statistic} at step {step}", layer.values[i],
                expected_statistics(reference, int(step), layer_groups)[statistic], atol,
            )
            check_close(
                config, f"variable {statistic} at step {step}", values[i],
                expected_statistics(reference, int(step), variable_groups)[statistic], atol,
            )
    # Written on the rows of the schedule, up to the last step of the run.
    expected_steps = [s for s in range(1, result["batches"] + 1)
                      if schedule.is_due(s, update_freq, result.get("dense_start", 0), result.get("unit", 1))]
    assert steps_written.tolist() == expected_steps, (config, steps_written.tolist())

    # Interval extremes of the layer norm, non-finite counts: over the steps
    # of the interval that ran the recording train function (the executions
    # holding a row or a histogram step, and the first); the steps in between
    # run the user's own train function.
    high = reader.layer_series("train", "grad_norm_interval_max")
    low = reader.layer_series("train", "grad_norm_interval_min")
    nonfinite = reader.layer_series("train", "nonfinite_count")
    unit = result.get("unit", 1)

    def recorded(step):
        first = (step - 1) // unit * unit + 1
        execution = range(first, first + unit)
        return first == 1 or any(
            s in expected_steps or (table.histogram_freq and s % table.histogram_freq == 0) for s in execution
        )

    loss_scalars = scalar_series(result["log_dir"])
    for i, step in enumerate(high.steps):
        # Each interval starts on the step after the previous row.
        interval = range(int(high.steps[i - 1]) + 1 if i else 1, int(step) + 1)
        norms = np.array([[layer_norm(reference, s, g) for g in layer_groups] for s in interval if recorded(s)])
        check_close(config, f"interval max at {step}", high.values[i], norms.max(axis=0))
        check_close(config, f"interval min at {step}", low.values[i], norms.min(axis=0))
        np.testing.assert_array_equal(nonfinite.values[i], 0.0)
        # The loss is watched on every step of the interval.
        losses = [reference[s]["loss"] for s in interval]
        check_close(config, f"loss at {step}", loss_scalars[metadata.LOSS_TAG][int(step)], reference[int(step)]["loss"])
        check_close(config, f"loss interval max at {step}", loss_scalars[metadata.LOSS_INTERVAL_MAX_TAG][int(step)],
                    max(losses))
        check_close(config, f"loss interval min at {step}", loss_scalars[metadata.LOSS_INTERVAL_MIN_TAG][int(step)],
                    min(losses))
        assert loss_scalars[metadata.NONFINITE_LOSS_STEPS_TAG][int(step)] == 0

    check_histograms(config, result["log_dir"], table, reference, layer_groups)
    return table


def scalar_series(log_dir):
    """{tag: {step: value}} of the run's scalars, through TensorBoard's loader."""
    provider = logdir_data_provider(log_dir, ("scalars",))
    data = provider.read_scalars(_ctx(), experiment_id="", plugin_name="scalars", downsample=10**9)["train"]
    return {tag: {int(d.step): float(d.value) for d in points} for tag, points in data.items()}


def check_histograms(config, log_dir, table, reference, layer_groups):
    """Histograms as TensorBoard's histograms plugin serves them: one series
    per layer and kind; counts = finite (resp. finite non-zero) elements; the
    range spans the layer's gradient."""
    provider = logdir_data_provider(log_dir, ("histograms",))
    listing = provider.list_tensors(_ctx(), experiment_id="", plugin_name="histograms")["train"]
    expected_tags = {
        metadata.histogram_tag(layer.depth, layer.name, kind)
        for layer in table.layers
        for kind in (metadata.HISTOGRAM_KIND_GRADIENT, metadata.HISTOGRAM_KIND_LOG10_MAGNITUDE)
    }
    assert expected_tags <= set(listing), (config, sorted(expected_tags - set(listing)))
    tensors = provider.read_tensors(
        _ctx(), experiment_id="", plugin_name="histograms", downsample=10**9
    )["train"]
    histogram_freq = table.histogram_freq
    for layer in table.layers:
        gradient = tensors[metadata.histogram_tag(layer.depth, layer.name, metadata.HISTOGRAM_KIND_GRADIENT)]
        magnitude = tensors[metadata.histogram_tag(layer.depth, layer.name, metadata.HISTOGRAM_KIND_LOG10_MAGNITUDE)]
        assert [d.step for d in gradient] == [d.step for d in magnitude]
        assert gradient, config
        for datum, mag in zip(gradient, magnitude):
            step = int(datum.step)
            assert step % histogram_freq == 0, (config, step)
            g = np.concatenate([reference[step]["grads"][p].ravel() for p in layer_groups[layer.depth]])
            buckets = np.asarray(datum.numpy)
            assert buckets.shape == (metadata.HISTOGRAM_BUCKETS, 3)
            assert buckets[:, 2].sum() == np.isfinite(g).sum(), (config, layer.name, step)
            np.testing.assert_allclose(buckets[0, 0], g.min(), rtol=rtol_for(config))
            np.testing.assert_allclose(buckets[-1, 1], g.max(), rtol=rtol_for(config))
            # Bucket by bucket against TensorBoard's own numpy histogram of
            # the reference gradient; an element within rounding of a bucket
            # edge may land on the other side (the gradients agree to ~1e-7).
            expected = tensor_util.make_ndarray(
                histogram_summary.histogram_pb("g", g[np.isfinite(g)], buckets=metadata.HISTOGRAM_BUCKETS).value[0].tensor
            )[:, 2]
            assert np.abs(buckets[:, 2] - expected).sum() <= 4, (config, layer.name, step, buckets[:, 2], expected)
            assert np.asarray(mag.numpy)[:, 2].sum() == np.sum(np.isfinite(g) & (g != 0))


# ------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def log_root():
    with tempfile.TemporaryDirectory(prefix="tb_gradflow_ref_") as d:
        yield d


@pytest.mark.parametrize("config", [c for c in CONFIGS if c not in ("mixed_float16", "failed_compile")])
def test_matches_gradient_tape(config, log_root):
    result = run_config(config, log_root)
    table = compare(config, result, CONFIGS[config][-1])
    assert not [w for w in result["warnings"] if "tb_gradflow" in w], result["warnings"]
    # Without XLA the statistics went through the compiled calls unless the
    # configuration keeps them per layer.
    expected_fused = "jit_compile" not in CONFIGS[config][2] and not config.startswith("per_layer")
    assert result["fused"] == expected_fused, config
    if CONFIGS[config][0] is functional_model:
        # Functional models run their operations by decreasing depth: the
        # skip branch (depth 2, like f_b) may come before or after f_b.
        names = [layer.name for layer in table.layers]
        assert names[0] == "f_a" and names[-1] == "f_out" and set(names[1:3]) == {"f_b", "f_skip"}, names


@pytest.mark.parametrize("update_freq, compiled", [(recorder.FUSED_MAX_UPDATE_FREQ, True), (100, False)])
def test_compiled_statistics_where_rows_are_frequent(update_freq, compiled, log_root):
    """Without XLA the statistics are compiled where rows come at least
    every FUSED_MAX_UPDATE_FREQ steps; at the defaults (every 100) their
    compile would cost more start-up than the rows save."""
    _, _, callback = train_hooked(sequential_model, sgd, {}, update_freq, 0, 2,
                                  os.path.join(log_root, f"frequency_{update_freq}"))
    assert (callback._recorder.gradient_copies is not None) == compiled


def test_failed_compiled_statistics_fall_back(log_root):
    """A fit whose compiled statistics fail to build (traced in the warm-up
    thread) warns once, trains, and logs the per-layer statistics, which
    match the reference."""
    result = run_config("failed_compile", log_root)
    ours = [w for w in result["warnings"] if "tb_gradflow" in w]
    assert len(ours) == 1 and "a statistic XLA cannot compile" in ours[0] and "per layer" in ours[0], ours
    assert not result["fused"]
    compare("failed_compile", result, CONFIGS["failed_compile"][-1])


def test_mixed_float16(log_root):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        result = run_config("mixed_float16", log_root)
        table = compare("mixed_float16", result, CONFIGS["mixed_float16"][-1])
        assert "unscaled" in table.capture_point
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert keras.mixed_precision.global_policy().name == previous.name


# --------------------------------------------------------- MirroredStrategy
MIRRORED_CONFIGS = {
    # name: (model_fn, optimizer_fn, policy, update_freq, histogram_freq, batches, expected layers)
    "mirrored": (sequential_model, sgd, None, 2, 2, 4, ["s_a", "s_b", "s_out"]),
    "mirrored_mixed_float16": (mixed_model, sgd, "mixed_float16", 1, 2, 3, ["m_a", "m_b", "m_out"]),
}


def _mirrored_main(out_dir):
    """Subprocess entry: two logical CPU devices, hooked runs + references."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    # One strategy for every run: a second MirroredStrategy in the same
    # process reuses collective instance keys of the first (TF aborts with a
    # shape mismatch between unrelated all-reduces).
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    results = {}
    for name, (model_fn, optimizer_fn, policy, update_freq, histogram_freq, batches, _) in MIRRORED_CONFIGS.items():
        previous = keras.mixed_precision.global_policy()
        if policy:
            keras.mixed_precision.set_global_policy(policy)
        try:
            log_dir = os.path.join(out_dir, name)
            initial, _, callback = train_hooked(
                model_fn, optimizer_fn, {}, update_freq, histogram_freq, batches, log_dir, strategy
            )
            # Reference: the same strategy without the hook advances the
            # weights; the gradient of the mean loss over the global batch is
            # taken on a single-device copy.
            with strategy.scope():
                ref = model_fn()
                ref.set_weights(initial)
                ref.compile(optimizer=optimizer_fn(), loss="mse")
            single = model_fn()
            single.compile(optimizer=optimizer_fn(), loss="mse")
            x, y = data(2 * BATCH * batches)
            # Under mixed precision: the sum of per-replica float16 gradients
            # (see tape_gradients).
            reference = reference_run(
                ref, ref.optimizer, x, y, 2 * BATCH, batches, grad_model=single, replicas=2 if policy else 1,
                loss_shares=2,
            )
            results[name] = {
                "log_dir": log_dir,
                "reference": reference,
                "update_freq": update_freq,
                "batches": batches,
                "dense_start": schedule.DENSE_START,
                "capture_point": callback._capture_point,
            }
        finally:
            keras.mixed_precision.set_global_policy(previous)
    # A layer without gradient under the strategy: the optimizer drops its
    # variables before the all-reduce, the hook must still align the rest.
    log_dir = os.path.join(out_dir, "mirrored_unused")
    with strategy.scope():
        model = WithUnusedAndFrozen(name="partial")
        model(np.zeros((1, FEATURES), "float32"))
        model.compile(optimizer=sgd(), loss="mse")
    x, y = data(2 * BATCH * 3)
    model.fit(x, y, batch_size=2 * BATCH, shuffle=False, verbose=0,
              callbacks=[GradFlow(log_dir, update_freq=1, histogram_freq=1)])
    results["mirrored_unused"] = {"log_dir": log_dir}
    with open(os.path.join(out_dir, "results.pkl"), "wb") as f:
        pickle.dump(results, f)


@pytest.fixture(scope="module")
def mirrored_results(log_root):
    out_dir = os.path.join(log_root, "mirrored")
    os.makedirs(out_dir)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "mirrored", out_dir],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    with open(os.path.join(out_dir, "results.pkl"), "rb") as f:
        return pickle.load(f)


@pytest.mark.parametrize("config", list(MIRRORED_CONFIGS))
def test_mirrored_strategy(config, mirrored_results):
    result = mirrored_results[config]
    assert "all-reduce" in result["capture_point"]
    compare(config, result, MIRRORED_CONFIGS[config][-1])
    # One writer: a single event file for the run.
    run_dir = os.path.join(result["log_dir"], "train")
    assert len([f for f in os.listdir(run_dir) if "tfevents" in f]) == 1, os.listdir(run_dir)


def test_mirrored_layer_without_gradient(mirrored_results):
    reader = Reader.for_logdir(mirrored_results["mirrored_unused"]["log_dir"])
    table = reader.layer_table("train")
    names = [layer.name.split("/")[-1] for layer in table.layers]
    flags = {layer.name.split("/")[-1]: layer.has_gradient for layer in table.layers}
    assert flags == {"hidden": True, "frozen": False, "unused": False, "head": True}, flags
    assert names[:3] == ["hidden", "frozen", "head"], names
    norms = reader.layer_series("train", "grad_norm")
    assert norms.steps.tolist() == [1, 2, 3]
    for name, has in flags.items():
        column = norms.values[:, names.index(name)]
        assert np.all(np.isfinite(column) & (column > 0)) if has else np.all(np.isnan(column)), (name, column)


def test_report_max_relative_errors():
    """Not a check: prints the largest relative error seen per configuration."""
    for config, err in sorted(MAX_RELATIVE_ERROR.items()):
        print(f"max relative error {config}: {err:.3g}")


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":
        _mirrored_main(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
