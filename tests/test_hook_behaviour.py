"""GradFlow's behaviour around training: no change to the math, exact
restore, layers without gradient, non-finite gradients, bad input, failing
event writes.

Some checks need process-wide settings and run this file as a script in a
subprocess: bit-identical weights (`tf.config.experimental.
enable_op_determinism()` cannot be turned off again; under XLA it stays off,
because Keras compiles no XLA with it on; under MirroredStrategy the logical
devices must be set before TensorFlow starts) and the write failure
(`resource.setrlimit(RLIMIT_FSIZE)` with SIGXFSZ ignored, so event writes fail
with EFBIG, a real I/O error, no mock).
"""

import copy
import gc
import json
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
import weakref

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from tb_gradflow import metadata  # noqa: E402
from tb_gradflow import rules  # noqa: E402
from tb_gradflow.keras.callback import GradFlow  # noqa: E402
from tb_gradflow.reader import Reader, logdir_data_provider  # noqa: E402
from tb_gradflow.writer import LogDirError  # noqa: E402
from test_hook_reference import WithUnusedAndFrozen  # noqa: E402  (one model for both modules)

Dense = keras.layers.Dense
FEATURES, TARGETS, BATCH = 6, 3, 8


def data(n_samples, seed=0, nan_at=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_samples, FEATURES)).astype("float32")
    y = rng.normal(size=(n_samples, TARGETS)).astype("float32")
    if nan_at is not None:
        x[nan_at, 0] = np.nan
    return x, y


def sequential(seed=3, jit_compile=False, optimizer="adam"):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            Dense(16, activation="tanh", name="a"),
            keras.layers.Dropout(0.2, name="drop"),  # RNG in the step: must not be disturbed
            Dense(8, activation="relu", name="b"),
            Dense(TARGETS, name="out"),
        ],
        name="seq",
    )
    opt = keras.optimizers.Adam(0.01) if optimizer == "adam" else keras.optimizers.SGD(0.05, momentum=0.9)
    model.compile(optimizer=opt, loss="mse", jit_compile=jit_compile)
    return model


