"""Do no harm on models nobody here wrote: every case trains with and without
GradFlow, with oneDNN's graph rewrites forced on and forced off.

Per case (a few steps on generated data, op determinism on):
* `fit` succeeds with the hook;
* every model and optimizer variable ends bit-identical to the unhooked run;
* the first step's per-layer gradient norms equal a plain `GradientTape` on
  the same batch and initial weights (separately built, same seed), read
  back through TensorBoard's loading code (`Reader`);
* the layer table is in depth order: the first layer with a gradient is the
  model's first, the output layer is last among the layers with gradients.

The runs use one inter-op thread. ResNet50V2's own training step, without
any hook, is not reproducible across thread settings on CPU: grappler's
memory optimizer turns a large AddN of its backward pass into accumulations
summed in arrival order, which `enable_op_determinism` does not prevent, and
with oneDNN off the unhooked run differs from itself (620 of 622 variables
after 4 steps) between `inter_op_parallelism_threads=1` and the default.
With one inter-op thread the order, and so the reference, is fixed; the hook
must then leave it exactly as it was (docs/event_contract.md, "Exactness").

`TF_ENABLE_ONEDNN_OPTS` is read when TensorFlow loads, so each setting runs
this file as a script in its own process (`python
tests/test_real_architectures.py OUT ONEDNN CASE...`), which prints one JSON
line per case. The `keras.applications` models beyond ResNet50V2 take
minutes each on 2 cores and carry the `slow` marker (`pytest -m slow`), as
do ResNet50V2 and the hook's capture variants with oneDNN off (`CI_RUNS`).
"""

import json
import os
import subprocess
import sys
import time
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, BATCH = 3, 4

CI_CASES = [
    "resnet50v2", "lstm", "gru_bidirectional", "transformer_block", "shared_layer", "frozen_submodel",
    "custom_train_step", "built_on_first_call", "two_optimizers_gan", "bn_cnn_clipnorm",
    "bn_cnn_global_clipnorm", "bn_cnn_use_ema", "bn_cnn_gradient_accumulation", "bn_cnn_mixed_float16",
    "keras_hub_transformer_layers", "keras_hub_bert_backbone",
]
SLOW_CASES = ["mobilenetv3small", "efficientnetb0", "densenet121", "convnexttiny"]
# Every case writes a row every step, where GradFlow compiles the statistics
# without XLA (recorder.GradientRecorder.track_gradients); a case named
# "<case>_per_layer" trains <case> with the per-layer statistics that rows
# every 100 steps (the defaults) and models above FUSED_MAX_ELEMENTS keep.
PER_LAYER = "_per_layer"


