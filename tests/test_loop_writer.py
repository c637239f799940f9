"""GradientWriter in a custom training loop (seed 001's GradientTape loop), eager and tf.function."""

import numpy as np
import pytest

from tb_gradflow import metadata
from tb_gradflow import schedule
from tb_gradflow.reader import Reader, logdir_data_provider


@pytest.fixture(scope="module")
def custom_loop_runs(tmp_path_factory):
    import keras
    import tensorflow as tf

    import tb_gradflow

    logdir = tmp_path_factory.mktemp("loop")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2)).astype("float32")
    y = (x[:, :1] * x[:, 1:] > 0).astype("float32")
    expected = {}
    for mode in ("eager", "function"):
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(5, "sigmoid", name="h1"),
                                  keras.layers.Dense(1, "sigmoid", name="out")], name=mode)
        optimizer = keras.optimizers.RMSprop()
        loss_fn = keras.losses.BinaryCrossentropy()
        writer = tb_gradflow.GradientWriter(logdir / mode, update_freq=2, histogram_freq=4)
        norms = {}

        def train_step(step, xb, yb):
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True))
            grads = tape.gradient(loss, model.trainable_weights)
            writer.write(step, grads, model.trainable_weights)
            optimizer.apply_gradients(zip(grads, model.trainable_weights))
            return grads

        step_fn = tf.function(train_step) if mode == "function" else train_step
        for step in range(1, 9):
            xb, yb = x[(step % 4) * 16:(step % 4 + 1) * 16], y[(step % 4) * 16:(step % 4 + 1) * 16]
            grads = step_fn(tf.constant(step, tf.int64), xb, yb)
            # Reference: the same tape gradients, reduced in float64 on the host.
            norms[step] = [np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in grads[i:i + 2]))
                           for i in (0, 2)]
        writer.close()
        expected[mode] = norms
    return logdir, expected


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_custom_loop_norms_match_the_tape(custom_loop_runs, mode):
    logdir, expected = custom_loop_runs
    series = Reader.for_logdir(logdir).layer_series(mode, metadata.GRAD_NORM)
    # update_freq=2 after the dense start: every one of the 8 steps is a row.
    assert series.steps.tolist() == [s for s in range(1, 9) if schedule.is_due(s, 2)] == list(range(1, 9))
    for step, values in zip(series.steps, series.values):
        np.testing.assert_allclose(values, expected[mode][int(step)], rtol=1e-5)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_custom_loop_writes_table_and_histograms(custom_loop_runs, mode):
    from tensorboard import context

    logdir, _ = custom_loop_runs
    table = Reader.for_logdir(logdir).layer_table(mode)
    assert [layer.name for layer in table.layers] == [f"{mode}/h1", f"{mode}/out"]
    assert [layer.parameter_count for layer in table.layers] == [15, 6]
    provider = logdir_data_provider(logdir, ())
    hist = provider.read_tensors(context.RequestContext(), experiment_id="", plugin_name="histograms", downsample=100)
    tag = metadata.histogram_tag(0, f"{mode}/h1", metadata.HISTOGRAM_KIND_GRADIENT)
    data = hist[mode][tag]
    assert [d.step for d in data] == [4, 8]
    assert data[-1].numpy.shape == (metadata.HISTOGRAM_BUCKETS, 3)
    assert data[-1].numpy[:, 2].sum() == 15  # every element of kernel (10) + bias (5)


def test_write_rejects_mismatched_arguments(tmp_path):
    import tensorflow as tf

    import tb_gradflow

    writer = tb_gradflow.GradientWriter(tmp_path / "bad")
    v = tf.Variable([1.0, 2.0], name="w")
    with pytest.raises(ValueError, match="got 2 gradients for 1 variables"):
        writer.write(1, [tf.ones(2), tf.ones(2)], [v])
    writer.write(1, [tf.ones(2)], [v])
    with pytest.raises(ValueError, match="same variables, in the same order"):
        writer.write(2, [tf.ones(2)], [tf.Variable([1.0, 2.0], name="other")])
    writer.close()