def shared_sizes(seed=3, jit_compile=True):
    """Equal-sized kernels and biases in different layers: under XLA the
    hook's statistics stack them (stats.multi_tensor_statistics)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((FEATURES,))]
        + [Dense(8, activation=a, name=f"h{i}") for i, a in enumerate(["tanh", "relu", "tanh", "relu"])]
        + [Dense(TARGETS, name="out")],
        name="shared",
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", jit_compile=jit_compile)
    return model


def train(model, x, y, callbacks=(), epochs=1):
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=list(callbacks))
    return [w.copy() for w in model.get_weights()]


def event_files(log_dir):
    out = {}
    for root, _, files in os.walk(log_dir):
        for f in files:
            if "tfevents" in f:
                path = os.path.join(root, f)
                out[path] = os.path.getsize(path)
    return out


def run_script(mode, out_dir, onednn=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if onednn is not None:
        # Read when TensorFlow loads. Forced on, every x86 machine runs
        # oneDNN's fused kernels, as AVX-512 CPUs do by default.
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), mode, out_dir],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), stderr=proc.stderr)


# ------------------------------------------------ bit-identical (subprocess)
def _determinism_main(out_dir):
    tf.config.experimental.enable_op_determinism()
    result = {}
    x, y = data(5 * BATCH)
    # XLA runs in _xla_determinism_main: with op determinism on, Keras
    # turns jit_compile off (keras' model_supports_jit), so a jit_compile
    # model here would train without XLA.
    for name, kwargs, activation_freq in (
        ("plain", {}, 100),
        ("sgd", {"optimizer": "sgd"}, 100),
        # Activation statistics on every step (tanh, relu and Dropout in the model).
        ("activations", {}, 1),
    ):
        without = train(sequential(**kwargs), x, y, epochs=3)
        log_dir = os.path.join(out_dir, name)
        with_hook = train(
            sequential(**kwargs), x, y,
            [GradFlow(log_dir, update_freq=2, histogram_freq=3, activation_freq=activation_freq)], epochs=3,
        )
        result[name] = all(np.array_equal(a, b) for a, b in zip(without, with_hook))
    # One callback over three fits (the second and third run the train
    # functions the first traced, GradFlow._resume) against three plain fits.
    result["reused"], _ = _three_fits_identical(lambda: sequential(), x, y, os.path.join(out_dir, "reused"))
    # A new callback per fit (the second and third take the first's train
    # functions over, GradFlow._adoptable).
    result["adopted"], _ = _three_fits_identical(lambda: sequential(), x, y, os.path.join(out_dir, "adopted"),
                                                 new_callback_per_fit=True)
    # A NaN in one sample of the second batch: every gradient from then on
    # is NaN. Training must go exactly as without the hook (NaN weights).
    xn, yn = data(5 * BATCH, nan_at=BATCH + 3)
    without = train(sequential(optimizer="sgd"), xn, yn)
    log_dir = os.path.join(out_dir, "nan")
    with_hook = train(sequential(optimizer="sgd"), xn, yn, [GradFlow(log_dir, update_freq=1, histogram_freq=1)])
    result["nan"] = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(without, with_hook))
    result["nan_weights_are_nan"] = bool(np.isnan(with_hook[0]).all())
    # NaN weights per layer (a, b, out: kernel and bias each): SGD with
    # momentum keeps an element NaN once a gradient element was NaN.
    result["nan_weight_counts"] = [int(np.isnan(with_hook[i]).sum() + np.isnan(with_hook[i + 1]).sum()) for i in (0, 2, 4)]
    result["nan_log_dir"] = log_dir
    # Mixed precision: the LossScaleOptimizer skips the NaN step (weights and
    # optimizer.iterations unchanged, the loss scale halves); the hook still
    # counts it, in the interval of steps 3-4.
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        xm, ym = data(6 * BATCH, nan_at=2 * BATCH + 3)
        without = train(sequential(optimizer="sgd"), xm, ym)
        log_dir = os.path.join(out_dir, "mixed_nan")
        model = sequential(optimizer="sgd")
        # dense_start=0: rows at 2, 4, 6, so the skipped step 3 lies inside an interval.
        with_hook = train(model, xm, ym, [GradFlow(log_dir, update_freq=2, histogram_freq=0, dense_start=0)])
        result["mixed_nan"] = all(np.array_equal(a, b) for a, b in zip(without, with_hook))
        result["mixed_nan_iterations"] = int(model.optimizer.iterations.numpy())
        result["mixed_nan_log_dir"] = log_dir
    finally:
        keras.mixed_precision.set_global_policy(previous)
    print(json.dumps(result))


@pytest.fixture(scope="module", params=["1", "0"], ids=["onednn_on", "onednn_off"])
def determinism(request, tmp_path_factory):
    return run_script("determinism", str(tmp_path_factory.mktemp("determinism")), onednn=request.param)


def _three_fits_identical(build, x, y, log_dir, new_callback_per_fit=False):
    """(whether three one-epoch fits with one GradFlow callback (or a new
    one per fit), every statistic on every step, leave the weights
    bit-identical to three plain fits; whether both models were compiled
    with XLA)."""
    plain_model, hooked_model = build(), build()

    def make():
        return GradFlow(log_dir, update_freq=1, histogram_freq=2, activation_freq=1)

    callback = make()
    for _ in range(3):
        without = train(plain_model, x, y)
        with_hook = train(hooked_model, x, y, [make() if new_callback_per_fit else callback])
    identical = all(np.array_equal(a, b) for a, b in zip(without, with_hook))
    return identical, plain_model.jit_compile is True and hooked_model.jit_compile is True


@pytest.mark.parametrize("config", ["plain", "sgd", "activations", "reused", "adopted"])
def test_bit_identical_weights(determinism, config):
    assert determinism[config] is True


@pytest.fixture(scope="module", params=["1", "0"], ids=["onednn_on", "onednn_off"])
def xla_determinism(request, tmp_path_factory):
    return run_script("xla_determinism", str(tmp_path_factory.mktemp("xla")), onednn=request.param)


@pytest.mark.parametrize("config", ["jit_compile", "activations_jit_compile", "shared_sizes_jit_compile",
                                    "reused_jit_compile"])
def test_bit_identical_weights_under_xla(xla_determinism, config):
    assert xla_determinism[config + "_xla"] is True, "Keras compiled the step without XLA"
    assert xla_determinism[config + "_reproducible"] is True, "the unhooked XLA run is not reproducible"
    assert xla_determinism[config] is True


@pytest.fixture(scope="module", params=["1", "0"], ids=["onednn_on", "onednn_off"])
def mirrored_determinism(request, tmp_path_factory):
    return run_script("mirrored_determinism", str(tmp_path_factory.mktemp("mirrored")), onednn=request.param)


@pytest.mark.parametrize("config", ["mirrored", "mirrored_shared_sizes"])
def test_bit_identical_weights_under_mirrored_strategy(mirrored_determinism, config):
    assert mirrored_determinism[config + "_reproducible"] is True, "the unhooked run is not reproducible"
    assert mirrored_determinism[config] is True


def test_nonfinite_gradients_counted_alerted_and_harmless(determinism):
    assert determinism["nan"] is True, "weights differ from the unhooked run"
    assert determinism["nan_weights_are_nan"]
    reader = Reader.for_logdir(determinism["nan_log_dir"])
    table = reader.layer_table("train")
    counts = reader.layer_series("train", "nonfinite_count")
    assert counts.steps.tolist() == [1, 2, 3, 4, 5]
    sizes = np.array([layer.parameter_count for layer in table.layers], np.float64)
    np.testing.assert_array_equal(counts.values[0], 0.0)
    # From step 2 on, every element of the first layer's gradient is NaN (the
    # NaN is in its input). How far the NaN travels past a ReLU depends on
    # the CPU: a ReLU fused into its MatMul by oneDNN turns NaN into 0, an
    # unfused one keeps it; either way the hook reports what the step had.
    first = [layer.name for layer in table.layers].index("seq/a")
    np.testing.assert_array_equal(counts.values[1:, first], sizes[first])
    assert np.all(counts.values <= sizes)
    # Independent of the counts: an element whose gradient was NaN at any
    # step leaves a NaN weight (SGD with momentum), and only then.
    nan_weights = np.array(determinism["nan_weight_counts"], np.float64)
    assert np.all(counts.values <= nan_weights), (counts.values, nan_weights)
    np.testing.assert_array_equal(counts.values[1:].max(axis=0) > 0, nan_weights > 0)
    # Norm statistics cover finite elements: no NaN propagates into them.
    norms = reader.layer_series("train", "grad_norm")
    assert np.all(np.isfinite(norms.values)) and np.all(norms.values[0] > 0)
    assert np.all(norms.values[1:, first] == 0.0)

    from tensorboard import context
    provider = logdir_data_provider(determinism["nan_log_dir"], ())
    tag = metadata.alert_count_tag(rules.NONFINITE)
    assert tag == "gradflow/alerts/nonfinite_layers"
    scalars = provider.read_scalars(
        context.RequestContext(), experiment_id="", plugin_name="scalars", downsample=100
    )["train"]
    alert = {d.step: d.value for d in scalars[tag]}
    assert alert[1] == 0.0
    assert all(alert[s] == np.count_nonzero(counts.values[s - 1]) >= 1 for s in (2, 3, 4, 5)), alert


def read_alerts(log_dir):
    from tensorboard import context
    provider = logdir_data_provider(log_dir, ())
    scalars = provider.read_scalars(
        context.RequestContext(), experiment_id="", plugin_name="scalars", downsample=100
    )["train"]
    return {d.step: d.value for d in scalars[metadata.alert_count_tag(rules.NONFINITE)]}


def test_nonfinite_under_loss_scaling(determinism):
    """A step the LossScaleOptimizer skips keeps its own step number, and its
    non-finite loss is counted at the write at the end of its interval; with
    the loss scale logged beside it, it is a skipped step, not an alert."""
    assert determinism["mixed_nan"] is True, "weights differ from the unhooked run"
    assert determinism["mixed_nan_iterations"] == 5  # 6 batches, one skipped
    reader = Reader.for_logdir(determinism["mixed_nan_log_dir"])
    counts = reader.layer_series("train", "nonfinite_count")
    assert counts.steps.tolist() == [2, 4, 6]
    # Step 3 (the NaN batch) falls between rows: it ran the user's own train
    # function, which computes no per-layer statistics, only the loss.
    np.testing.assert_array_equal(counts.values, 0.0)
    from tensorboard import context
    scalars = logdir_data_provider(determinism["mixed_nan_log_dir"], ()).read_scalars(
        context.RequestContext(), experiment_id="", plugin_name="scalars", downsample=100)["train"]
    assert {d.step: d.value for d in scalars[metadata.NONFINITE_LOSS_STEPS_TAG]} == {2: 0.0, 4: 1.0, 6: 0.0}
    alert = read_alerts(determinism["mixed_nan_log_dir"])
    assert alert == {2: 0.0, 4: 0.0, 6: 0.0}, alert
    assert [a for a in reader.alerts("train") if a.kind == rules.NONFINITE] == []
    # The scale each row's gradients were computed with: 2**15, halved by the skip at step 3.
    assert {d.step: d.value for d in scalars[metadata.LOSS_SCALE_TAG]} == {2: 32768.0, 4: 16384.0, 6: 16384.0}


# ---------------------------------------------- write failure (subprocess)
def _write_failure_main(out_dir):
    import resource
    import signal

    tf.config.experimental.enable_op_determinism()
    x, y = data(24 * BATCH)
    without = train(sequential(), x, y)
    model = sequential()
    callback = GradFlow(os.path.join(out_dir, "logs"), update_freq=1, histogram_freq=1)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = 6000  # bytes: the event file's start fits, the run's events do not
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with_hook = train(model, x, y, [callback])
    ours = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning) and "tb_gradflow" in str(w.message)]
    files = event_files(out_dir)
    print(
        json.dumps(
            {
                "identical": all(np.array_equal(a, b) for a, b in zip(without, with_hook)),
                "warnings": ours,
                "steps": int(model.optimizer.iterations.numpy()),
                "largest_file": max(files.values()),
                "limit": limit,
                "restored": "apply" not in model.optimizer.__dict__ and model.train_function is None,
            }
        )
    )


def test_write_failure_warns_once_and_training_completes(tmp_path):
    result = run_script("write_failure", str(tmp_path))
    assert result["steps"] == 24
    assert result["largest_file"] <= result["limit"]
    assert len(result["warnings"]) == 1, result["warnings"]
    assert "could not write events" in result["warnings"][0]
    # One warning from the project, and no traceback from a writer thread.
    assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
    assert result["identical"] is True
    assert result["restored"] is True


# ----------------------------------------------------------- in process
@pytest.fixture(scope="module")
def restored_run(tmp_path_factory):
    """A hooked fit, then a plain fit of the same model."""
    log_dir = str(tmp_path_factory.mktemp("restore"))
    model = sequential(optimizer="sgd")
    optimizer = model.optimizer
    x, y = data(4 * BATCH)
    callback = GradFlow(log_dir, update_freq=1, histogram_freq=1)
    after_hooked = train(model, x, y, [callback])
    state = {
        "files": event_files(log_dir),
        "apply_patched": "apply" in optimizer.__dict__,
        "train_function": model.train_function,
        "patched_calls": [layer.name for layer in model._flatten_layers() if "call" in layer.__dict__],
        "snapshot_step": int(callback._recorder.snapshot_step.numpy()),
        "moments": callback._recorder.moments.numpy().copy(),
    }
    after_plain = train(model, x, y)
    return model, callback, log_dir, after_hooked, after_plain, state


def test_restore_after_fit(restored_run):
    model, callback, log_dir, after_hooked, after_plain, state = restored_run
    assert state["apply_patched"] is False
    assert state["train_function"] is None
    assert state["patched_calls"] == []
    assert state["snapshot_step"] == 4


def test_later_fit_runs_none_of_the_hook(restored_run):
    model, callback, log_dir, after_hooked, after_plain, state = restored_run
    # The second fit trained (weights moved) ...
    assert not all(np.array_equal(a, b) for a, b in zip(after_hooked, after_plain))
    assert int(model.optimizer.iterations.numpy()) == 8
    # ... without the instrumented step: the recorder's variables, assigned
    # on every instrumented step, are untouched, and no event was written.
    assert int(callback._recorder.snapshot_step.numpy()) == 4
    np.testing.assert_array_equal(callback._recorder.moments.numpy(), state["moments"])
    assert event_files(log_dir) == state["files"]
    assert "apply" not in model.optimizer.__dict__


def test_second_hooked_fit_continues_the_steps(restored_run, tmp_path):
    model, *_ = restored_run
    x, y = data(4 * BATCH)
    # dense_start=0: a fixed period, so the rows show where the count resumed.
    train(model, x, y, [GradFlow(str(tmp_path), update_freq=2, histogram_freq=0, dense_start=0)])
    assert "apply" not in model.optimizer.__dict__ and model.train_function is None
    norms = Reader.for_logdir(str(tmp_path)).layer_series("train", "grad_norm")
    assert norms.steps.tolist() == [10, 12]
    assert np.all(np.isfinite(norms.values))


def _instance_attributes(model):
    """{(owner, attribute): the object set on the instance} for every
    attribute a hook replaces (Dense keeps its own `activation` there)."""
    found = {("optimizer", "apply"): model.optimizer.__dict__.get("apply")}
    for layer in model._flatten_layers(include_self=True):
        for a in ("call", "activation", "train_step"):
            found[(layer.name, a)] = layer.__dict__.get(a)
    return found


@pytest.mark.parametrize("order", ["as_entered", "reversed"])
def test_two_callbacks_leave_the_model_as_found(tmp_path, order):
    """Two GradFlow callbacks in one fit, ending in either order: the model
    and optimizer are exactly as before, and a later plain fit runs no hook."""
    model = sequential(optimizer="sgd")
    x, y = data(4 * BATCH)
    first = GradFlow(str(tmp_path / "a"), update_freq=1, histogram_freq=1, activation_freq=1)
    second = GradFlow(str(tmp_path / "b"), update_freq=2, histogram_freq=0, activation_freq=2, dense_start=0)
    callbacks = [first, second] if order == "as_entered" else [second, first]
    before = _instance_attributes(model)
    train(model, x, y, callbacks)
    after = _instance_attributes(model)
    assert after.keys() == before.keys()
    changed = [key for key in before if after[key] is not before[key]]
    assert changed == [], changed
    assert model.train_function is None
    # Both recorded the same steps of the same gradients.
    a = Reader.for_logdir(str(tmp_path / "a")).layer_series("train", "grad_norm")
    b = Reader.for_logdir(str(tmp_path / "b")).layer_series("train", "grad_norm")
    assert a.steps.tolist() == [1, 2, 3, 4] and b.steps.tolist() == [2, 4]
    np.testing.assert_allclose(a.values[[1, 3]], b.values, rtol=1e-6)
    files = event_files(str(tmp_path))
    snapshot = int(first._recorder.snapshot_step.numpy())
    train(model, x, y)
    assert int(first._recorder.snapshot_step.numpy()) == snapshot
    assert event_files(str(tmp_path)) == files


def test_fine_tuning_continues_the_step_count(tmp_path):
    """Fit, compile again (a new optimizer, iterations back at 0), fit on:
    the run's steps go on from the last one written, never repeat."""
    model = sequential(optimizer="sgd")
    x, y = data(4 * BATCH)
    train(model, x, y, [GradFlow(str(tmp_path), update_freq=1, histogram_freq=0)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    assert int(model.optimizer.iterations.numpy()) == 0
    train(model, x, y, [GradFlow(str(tmp_path), update_freq=1, histogram_freq=0)])
    norms = Reader.for_logdir(str(tmp_path)).layer_series("train", "grad_norm")
    assert norms.steps.tolist() == list(range(1, 9))


def _run_contents(log_dir):
    """Everything the run "train" holds, read through TensorBoard's loaders:
    {key: (steps, values)} for every per-layer and activation statistic,
    every scalar tag and every gradient histogram of every layer."""
    from test_hook_reference import scalar_series

    reader = Reader.for_logdir(log_dir)
    contents = {}
    for statistic in reader.statistics("train"):
        series = reader.layer_series("train", statistic)
        contents[("layer", statistic)] = (series.steps.tolist(), np.asarray(series.values, np.float64))
    for statistic in reader.activation_statistics("train"):
        series = reader.activation_series("train", statistic)
        contents[("activation", statistic)] = (series.steps.tolist(), np.asarray(series.values, np.float64))
    for tag, points in scalar_series(log_dir).items():
        contents[("scalar", tag)] = (sorted(points), np.array([points[k] for k in sorted(points)], np.float64))
    for layer in reader.layer_table("train").layers:
        for kind, data in reader.histograms("train", layer).items():
            contents[("histogram", layer.name, kind)] = ([d.step for d in data],
                                                        np.stack([np.asarray(d.numpy, np.float64) for d in data]))
    return contents


class _TrainFunctionSeen(keras.callbacks.Callback):
    """Notes the train function each execution runs (after GradFlow's
    on_train_batch_begin has set it)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_begin(self, batch, logs=None):
        self.seen.append(self.model.train_function)


@pytest.mark.parametrize("how", ["one callback", "a new callback per fit"])
@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_later_fits_run_the_first_fits_traced_functions_again(tmp_path, jit, how):
    """`for epoch in ...: model.fit(..., callbacks=[callback])`, with one
    callback object or a new one with the same arguments per fit: the second
    and third fits run the train functions the first traced (no trace, no
    XLA compile) and write what a model instrumented afresh every fit
    writes: the same rows, activation samples, histograms and scalars at
    the same steps. The model is left as found after every fit."""
    x, y = data(3 * BATCH)
    # Steps 1-3, 4-6, 7-9: an activation sample at step 5 only, so the third
    # fit takes none (a recorder not restarted would hand its step 5 on).
    kwargs = dict(update_freq=1, histogram_freq=2, activation_freq=5, dense_start=0)
    reused_model, fresh_model = sequential(jit_compile=jit), sequential(jit_compile=jit)
    callback = GradFlow(str(tmp_path / "reused"), **kwargs)
    train(reused_model, x, y, [callback])
    first_functions = list(callback._kept[1].values())
    # The hooked step advances the recorder's step in Python while it
    # traces, never when it runs: count the traces there.
    recorder, traces = callback._recorder, []
    recorder.advance_step = lambda inner=recorder.advance_step: traces.append(1) or inner()
    seen = _TrainFunctionSeen()
    for _ in range(2):
        later = callback if how == "one callback" else GradFlow(str(tmp_path / "reused"), **kwargs)
        train(reused_model, x, y, [later, seen])
        assert "apply" not in reused_model.optimizer.__dict__ and reused_model.train_function is None
        assert later._delegate is (None if later is callback else callback)
    assert callback._recorder is recorder and traces == []
    assert len(seen.seen) == 6 and all(any(f is g for g in first_functions) for f in seen.seen)
    for _ in range(3):
        train(fresh_model, x, y, [GradFlow(str(tmp_path / "fresh"), **kwargs)])
        GradFlow.release(fresh_model)  # The next fit instruments afresh.
    reused, fresh = _run_contents(str(tmp_path / "reused")), _run_contents(str(tmp_path / "fresh"))
    assert reused.keys() == fresh.keys()
    assert ("histogram", "seq/a", "gradient") in reused
    assert reused[("activation", "dead_fraction")][0] == [5]
    for key in fresh:
        assert reused[key][0] == fresh[key][0] == sorted(set(fresh[key][0])), key
        np.testing.assert_allclose(reused[key][1], fresh[key][1], rtol=1e-6, atol=0, equal_nan=True, err_msg=str(key))
    assert reused[("layer", "grad_norm")][0] == list(range(1, 10))
    for a, b in zip(reused_model.get_weights(), fresh_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)


def test_new_callback_takes_over_only_a_callback_of_the_same_arguments(tmp_path):
    """A new callback per fit runs the last one's functions only where it was
    made with the same arguments: other arguments (another update_freq,
    thresholds, run or log directory) instrument afresh, and the new
    callback becomes the model's last. `GradFlow.release` frees the kept functions, and a model
    that keeps its last callback is still freed once dropped."""
    x, y = data(2 * BATCH)
    kwargs = dict(update_freq=1, histogram_freq=0, activation_freq=0)
    model = sequential()
    first = GradFlow(str(tmp_path / "a"), **kwargs)
    train(model, x, y, [first])
    first_functions = list(first._kept[1].values())
    # Equal thresholds made apart are the same arguments (no new functions).
    same = GradFlow(str(tmp_path / "a"), thresholds=rules.Thresholds(), **kwargs)
    train(model, x, y, [same])
    assert same._delegate is first
    for other in (GradFlow(str(tmp_path / "a"), update_freq=2, histogram_freq=0, activation_freq=0),
                  GradFlow(str(tmp_path / "a"), thresholds=rules.Thresholds(exploding_growth=1e3), **kwargs),
                  GradFlow(str(tmp_path / "a"), run_name="other", **kwargs),
                  GradFlow(str(tmp_path / "b"), **kwargs)):
        seen = _TrainFunctionSeen()
        train(model, x, y, [other, seen])
        assert other._delegate is None and other._kept is not None
        assert not any(f is g for f in seen.seen for g in first_functions)
        first, first_functions = other, list(other._kept[1].values())
    same = GradFlow(str(tmp_path / "b"), **kwargs)
    seen = _TrainFunctionSeen()
    train(model, x, y, [same, seen])
    assert same._delegate is first and all(any(f is g for g in first_functions) for f in seen.seen)
    # Released: the next fit instruments afresh.
    GradFlow.release(model)
    assert first._kept is None
    after = GradFlow(str(tmp_path / "b"), **kwargs)
    seen = _TrainFunctionSeen()
    train(model, x, y, [after, seen])
    assert after._delegate is None and not any(f is g for f in seen.seen for g in first_functions)
    steps = _run_contents(str(tmp_path / "b"))[("layer", "grad_norm")][0]
    # Eight fits of two steps, the last three into run b: its steps are the optimizer's.
    assert steps == list(range(11, 17))
    # The model holds its last callback, which holds the model: a cycle the
    # garbage collector frees once nothing else refers to the model.
    alive = weakref.ref(model)
    del model, after, same, first, other, seen, first_functions
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("order", ["new first", "old first"])
def test_old_and_new_callback_of_the_same_arguments_in_one_fit_record_once(tmp_path, order):
    """The first fit's callback passed again beside a new one of the same
    arguments: the new one stands by (the old one is in the fit's list and
    does the work), so each step is counted and written once, as with one
    callback, and nothing warns."""
    x, y = data(4 * BATCH)
    kwargs = dict(update_freq=1, histogram_freq=0, activation_freq=0)
    model = sequential()
    old = GradFlow(str(tmp_path / "logs"), **kwargs)
    train(model, x, y, [old])
    new = GradFlow(str(tmp_path / "logs"), **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, x, y, [new, old] if order == "new first" else [old, new])
    assert new._installed is None and new._kept is None
    assert _run_contents(str(tmp_path / "logs"))[("layer", "grad_norm")][0] == list(range(1, 9))
    # The old callback is still the model's last: a third fit adopts it.
    third = GradFlow(str(tmp_path / "logs"), **kwargs)
    train(model, x, y, [third])
    assert third._delegate is old
    assert _run_contents(str(tmp_path / "logs"))[("layer", "grad_norm")][0] == list(range(1, 13))


def test_a_model_that_keeps_its_callback_copies_pickles_and_saves_as_before(tmp_path):
    """After a GradFlow fit the model holds its last callback (for the next
    fit's, see `GradFlow._adoptable`); deepcopy, pickle and `model.save`
    must work as on a model never hooked, carry no callback, and the copies
    must predict and train as the original does."""
    x, y = data(2 * BATCH)
    model = sequential()
    train(model, x, y, [GradFlow(str(tmp_path / "logs"), update_freq=1)])
    assert "_tb_gradflow_last_callback" in model.__dict__
    model.save(tmp_path / "model.keras")
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model)),
              keras.models.load_model(tmp_path / "model.keras")]
    expected = model.predict(x, verbose=0)
    for twin in copies:
        assert "_tb_gradflow_last_callback" not in twin.__dict__
        np.testing.assert_array_equal(twin.predict(x, verbose=0), expected)
        twin.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        assert all(np.isfinite(w).all() for w in twin.get_weights())


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_reused_callback_records_through_a_retrace(tmp_path, jit):
    """A later fit whose input shape makes Keras trace the step again (a
    batch of 5 that leaves a partial last batch): the trace goes through the
    wrappers put back for the fit, and every step is recorded."""
    model = sequential(jit_compile=jit)
    x, y = data(3 * BATCH)
    callback = GradFlow(str(tmp_path), update_freq=1, histogram_freq=2, activation_freq=1)
    train(model, x, y, [callback])
    recorder, traces = callback._recorder, []
    recorder.advance_step = lambda inner=recorder.advance_step: traces.append(1) or inner()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "training continues unhooked"
        model.fit(x, y, batch_size=5, shuffle=False, verbose=0, callbacks=[callback])
    assert callback._recorder is recorder and len(traces) >= 1
    contents = _run_contents(str(tmp_path))
    steps, norms = contents[("layer", "grad_norm")]
    assert steps == list(range(1, 9)) and np.all(np.isfinite(norms)) and np.all(norms > 0)
    assert contents[("activation", "dead_fraction")][0] == list(range(1, 9))
    assert contents[("histogram", "seq/a", "gradient")][0] == [2, 4, 6, 8]


def test_reused_callback_instruments_afresh_after_compile(tmp_path):
    """A compile between fits (a new loss, the same optimizer object) makes
    new train functions: the second fit's recorded loss is the new loss."""
    model = sequential(optimizer="sgd")
    x, y = data(3 * BATCH)
    callback = GradFlow(str(tmp_path), update_freq=1, histogram_freq=0, activation_freq=0)
    train(model, x, y, [callback])
    first_functions = list(callback._kept[1].values())
    model.compile(optimizer=model.optimizer, loss="mae")
    seen = _TrainFunctionSeen()
    history = model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[callback, seen])
    assert not any(f is g for f in seen.seen for g in first_functions)
    from test_hook_reference import scalar_series

    losses = {tag: points for tag, points in scalar_series(str(tmp_path)).items() if tag.endswith("/loss")}
    assert len(losses) == 1, sorted(scalar_series(str(tmp_path)))
    (points,) = losses.values()
    # Keras' epoch loss is the mean of the steps' mean absolute errors.
    assert sorted(points) == list(range(1, 7))
    np.testing.assert_allclose(np.mean([points[s] for s in (4, 5, 6)]), history.history["loss"][0], rtol=1e-5)


class ReadOnlyCall(keras.layers.Layer):
    """An unusual custom layer: `call` is a read-only property, so the hook
    cannot wrap it to record the call order."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 4), name="kernel")

    @property
    def call(self):
        return lambda x: keras.ops.matmul(x, self.kernel)


def test_layer_whose_call_cannot_be_wrapped_is_monitored_all_the_same(tmp_path):
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((FEATURES,)), Dense(8, activation="tanh", name="a"),
                              ReadOnlyCall(name="odd"), Dense(TARGETS, name="out")], name="odd_model")
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x, y = data(4 * BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "training continues unhooked"
        train(model, x, y, [GradFlow(str(tmp_path), update_freq=1, histogram_freq=0)])
    reader = Reader.for_logdir(str(tmp_path))
    names = [layer.name for layer in reader.layer_table("train").layers]
    assert sorted(names) == ["odd_model/a", "odd_model/odd", "odd_model/out"]
    # The layers whose calls were seen keep their call order; the odd one
    # follows them.
    assert names == ["odd_model/a", "odd_model/out", "odd_model/odd"]
    norms = reader.layer_series("train", "grad_norm")
    assert norms.steps.tolist() == [1, 2, 3, 4] and np.all(norms.values > 0)


def test_frozen_and_unused_layers_have_no_gradient(tmp_path):
    keras.utils.set_random_seed(1)
    model = WithUnusedAndFrozen(name="partial")
    model(np.zeros((1, FEATURES), "float32"))
    model.compile(optimizer="sgd", loss="mse")
    before = {v.path: v.numpy().copy() for v in model.weights}
    x, y = data(3 * BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Keras: "Gradients do not exist for variables"
        train(model, x, y, [GradFlow(str(tmp_path), update_freq=1, histogram_freq=1)])
    moved = {path: not np.array_equal(before[path], v.numpy()) for path, v in ((v.path, v) for v in model.weights)}
    assert moved["partial/hidden/kernel"] and moved["partial/head/kernel"]
    assert not moved["partial/frozen/kernel"] and not moved["partial/unused/kernel"]

    reader = Reader.for_logdir(str(tmp_path))
    table = reader.layer_table("train")
    names = [layer.name.split("/")[-1] for layer in table.layers]
    flags = {layer.name.split("/")[-1]: layer.has_gradient for layer in table.layers}
    assert flags == {"hidden": True, "frozen": False, "unused": False, "head": True}, flags
    assert names[:3] == ["hidden", "frozen", "head"], names  # call order; never-called last
    assert {v.name: v.has_gradient for v in table.variables} == {
        "partial/hidden/kernel": True, "partial/hidden/bias": True,
        "partial/unused/kernel": False, "partial/unused/bias": False,
        "partial/head/kernel": True, "partial/head/bias": True,
    }
    for statistic in ("grad_norm", "grad_rms", "grad_max_abs", "zero_fraction", "nonfinite_count"):
        series = reader.layer_series("train", statistic)
        assert series.steps.tolist() == [1, 2, 3]
        for name, has in flags.items():
            column = series.values[:, names.index(name)]
            assert np.all(np.isfinite(column)) if has else np.all(np.isnan(column)), (statistic, name, column)
    # A trainable layer the loss never reaches is reported (vanishing, value 0,
    # with the reason); a frozen one is not, and no other kind fires on either.
    steps, verdicts, _ = reader.verdicts("train")
    for kind, (fired, _) in verdicts.items():
        assert not fired[:, names.index("frozen")].any(), kind
        assert fired[:, names.index("unused")].any() == (kind == rules.VANISHING), kind
    (unused,) = [a for a in reader.alerts("train") if a.layer.endswith("unused")]
    assert unused.worst_value == 0.0 and "receives no gradient" in unused.explanation


# ------------------------------------------------------------- bad input
def test_unwritable_log_dir_fails_before_the_first_step(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    model = sequential()
    x, y = data(2 * BATCH)
    with pytest.raises(LogDirError, match="cannot write to log_dir") as info:
        train(model, x, y, [GradFlow(str(afile / "logs"))])
    assert str(afile) in str(info.value)
    assert int(model.optimizer.iterations.numpy()) == 0
    assert "apply" not in model.optimizer.__dict__


def test_no_trainable_weights(tmp_path):
    model = sequential()
    for layer in model.layers:
        layer.trainable = False
    model.compile(optimizer="sgd", loss="mse")
    x, y = data(2 * BATCH)
    with pytest.raises(ValueError, match="no trainable weights"):
        train(model, x, y, [GradFlow(str(tmp_path))])
    assert int(model.optimizer.iterations.numpy()) == 0
    assert event_files(str(tmp_path)) == {}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"update_freq": 0}, r"update_freq must be an integer in \[1, 2147483647\], got 0"),
        ({"update_freq": 2.5}, r"update_freq must be an integer in \[1, "),
        ({"update_freq": True}, r"update_freq must be an integer in \[1, "),
        ({"update_freq": 2**63}, r"update_freq must be an integer in \[1, 2147483647\], got 9223372036854775808"),
        ({"update_freq": 10**30}, r"update_freq must be an integer in \[1, 2147483647\]"),
        ({"histogram_freq": -1}, r"histogram_freq must be an integer in \[0, "),
        ({"histogram_freq": 2**31}, r"histogram_freq must be an integer in \[0, 2147483647\]"),
        ({"activation_freq": -1}, r"activation_freq must be an integer in \[0, "),
        ({"activation_freq": 10**30}, r"activation_freq must be an integer in \[0, "),
        ({"run_name": "../escape"}, "run_name must be a relative path inside log_dir, got '../escape'"),
        ({"run_name": "a/../../escape"}, "run_name must be a relative path inside log_dir"),
        ({"run_name": "/tmp/elsewhere"}, "run_name must be a relative path inside log_dir"),
        ({"run_name": ".."}, "run_name must be a relative path inside log_dir"),
        ({"run_name": 3}, "run_name must be a string"),
        ({"thresholds": {"vanishing_mean_abs": 1e-7}}, "thresholds must be a tb_gradflow.rules.Thresholds"),
        ({"thresholds": "strict"}, "thresholds must be a tb_gradflow.rules.Thresholds"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradFlow(tempfile.gettempdir(), **kwargs)


def test_run_name_may_nest_inside_log_dir(tmp_path):
    assert GradFlow(str(tmp_path), run_name="exp/./seed1").run_dir == os.path.join(str(tmp_path), "exp", "seed1")
    assert GradFlow(str(tmp_path), run_name="").run_dir == str(tmp_path)


def test_largest_period_trains(tmp_path):
    """2**31 - 1 (the largest period) is "never" after the first row, not an overflow."""
    model = sequential()
    x, y = data(3 * BATCH)
    train(model, x, y, [GradFlow(str(tmp_path), update_freq=2**31 - 1, histogram_freq=2**31 - 1,
                                 activation_freq=2**31 - 1)])
    assert int(model.optimizer.iterations.numpy()) == 3


class _DeleteLogDirAt(keras.callbacks.Callback):
    def __init__(self, log_dir, batch):
        super().__init__()
        self.log_dir, self.batch = log_dir, batch

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.batch:
            import shutil

            shutil.rmtree(self.log_dir)


def test_log_dir_deleted_mid_run_is_noticed_recreated_and_filled(tmp_path):
    log_dir = str(tmp_path / "logs")
    model = sequential()
    x, y = data(8 * BATCH)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, x, y, [_DeleteLogDirAt(log_dir, 4), GradFlow(log_dir, update_freq=1, histogram_freq=0)])
    ours = [str(w.message) for w in caught if "tb_gradflow" in str(w.message)]
    assert len(ours) == 1 and "was deleted during training; it was recreated" in ours[0], ours
    reader = Reader.for_logdir(log_dir)
    assert reader.runs() == ["train"]
    # The new event file starts with the layer table: steps 5..8 read as a
    # run. Rows are written on the logger's thread, so step 4's row (read
    # before the deletion) lands in the old file or, written just after it,
    # in the new one; no later row is lost.
    series = reader.layer_series("train", "grad_norm")
    assert series.steps.tolist() in ([5, 6, 7, 8], [4, 5, 6, 7, 8]), series.steps.tolist()
    assert np.all(np.isfinite(series.values))
    # In the new file a statistic's first value carries its metadata again
    # (built after the recreation: TensorBoard takes a tag's plugin from it).
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    [new_file] = [path for path in event_files(log_dir) if path.endswith(".gradflow")]
    tag = metadata.layer_statistic_tag("grad_norm")
    first = next(v for e in EventFileLoader(new_file).Load() for v in e.summary.value if v.tag == tag)
    assert first.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME


def test_uncompiled_model(tmp_path):
    model = keras.Sequential([keras.Input((FEATURES,)), Dense(2)])
    x, y = data(BATCH)
    with pytest.raises(ValueError, match="compile"):
        model.fit(x, y[:, :2], verbose=0, callbacks=[GradFlow(str(tmp_path))])
    # Keras refuses before any callback runs. Called directly, the callback
    # warns and stays out of the way (a custom train_step may apply its
    # gradients through optimizers of its own), writing nothing.
    callback = GradFlow(str(tmp_path))
    callback.set_model(model)
    with pytest.warns(UserWarning, match="has no model.optimizer. Nothing is recorded"):
        callback.on_train_begin()
    callback.on_train_batch_end(0)
    callback.on_train_end()
    assert event_files(str(tmp_path)) == {}


def test_steps_per_execution_rounds_update_freq(tmp_path):
    keras.utils.set_random_seed(2)
    model = sequential(optimizer="sgd")
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    x, y = data(12 * BATCH)
    with pytest.warns(UserWarning, match="written every 8 steps"):
        train(model, x, y, [GradFlow(str(tmp_path), update_freq=6, histogram_freq=0, dense_start=0)])
    reader = Reader.for_logdir(str(tmp_path))
    assert reader.layer_table("train").update_freq == 8
    weight = reader.layer_series("train", "weight_norm")
    # Step 8 is a full interval with its weights measured; step 12 is the
    # final, partial interval (no weight measurement of its own).
    assert weight.steps.tolist() == [8, 12]
    assert np.all(np.isfinite(weight.values[0])) and np.all(np.isnan(weight.values[1]))


def test_steps_per_execution_rounds_histogram_freq(tmp_path):
    from tensorboard import context
    keras.utils.set_random_seed(2)
    model = sequential(optimizer="sgd")
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    x, y = data(12 * BATCH)
    with pytest.warns(UserWarning, match="histograms are written every 8 steps"):
        train(model, x, y, [GradFlow(str(tmp_path), update_freq=4, histogram_freq=6, dense_start=0)])
    assert Reader.for_logdir(str(tmp_path)).layer_table("train").histogram_freq == 8
    provider = logdir_data_provider(str(tmp_path), ())
    histograms = provider.read_tensors(
        context.RequestContext(), experiment_id="", plugin_name="histograms", downsample=100
    )["train"]
    # Written at the execution that ends on step 8, not lost inside an execution.
    assert {d.step for series in histograms.values() for d in series} == {8}


@pytest.mark.parametrize("steps_per_execution, jit", [(1, False), (2, False), (1, True)], ids=["graph", "spe2", "xla"])
def test_last_execution_runs_the_sampling_function_where_rows_need_no_other(tmp_path, steps_per_execution, jit):
    """Where every row holds an activation sample (the defaults: both
    periods 100), the sampling function runs every row, the light one the
    rest; a fit's last execution, recorded for the final, partial row, runs
    the sampling function too instead of tracing a recording function for
    that one execution (a trace of the whole step at the end of the fit).
    The final row is written at the last step, with no activation sample
    there."""
    x, y = data(9 * BATCH)  # step 9 holds no row, alone in its execution
    model = sequential()
    model.compile(optimizer="adam", loss="mse", steps_per_execution=steps_per_execution, jit_compile=jit)
    period = 2 * steps_per_execution
    callback = GradFlow(str(tmp_path), update_freq=period, activation_freq=period, histogram_freq=0, dense_start=0)
    seen = _TrainFunctionSeen()
    train(model, x, y, [callback, seen])
    assert model.jit_compile is jit
    functions = callback._kept[1]
    assert set(functions) == {("sampling",), ("light",)}
    assert seen.seen[-1] is functions[("sampling",)]
    reader = Reader.for_logdir(str(tmp_path))
    rows = list(range(period, 9, period))
    grad_norm = reader.layer_series("train", "grad_norm")
    assert grad_norm.steps.tolist() == rows + [9]
    assert reader.activation_series("train", "dead_fraction").steps.tolist() == rows
    # The same fit without activation statistics runs the recording
    # function last: its rows, the final one included, are the same.
    model = sequential()
    model.compile(optimizer="adam", loss="mse", steps_per_execution=steps_per_execution, jit_compile=jit)
    recording = GradFlow(str(tmp_path / "recording"), update_freq=period, activation_freq=0, histogram_freq=0,
                         dense_start=0)
    train(model, x, y, [recording])
    assert set(recording._kept[1]) == {("recording",), ("light",)}
    expected = Reader.for_logdir(str(tmp_path / "recording")).layer_series("train", "grad_norm")
    assert expected.steps.tolist() == rows + [9]
    np.testing.assert_allclose(grad_norm.values, expected.values, rtol=1e-6, atol=0)


def _xla_determinism_main(out_dir):
    """Under XLA, without op determinism (with it Keras would compile no XLA
    at all): each model must train with XLA (checked), its unhooked run must
    be reproducible, and the hooked run bit-identical to it. The statistics
    run inline in the compiled step, the gradients' stacked by size and the
    activations' measured together at the end of the step."""
    x, y = data(5 * BATCH)
    result = {}
    for name, build, update_freq, activation_freq in (
        ("jit_compile", lambda: sequential(jit_compile=True), 2, 100),
        # Activation statistics on every step (tanh, relu and Dropout in the model).
        ("activations_jit_compile", lambda: sequential(jit_compile=True), 2, 1),
        ("shared_sizes_jit_compile", shared_sizes, 1, 1),
    ):
        models = [build() for _ in range(3)]
        without = train(models[0], x, y, epochs=3)
        again = train(models[1], x, y, epochs=3)
        with_hook = train(models[2], x, y, [GradFlow(os.path.join(out_dir, name), update_freq=update_freq,
                                                     histogram_freq=3, activation_freq=activation_freq)], epochs=3)
        result[name + "_xla"] = all(model.jit_compile is True for model in models)
        result[name + "_reproducible"] = all(np.array_equal(a, b) for a, b in zip(without, again))
        result[name] = all(np.array_equal(a, b) for a, b in zip(without, with_hook))
    reused = os.path.join(out_dir, "reused_jit_compile")
    result["reused_jit_compile"], result["reused_jit_compile_xla"] = _three_fits_identical(
        lambda: sequential(jit_compile=True), x, y, reused)
    # The same model and data as "jit_compile", whose unhooked run was reproduced above.
    result["reused_jit_compile_reproducible"] = result["jit_compile_reproducible"]
    print(json.dumps(result))


def _mirrored_determinism_main(out_dir):
    """Under MirroredStrategy (two logical CPUs) the statistics run inline in
    each replica's step, stacked by size where layers share them: the run
    must stay bit-identical to the unhooked one."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    tf.config.experimental.enable_op_determinism()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x, y = data(2 * 5 * BATCH)
    result = {}

    def run(build, callbacks=()):
        with strategy.scope():
            model = build()
        model.fit(x, y, batch_size=2 * BATCH, epochs=2, shuffle=False, verbose=0, callbacks=list(callbacks))
        return [w.copy() for w in model.get_weights()]

    for name, build in (("mirrored", lambda: sequential(optimizer="sgd")),
                        ("mirrored_shared_sizes", lambda: shared_sizes(jit_compile=False))):
        without = run(build)
        again = run(build)
        with_hook = run(build, [GradFlow(os.path.join(out_dir, name), update_freq=1, histogram_freq=2, activation_freq=1)])
        result[name + "_reproducible"] = all(np.array_equal(a, b) for a, b in zip(without, again))
        result[name] = all(np.array_equal(a, b) for a, b in zip(without, with_hook))
    print(json.dumps(result))


class _CountTraces(keras.layers.Layer):
    """Identity; counts its calls in training, i.e. the traces of the train
    step (the model runs its layers once per trace; a symbolic build calls
    them with training=False)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def call(self, x, training=None):
        self.calls += bool(training)
        return x


class _CustomStep(keras.Sequential):
    """A custom train_step (it may apply the optimizer to a subset of the variables)."""

    def train_step(self, data):
        return super().train_step(data)


class _OptimizerBuilt(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.built = self.model.optimizer.built


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_first_execution_traces_the_step_once_with_the_optimizer_keras_builds(tmp_path, policy):
    """Keras builds an unbuilt optimizer inside the first traced step, and a
    tf.function that creates variables on its first call traces again: a
    plain fit traces its first step twice. The hook builds the optimizer
    before (as Keras does under a strategy), so the step and its statistics
    trace once, and the optimizer ends with the variables, in the order and
    of the paths, of the unhooked fit's. A custom train_step is left to
    build it itself (it may apply the optimizer to some variables only)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        x, y = data(4 * BATCH)
        fitted = {}
        for hooked in (False, True):
            keras.utils.set_random_seed(3)
            counter = _CountTraces(name="count")
            model = keras.Sequential([keras.Input((FEATURES,)), Dense(8, activation="relu", name="a"), counter,
                                      Dense(TARGETS, name="out")], name="m")
            model.compile(optimizer=keras.optimizers.Adam(0.01, name="adam"), loss="mse")
            assert not model.optimizer.built
            counter.calls = 0  # the Sequential's symbolic build called it
            probe = _OptimizerBuilt()
            callbacks = [GradFlow(str(tmp_path / policy), update_freq=1, histogram_freq=1), probe] if hooked else []
            train(model, x, y, callbacks)
            # Paths without the uniquifying suffix of the optimizer Keras names
            # (loss_scale_optimizer, loss_scale_optimizer_1, ...).
            paths = [v.path.split("/", 1) for v in model.optimizer.variables]
            fitted[hooked] = model, counter.calls, [(o.rstrip("0123456789").rstrip("_"), p) for o, p in paths]
        (_, plain_traces, plain_paths), (hooked_model, hooked_traces, hooked_paths) = fitted[False], fitted[True]
        assert hooked_traces == 1, f"the hooked step traced {hooked_traces} times (plain: {plain_traces})"
        assert hooked_paths == plain_paths and len(plain_paths) > 2
        assert type(hooked_model.optimizer).__name__ == (
            "LossScaleOptimizer" if policy == "mixed_float16" else "Adam")

        keras.utils.set_random_seed(3)
        custom = _CustomStep([keras.Input((FEATURES,)), Dense(TARGETS)], name="custom")
        custom.compile(optimizer="adam", loss="mse")
        probe = _OptimizerBuilt()
        train(custom, x, y, [GradFlow(str(tmp_path / "custom")), probe])
        assert probe.built is False and custom.optimizer.built
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _two_outputs():
    inputs = keras.Input((FEATURES,), name="x")
    counter = _CountTraces(name="count")
    hidden = counter(Dense(8, activation="relu", name="h")(inputs))
    outputs = {"cls": Dense(TARGETS, name="cls")(hidden), "reg": Dense(1, name="reg")(hidden)}
    return keras.Model(inputs, outputs, name="two"), counter


@pytest.mark.parametrize("labels", ["sparse", "one-hot", "two outputs", "two outputs, no metrics"])
def test_compiled_metrics_are_built_before_the_first_trace_as_keras_builds_them(tmp_path, labels):
    """Keras builds compiled metrics (and a multi-output model's loss
    trackers) inside the first traced step from the first batch (accuracy
    becomes sparse or categorical by the labels' rank): they too made
    tf.function trace the hooked step twice. The hook builds them from the
    batch's element_spec first; the step traces once and every epoch's logs
    are the unhooked fit's."""
    x, _ = data(4 * BATCH)
    sparse = np.random.default_rng(1).integers(0, TARGETS, len(x))
    one_hot = np.eye(TARGETS, dtype="float32")[sparse]
    history = {}
    for hooked in (False, True):
        keras.utils.set_random_seed(3)
        if labels.startswith("two outputs"):
            (model, counter), y = _two_outputs(), {"cls": sparse, "reg": x[:, :1]}
            metrics = None if labels.endswith("no metrics") else {"cls": ["accuracy"], "reg": ["mae"]}
            model.compile(optimizer="adam", metrics=metrics,
                          loss={"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "reg": "mse"})
        else:
            counter = _CountTraces(name="count")
            model = keras.Sequential([keras.Input((FEATURES,)), Dense(8, activation="relu"), counter, Dense(TARGETS)])
            losses = keras.losses
            loss = losses.SparseCategoricalCrossentropy if labels == "sparse" else losses.CategoricalCrossentropy
            model.compile(optimizer="adam", loss=loss(from_logits=True), metrics=["accuracy"])
            y = sparse if labels == "sparse" else one_hot
        counter.calls = 0
        callbacks = [GradFlow(str(tmp_path / labels), update_freq=1)] if hooked else []
        fit = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
        history[hooked] = (list(fit.history), fit.history, counter.calls)
    (plain_keys, plain, plain_traces), (hooked_keys, hooked, hooked_traces) = history[False], history[True]
    tracked = "cls_loss" if labels.endswith("no metrics") else "acc"  # what Keras builds in the trace
    assert hooked_keys == plain_keys and any(tracked in key for key in plain_keys)
    for key in plain_keys:  # the same metric objects (sparse or categorical accuracy) on the same batches
        np.testing.assert_allclose(hooked[key], plain[key], rtol=1e-6, err_msg=key)
    assert hooked_traces == 1, f"the hooked step traced {hooked_traces} times (plain: {plain_traces})"


if __name__ == "__main__":
    {"determinism": _determinism_main, "write_failure": _write_failure_main,
     "xla_determinism": _xla_determinism_main,
     "mirrored_determinism": _mirrored_determinism_main}[sys.argv[1]](sys.argv[2])