# ------------------------------------------------------------ subprocess side
def _cases():
    import keras
    import numpy as np
    import tensorflow as tf

    layers = keras.layers

    def classifier(inputs, outputs, name):
        return keras.Model(inputs, outputs, name=name)

    def application(name, **kwargs):
        def build():
            return getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=4, **kwargs)

        return build, "image"

    def lstm():
        inputs = keras.Input((8, 5))
        return classifier(inputs, layers.Dense(4, name="out")(layers.LSTM(16, name="lstm")(inputs)), "lstm")

    def gru_bidirectional():
        inputs = keras.Input((8, 5))
        h = layers.Bidirectional(layers.GRU(8, return_sequences=True, name="gru_a"), name="bi")(inputs)
        h = layers.GRU(8, name="gru_b")(h)
        return classifier(inputs, layers.Dense(4, name="out")(h), "gru")

    def transformer_block():
        tokens = keras.Input((10,), dtype="int32")
        h = layers.Embedding(50, 16, name="embed")(tokens)
        attention = layers.MultiHeadAttention(num_heads=2, key_dim=8, name="mha")(h, h)
        h = layers.LayerNormalization(name="ln1")(layers.Add()([h, attention]))
        ff = layers.Dense(16, name="ff_out")(layers.Dense(32, activation="gelu", name="ff_in")(h))
        h = layers.LayerNormalization(name="ln2")(layers.Add()([h, ff]))
        h = layers.GlobalAveragePooling1D()(h)
        return classifier(tokens, layers.Dense(4, name="out")(h), "transformer")

    def shared_layer():
        inputs = keras.Input((6,))
        shared = layers.Dense(6, activation="tanh", name="shared")
        h = layers.Dense(6, activation="relu", name="first")(inputs)
        h = layers.Add()([shared(h), shared(inputs)])  # one layer, called twice
        return classifier(inputs, layers.Dense(4, name="out")(h), "shared")

    def frozen_submodel():
        inner = keras.Sequential([layers.Dense(8, activation="relu", name="f1"), layers.Dense(8, name="f2")], name="frozen")
        inner.trainable = False
        inputs = keras.Input((6,))
        h = inner(layers.Dense(6, activation="relu", name="first")(inputs))
        return classifier(inputs, layers.Dense(4, name="out")(h), "with_frozen")

    class CustomStep(keras.Model):
        """A train_step written as the Keras guide teaches it."""

        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
            gradients = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
            return {"loss": loss}

    def custom_train_step():
        inputs = keras.Input((6,))
        h = layers.Dense(8, activation="relu", name="first")(inputs)
        return CustomStep(inputs, layers.Dense(4, name="out")(h), name="custom")

    class BuiltOnFirstCall(keras.Model):
        """A subclassed model whose weights exist only once it is called."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.first = layers.Dense(8, activation="relu", name="first")
            self.out = layers.Dense(4, name="out")

        def call(self, x):
            return self.out(self.first(x))

    class Gan(keras.Model):
        """Generator and discriminator, each with an optimizer of its own."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.generator = keras.Sequential([layers.Dense(8, activation="relu"), layers.Dense(6)], name="generator")
            self.discriminator = keras.Sequential([layers.Dense(8, activation="relu"), layers.Dense(1)], name="discriminator")

        def call(self, x):
            return self.discriminator(self.generator(x))

        def compile(self, d_optimizer, g_optimizer):
            super().compile()
            self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer

        def train_step(self, data):
            real = data[0] if isinstance(data, tuple) else data
            noise = tf.reverse(real, axis=[1]) * 0.5  # deterministic "noise"
            bce = keras.losses.BinaryCrossentropy(from_logits=True)
            with tf.GradientTape() as tape:
                fake = self.generator(noise, training=True)
                d_loss = bce(tf.ones([tf.shape(real)[0], 1]), self.discriminator(real, training=True)) + bce(
                    tf.zeros([tf.shape(real)[0], 1]), self.discriminator(fake, training=True)
                )
            grads = tape.gradient(d_loss, self.discriminator.trainable_variables)
            self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_variables))
            with tf.GradientTape() as tape:
                g_loss = bce(tf.ones([tf.shape(real)[0], 1]), self.discriminator(self.generator(noise, training=True)))
            grads = tape.gradient(g_loss, self.generator.trainable_variables)
            self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_variables))
            return {"d_loss": d_loss, "g_loss": g_loss}

    def bn_cnn():
        inputs = keras.Input((16, 16, 3))
        h = inputs
        for i, filters in enumerate((8, 16)):
            h = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(h)
            h = layers.BatchNormalization(name=f"bn{i}")(h)
            h = layers.ReLU(name=f"relu{i}")(h)
        h = layers.GlobalAveragePooling2D()(h)
        return classifier(inputs, layers.Dense(4, name="out")(h), "bn_cnn")

    def keras_hub_encoder():
        import keras_hub

        tokens = keras.Input((10,), dtype="int32")
        h = keras_hub.layers.TokenAndPositionEmbedding(50, 10, 16, name="embed")(tokens)
        h = keras_hub.layers.TransformerEncoder(intermediate_dim=32, num_heads=2, dropout=0.0, name="encoder")(h)
        h = keras_hub.layers.TransformerDecoder(intermediate_dim=32, num_heads=2, dropout=0.0, name="decoder")(h)
        return classifier(tokens, layers.Dense(4, name="out")(layers.GlobalAveragePooling1D()(h)), "hub_encoder")

    def keras_hub_bert():
        import keras_hub

        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
            max_sequence_length=10, dropout=0.0,
        )
        inputs = {name: keras.Input((10,), dtype="int32", name=name) for name in ("token_ids", "segment_ids", "padding_mask")}
        pooled = backbone(inputs)["pooled_output"]
        return classifier(inputs, layers.Dense(4, name="out")(pooled), "hub_bert")

    adam = lambda **kw: keras.optimizers.Adam(1e-3, **kw)  # noqa: E731
    # name: (build, data kind, optimizer, reference?, expect first/last layers)
    return {
        "resnet50v2": (*application("ResNet50V2"), adam, True),
        "mobilenetv3small": (*application("MobileNetV3Small"), adam, True),
        "efficientnetb0": (*application("EfficientNetB0"), adam, False),  # dropout: the tape's mask differs
        "densenet121": (*application("DenseNet121"), adam, True),
        "convnexttiny": (*application("ConvNeXtTiny"), adam, True),
        "lstm": (lstm, "sequence", adam, True),
        "gru_bidirectional": (gru_bidirectional, "sequence", adam, True),
        "transformer_block": (transformer_block, "tokens", adam, True),
        "shared_layer": (shared_layer, "vector", adam, True),
        "frozen_submodel": (frozen_submodel, "vector", adam, True),
        "custom_train_step": (custom_train_step, "vector", adam, True),
        "built_on_first_call": (lambda: BuiltOnFirstCall(name="lazy"), "vector", adam, False),
        "two_optimizers_gan": (lambda: Gan(name="gan"), "gan", None, False),
        "bn_cnn_clipnorm": (bn_cnn, "small_image", lambda: adam(clipnorm=0.01), True),
        "bn_cnn_global_clipnorm": (bn_cnn, "small_image", lambda: adam(global_clipnorm=0.01), True),
        "bn_cnn_use_ema": (bn_cnn, "small_image", lambda: adam(use_ema=True, ema_overwrite_frequency=2), True),
        "bn_cnn_gradient_accumulation": (bn_cnn, "small_image", lambda: adam(gradient_accumulation_steps=2), True),
        "bn_cnn_mixed_float16": (bn_cnn, "small_image", adam, False),
        "keras_hub_transformer_layers": (keras_hub_encoder, "tokens", adam, True),
        "keras_hub_bert_backbone": (keras_hub_bert, "bert", adam, True),
    }


def _data(kind):
    import numpy as np

    rng = np.random.default_rng(0)
    n = STEPS * BATCH
    shapes = {"image": (32, 32, 3), "small_image": (16, 16, 3), "sequence": (8, 5), "vector": (6,), "gan": (6,)}
    if kind == "tokens":
        x = rng.integers(0, 50, size=(n, 10)).astype("int32")
    elif kind == "bert":
        x = {"token_ids": rng.integers(0, 50, size=(n, 10)).astype("int32"),
             "segment_ids": np.zeros((n, 10), "int32"), "padding_mask": np.ones((n, 10), "int32")}
    else:
        x = rng.normal(size=(n,) + shapes[kind]).astype("float32")
    y = rng.integers(0, 4, size=(n,))
    return x, y


def tree_first(x, n):
    import tensorflow as tf

    if isinstance(x, dict):
        return {k: tf.constant(v[:n]) for k, v in x.items()}
    return tf.constant(x[:n])


def _run_case(name, out_dir):
    import keras
    import numpy as np
    import tensorflow as tf

    from tb_gradflow.keras.callback import GradFlow
    from tb_gradflow.reader import Reader

    from tb_gradflow import recorder

    per_layer = name.endswith(PER_LAYER)
    base = name[: -len(PER_LAYER)] if per_layer else name
    build, kind, optimizer, with_reference = _cases()[base]
    x, y = _data(kind)
    mixed = base.endswith("mixed_float16")

    def make():
        keras.utils.set_random_seed(7)
        model = build()
        if kind == "gan":
            model.compile(keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3))
        else:
            model.compile(optimizer=optimizer(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    def state(model):
        optimizers = [getattr(model, a) for a in ("optimizer", "d_optimizer", "g_optimizer") if getattr(model, a, None)]
        return [np.array(v.numpy()) for v in model.variables + [w for o in optimizers for w in o.variables]]

    def train(callbacks):
        model = make()
        if kind == "gan":
            model.fit(x, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
        else:
            model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
        return model, state(model)

    previous = keras.mixed_precision.global_policy()
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        result = {"case": name}
        started = time.time()
        _, without = train([])
        log_dir = os.path.join(out_dir, name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            callback = GradFlow(log_dir, update_freq=1, histogram_freq=1, activation_freq=1)
            saved = recorder.FUSED_MAX_ELEMENTS
            if per_layer:
                recorder.FUSED_MAX_ELEMENTS = -1
            try:
                model, with_hook = train([callback])
            finally:
                recorder.FUSED_MAX_ELEMENTS = saved
        if getattr(callback, "_recorder", None) is not None:
            result["compiled"] = callback._recorder.gradient_copies is not None
        activations = getattr(callback, "_activation_recorder", None)
        if activations is not None:
            # Copied, and the call that measures the copies built by XLA (on
            # a thread the fit does not wait for: waited for here).
            activations.finish_warm_up()
            result["activations_compiled"] = (
                activations.copies is not None and activations._copies_warning is None
                and bool((activations._compiled_rows.numpy() >= 0).any())
            )
        result["seconds"] = round(time.time() - started, 1)
        result["warnings"] = sorted({str(w.message) for w in caught if "GradFlow" in str(w.message)})
        result["identical"] = len(without) == len(with_hook) and all(
            np.array_equal(a, b, equal_nan=True) for a, b in zip(without, with_hook)
        )
        result["variables"] = len(without)
        if kind == "gan":
            return result
        reader = Reader.for_logdir(log_dir)
        table = reader.layer_table("train")
        result["table"] = [[layer.name, layer.has_gradient, layer.activation_capture] for layer in table.layers]
        in_step = [i for i, layer in enumerate(table.layers) if layer.activation_capture == "in-step"]
        result["in_step_without_data"] = []
        if in_step:
            saturated = reader.activation_series("train", "saturated_fraction")
            result["in_step_without_data"] = [
                table.layers[i].name for i in in_step if not np.all(np.isfinite(saturated.values[:, i]))
            ]
        norms = reader.layer_series("train", "grad_norm")
        result["first_step"] = int(norms.steps[0])
        if with_reference:
            reference = make()
            xb = tree_first(x, BATCH)
            yb = tf.constant(y[:BATCH])
            with tf.GradientTape() as tape:
                y_pred = reference(xb, training=True)
                loss = reference.compute_loss(x=xb, y=yb, y_pred=y_pred)
            grads = tape.gradient(loss, reference.trainable_variables)
            # By position: the table lists model.trainable_variables in order,
            # and auto-named variables (LayerScale's) differ between builds.
            layer_of = [v.layer_index for v in table.variables]
            assert len(layer_of) == len(grads)
            sums = np.zeros(len(table.layers))
            for i, g in enumerate(grads):
                if g is not None:
                    g = tf.convert_to_tensor(g)
                    sums[layer_of[i]] += float(tf.reduce_sum(tf.square(tf.cast(g, tf.float64))))
            expected = np.sqrt(sums)
            actual = norms.values[0]
            clip = {a: getattr(reference.optimizer, a, None) for a in ("clipnorm", "global_clipnorm")}
            if any(clip.values()):
                # What Keras applies: each gradient scaled by min(1, c / ||g||)
                # (clipnorm) or all by min(1, c / ||G||) (global_clipnorm).
                squares = [float(tf.reduce_sum(tf.square(tf.cast(g, tf.float64)))) for g in grads]
                total = np.sqrt(sum(squares))
                applied = np.zeros(len(table.layers))
                for i, sq in enumerate(squares):
                    norm = np.sqrt(sq)
                    c = clip["clipnorm"] or clip["global_clipnorm"]
                    factor = min(1.0, c / (norm if clip["clipnorm"] else total)) if norm > 0 else 1.0
                    applied[layer_of[i]] += sq * factor**2
                has = np.array([layer.has_gradient for layer in table.layers])
                expected_factor = np.sqrt(applied[has] / sums[has])
                actual_factor = reader.layer_series("train", "clip_factor").values[0][has]
                result["clip_factor_error"] = float(np.max(np.abs(actual_factor - expected_factor) / expected_factor))
                result["clip_factor_min"] = float(np.min(expected_factor))
            has = np.array([layer.has_gradient for layer in table.layers])
            scale = np.maximum(np.abs(expected[has]), 1e-30)
            result["max_relative_error"] = float(np.max(np.abs(actual[has] - expected[has]) / scale))
        return result
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _main(out_dir, cases):
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_inter_op_parallelism_threads(1)  # see the module docstring
    for name in cases:
        try:
            result = _run_case(name, out_dir)
        except Exception as e:  # Reported per case; the test names it.
            import traceback

            result = {"case": name, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------- pytest side
def _start(tmp_path_factory, onednn, cases):
    out = tmp_path_factory.mktemp(f"arch_onednn{onednn}")
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), str(out), *cases],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(proc, onednn):
    try:
        stdout, stderr = proc.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    results = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            results[result["case"]] = result
    assert results, stdout[-2000:] + stderr[-4000:]
    # Printed with -s: the closing note's table comes from these.
    for result in results.values():
        print(f"oneDNN={onednn}", json.dumps({k: v for k, v in result.items() if k not in ("table", "traceback")}))
    return results


# One subprocess per (oneDNN setting, group of cases), shared by the tests.
# With oneDNN on (its graph rewrites are where exactness broke before) every
# case runs in CI. With oneDNN off CI keeps one case of each kind of graph
# (recurrent, attention, custom step, convolution with clipping and with
# mixed precision, a keras_hub backbone); the hook's other capture variants
# and ResNet50V2 (~105 s) run there with the slow set, so the suite stays
# well under 15 minutes on 2 cores.
ONEDNN_OFF_CI_CASES = ["lstm", "gru_bidirectional", "transformer_block", "custom_train_step", "bn_cnn_clipnorm",
                       "bn_cnn_mixed_float16", "keras_hub_bert_backbone"]
# The per-layer statistics (GradFlow's defaults) on a few graphs in CI: with
# oneDNN on ResNet50V2 (where exactness broke before) and a convolution with
# clipping, with it off the Transformer block and mixed precision.
PER_LAYER_CI = {"1": ["resnet50v2", "bn_cnn_clipnorm"], "0": ["transformer_block", "bn_cnn_mixed_float16"]}
PER_LAYER_SLOW = ["lstm", "custom_train_step", "mobilenetv3small"]
CI_RUNS = {"1": CI_CASES + [c + PER_LAYER for c in PER_LAYER_CI["1"]],
           "0": ONEDNN_OFF_CI_CASES + [c + PER_LAYER for c in PER_LAYER_CI["0"]]}
SLOW_RUNS = {"1": SLOW_CASES + [c + PER_LAYER for c in PER_LAYER_SLOW],
             "0": SLOW_CASES + [c for c in CI_CASES if c not in ONEDNN_OFF_CI_CASES]
             + [c + PER_LAYER for c in PER_LAYER_SLOW]}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cache = {}

    def get(onednn, group):
        if (onednn, group) not in cache:
            # Both settings of a group run at once: each process is mostly
            # one thread (tracing, one inter-op thread), so on 2 cores the
            # pair takes about as long as the longer one.
            runs = CI_RUNS if group == "ci" else SLOW_RUNS
            procs = {setting: _start(tmp_path_factory, setting, cases) for setting, cases in runs.items()}
            for setting, proc in procs.items():
                cache[setting, group] = _collect(proc, setting)
        return cache[onednn, group]

    return get


def _pairs(runs):
    return [pytest.param(onednn, case, id=f"onednn_{'on' if onednn == '1' else 'off'}-{case}")
            for onednn, cases in runs.items() for case in cases]


def check(result):
    assert "error" not in result, result.get("traceback", result.get("error"))
    assert result["identical"], f"{result['case']}: weights differ from the unhooked run"
    if "compiled" in result:
        # The statistics went the way the case asked for.
        assert result["compiled"] != result["case"].endswith(PER_LAYER), result["case"]
    if "activations_compiled" in result:
        assert result["activations_compiled"] != result["case"].endswith(PER_LAYER), result["case"]
    if "max_relative_error" in result:
        assert result["max_relative_error"] < 1e-4, result
    if "table" in result:
        with_gradient = [name for name, has, _ in result["table"] if has]
        assert with_gradient, result["table"]
        # No row claims a capture that never delivers data.
        assert result["in_step_without_data"] == [], result["in_step_without_data"]


@pytest.mark.parametrize("onednn, case", _pairs(CI_RUNS))
def test_real_architecture(results, onednn, case):
    result = results(onednn, "ci")[case]
    check(result)
    case = case[: -len(PER_LAYER)] if case.endswith(PER_LAYER) else case
    table = result.get("table", [])
    names = [name for name, has, _ in table if has]
    if case == "resnet50v2":
        assert names[0].endswith("conv1_conv") and names[-1].endswith("predictions"), names
    if case in ("lstm", "gru_bidirectional"):
        captures = {name: capture for name, _, capture in table}
        recurrent = [c for n, c in captures.items() if "lstm" in n or "gru" in n or "bi" == n.split("/")[-1]]
        assert any(recurrent) and all(c.startswith("not captured") for c in recurrent if c), captures
    if case in ("bn_cnn_clipnorm", "bn_cnn_global_clipnorm"):
        # The clip factor (applied / produced norm) matches what Keras applies,
        # and the clipping is real (well below 1).
        assert result["clip_factor_min"] < 0.5 and result["clip_factor_error"] < 1e-4, result
    if case.startswith("keras_hub"):
        # The Transformer layers keep an `activation` they hand to their
        # inner Dense: the inner layer is captured, the outer row says it
        # delivers nothing (it used to claim "in-step" with NaN data).
        captures = {name: capture for name, _, capture in table}
        assert any(n.endswith("feedforward_intermediate_dense") and c == "in-step" for n, c in captures.items())
        assert all(c.startswith("not captured") for n, c in captures.items()
                   if n.split("/")[-1] in ("encoder", "decoder") or n.split("/")[-1].startswith("transformer_layer_")), captures
    if case == "built_on_first_call":
        # The first step created the weights; from the second on it is hooked.
        assert result["first_step"] == 2
    if case == "two_optimizers_gan":
        assert any("not captured" in w and "d_optimizer" in w for w in result["warnings"]), result["warnings"]


@pytest.mark.slow
@pytest.mark.parametrize("onednn, case", _pairs(SLOW_RUNS))
def test_slow_real_architecture(results, onednn, case):
    check(results(onednn, "slow")[case])


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    _main(sys.argv[1], sys.argv[2:])
