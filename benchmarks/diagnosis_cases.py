"""The diagnosis benchmark's cases: training configurations with a known diagnosis.

    >>> import diagnosis_cases                         # doctest: +SKIP
    >>> case = diagnosis_cases.CASES["sigmoid_depth"]  # doctest: +SKIP
    >>> case.expected, case.family                     # doctest: +SKIP
    ('vanishing', 'sick')

Each case builds a small model, generated data (nothing is downloaded) and an
optimizer, and trains about 100 steps at GradFlow's defaults. Its expected
diagnosis is a design intent ("healthy", or the alert kind a user should
get); the benchmark confirms it with an independent reference before
scoring (`reference_label`): the loss on a fixed probe batch, a plain
`GradientTape` on that batch, and the activation derivative on probe
inputs, never tb_gradflow's statistics or rules. A case whose reference
disagrees with its intent is reported and left out of the score.

`fast` cases train in seconds; tests/test_diagnosis.py runs them in CI.
"""

import dataclasses

import numpy as np

STEPS = 100


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    expected: str  # "healthy" or a rules kind
    family: str  # "healthy" or "sick"
    build: object  # () -> (model, x, y, batch_size, extra callbacks)
    fast: bool = True
    # Layer names the reference inspects (activation probes), when it needs them.
    probe_layer: str = ""
    note: str = ""


def _keras():
    import keras

    return keras


def _teacher(n, d, classes, seed, scale=1.0):
    """Inputs ~ N(0, scale²) and labels from a random linear teacher: learnable."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, d)).astype("float32")
    w = rng.normal(0.0, 1.0, (d, classes)).astype("float32")
    y = np.argmax(x @ w, axis=1).astype("int32")
    return x * scale, y


def _images(n, classes, seed, size=32):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, size, size, 3)).astype("float32")
    w = rng.normal(0.0, 1.0, (3, classes)).astype("float32")
    # The label depends on the mean colour of the centre: learnable by a CNN.
    centre = x[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4].mean(axis=(1, 2))
    return x, np.argmax(centre @ w, axis=1).astype("int32")


def _sequences(n, length, d, classes, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, length, d)).astype("float32")
    w = rng.normal(0.0, 1.0, (d, classes)).astype("float32")
    return x, np.argmax(x.mean(axis=1) @ w, axis=1).astype("int32")


def _tokens(n, length, vocab, classes, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab, (n, length)).astype("int32")
    table = rng.integers(0, classes, vocab)
    # The label is the class most tokens of the sequence map to.
    votes = np.stack([np.bincount(table[row], minlength=classes) for row in x])
    return x, np.argmax(votes, axis=1).astype("int32")


def _compile(model, optimizer="adam", learning_rate=1e-3):
    keras = _keras()
    optimizers = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
    model.compile(
        optimizer=optimizers[optimizer](learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _mlp(widths, activation, initializer="glorot_uniform", d=32, classes=10, name="mlp", prefix="dense"):
    keras = _keras()
    inputs = keras.Input((d,))
    h = inputs
    for i, width in enumerate(widths):
        h = keras.layers.Dense(width, activation=activation, kernel_initializer=initializer, name=f"{prefix}_{i}")(h)
    outputs = keras.layers.Dense(classes, name="logits")(h)
    return keras.Model(inputs, outputs, name=name)


# ------------------------------------------------------------------ healthy
def he_relu_mlp():
    x, y = _teacher(1600, 32, 10, 1)
    return _compile(_mlp([128] * 4, "relu", "he_normal")), x, y, 16, []


def glorot_tanh_mlp():
    x, y = _teacher(1600, 32, 10, 2)
    return _compile(_mlp([128] * 4, "tanh", "glorot_uniform"), "sgd", 0.05), x, y, 16, []


def seed001_relu():
    """Seed 001's healthy twin: the sigmoid net's architecture with ReLU."""
    x, y = _teacher(1600, 32, 10, 3)
    return _compile(_mlp([64] * 4, "relu", "glorot_uniform")), x, y, 16, []


def bn_cnn():
    keras = _keras()
    L = keras.layers
    inputs = keras.Input((16, 16, 3))
    h = inputs
    for i, filters in enumerate((16, 32, 32)):
        h = L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv_{i}")(h)
        h = L.BatchNormalization(name=f"bn_{i}")(h)
        h = L.ReLU(name=f"relu_{i}")(h)
        if i < 2:
            h = L.MaxPooling2D(name=f"pool_{i}")(h)
    h = L.GlobalAveragePooling2D()(h)
    outputs = L.Dense(4, name="logits")(h)
    x, y = _images(1600, 4, 4, size=16)
    return _compile(keras.Model(inputs, outputs, name="bn_cnn")), x, y, 16, []


def layernorm_mlp():
    keras = _keras()
    L = keras.layers
    inputs = keras.Input((32,))
    h = inputs
    for i in range(4):
        h = L.Dense(64, name=f"dense_{i}")(h)
        h = L.LayerNormalization(name=f"ln_{i}")(h)
        h = L.Activation("gelu", name=f"gelu_{i}")(h)
    outputs = L.Dense(10, name="logits")(h)
    x, y = _teacher(1600, 32, 10, 5)
    return _compile(keras.Model(inputs, outputs, name="layernorm_mlp")), x, y, 16, []


def zero_init_residual_mlp():
    """Residual branches whose last layer starts at zero (Goyal et al. 2017's zero-γ idea)."""
    keras = _keras()
    L = keras.layers
    inputs = keras.Input((32,))
    h = L.Dense(64, activation="relu", name="stem")(inputs)
    for i in range(4):
        branch = L.Dense(64, activation="relu", name=f"block{i}_a")(h)
        branch = L.Dense(64, kernel_initializer="zeros", name=f"block{i}_b")(branch)
        h = L.Add(name=f"block{i}_add")([h, branch])
    outputs = L.Dense(10, name="logits")(h)
    x, y = _teacher(1600, 32, 10, 6)
    return _compile(keras.Model(inputs, outputs, name="zero_init_residual")), x, y, 16, []


def layerscale_residual():
    """ConvNeXt's LayerScale: residual branches scaled by a learned γ that starts at 1e-6."""
    keras = _keras()
    L = keras.layers

    class Scale(L.Layer):
        def build(self, shape):
            self.gamma = self.add_weight(shape=(shape[-1],), initializer=keras.initializers.Constant(1e-6),
                                         name="gamma")

        def call(self, x):
            return x * self.gamma

    inputs = keras.Input((32,))
    h = L.Dense(64, name="stem")(inputs)
    for i in range(4):
        branch = L.LayerNormalization(name=f"block{i}_ln")(h)
        branch = L.Dense(128, activation="gelu", name=f"block{i}_up")(branch)
        branch = L.Dense(64, name=f"block{i}_down")(branch)
        branch = Scale(name=f"block{i}_scale")(branch)
        h = L.Add(name=f"block{i}_add")([h, branch])
    outputs = L.Dense(10, name="logits")(h)
    x, y = _teacher(1600, 32, 10, 7)
    return _compile(keras.Model(inputs, outputs, name="layerscale_residual"), "adam", 2e-3), x, y, 16, []


def squeeze_excite_cnn():
    keras = _keras()
    L = keras.layers
    inputs = keras.Input((16, 16, 3))
    h = inputs
    for i, filters in enumerate((16, 32)):
        h = L.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv_{i}")(h)
        se = L.GlobalAveragePooling2D(keepdims=True, name=f"se{i}_pool")(h)
        se = L.Conv2D(max(filters // 8, 2), 1, activation="relu", name=f"se{i}_reduce")(se)
        se = L.Conv2D(filters, 1, activation="sigmoid", name=f"se{i}_expand")(se)
        h = L.Multiply(name=f"se{i}_scale")([h, se])
        h = L.MaxPooling2D(name=f"pool_{i}")(h)
    h = L.GlobalAveragePooling2D()(h)
    outputs = L.Dense(4, name="logits")(h)
    x, y = _images(1600, 4, 8, size=16)
    return _compile(keras.Model(inputs, outputs, name="se_cnn")), x, y, 16, []


def attention_block():
    keras = _keras()
    L = keras.layers
    tokens = keras.Input((12,), dtype="int32")
    h = L.Embedding(40, 32, name="embed")(tokens)
    attended = L.MultiHeadAttention(4, 8, name="mha")(h, h)
    h = L.LayerNormalization(name="ln_1")(L.Add()([h, attended]))
    ffn = L.Dense(64, activation="gelu", name="ffn_up")(h)
    ffn = L.Dense(32, name="ffn_down")(ffn)
    h = L.LayerNormalization(name="ln_2")(L.Add()([h, ffn]))
    outputs = L.Dense(4, name="logits")(L.GlobalAveragePooling1D()(h))
    x, y = _tokens(1600, 12, 40, 4, 9)
    return _compile(keras.Model(tokens, outputs, name="attention")), x, y, 16, []


def lstm():
    keras = _keras()
    L = keras.layers
    inputs = keras.Input((10, 8))
    h = L.LSTM(32, name="lstm")(inputs)
    outputs = L.Dense(4, name="logits")(h)
    x, y = _sequences(1600, 10, 8, 4, 10)
    return _compile(keras.Model(inputs, outputs, name="lstm"), "adam", 3e-3), x, y, 16, []


def gru():
    keras = _keras()
    L = keras.layers
    inputs = keras.Input((10, 8))
    h = L.GRU(32, return_sequences=True, name="gru_a")(inputs)
    h = L.GRU(32, name="gru_b")(h)
    outputs = L.Dense(4, name="logits")(h)
    x, y = _sequences(1600, 10, 8, 4, 11)
    return _compile(keras.Model(inputs, outputs, name="gru"), "adam", 3e-3), x, y, 16, []


def embedding_bag():
    keras = _keras()
    L = keras.layers
    tokens = keras.Input((12,), dtype="int32")
    h = L.Embedding(40, 16, name="embed")(tokens)
    h = L.GlobalAveragePooling1D()(h)
    h = L.Dense(32, activation="relu", name="hidden")(h)
    outputs = L.Dense(4, name="logits")(h)
    x, y = _tokens(1600, 12, 40, 4, 12)
    return _compile(keras.Model(tokens, outputs, name="embedding_bag"), "adam", 3e-3), x, y, 16, []


def _application(name, **kwargs):
    def build():
        keras = _keras()
        model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=4,
                                                  classifier_activation=None, **kwargs)
        x, y = _images(800, 4, 13)
        return _compile(model), x, y, 8, []

    build.__name__ = name.lower()
    return build


# ------------------------------------------------------------------ sick
def sigmoid_depth():
    """Nielsen ch. 5 / seed 001: a deep sigmoid net under SGD."""
    x, y = _teacher(1600, 32, 10, 20)
    return _compile(_mlp([64] * 8, "sigmoid", "glorot_uniform"), "sgd", 0.1), x, y, 16, []


def init_scale():
    """tanh with weights drawn 10x too small: the backward signal shrinks ~10x per layer."""
    keras = _keras()
    init = keras.initializers.RandomNormal(stddev=0.01)
    x, y = _teacher(1600, 32, 10, 21)
    return _compile(_mlp([64] * 6, "tanh", init), "sgd", 0.05), x, y, 16, []


def squashing_activation():
    """A custom activation whose derivative never exceeds 0.25 (0.25·tanh): vanishing by construction."""
    keras = _keras()

    def squash(z):
        return 0.25 * keras.ops.tanh(z)

    x, y = _teacher(1600, 32, 10, 22)
    return _compile(_mlp([64] * 8, squash, "glorot_uniform"), "sgd", 0.1), x, y, 16, []


def exploding_nan():
    """A learning rate far too high without normalisation: the weights and then the loss overflow."""
    x, y = _teacher(1600, 32, 10, 23)
    return _compile(_mlp([128] * 4, "relu", "he_normal"), "sgd", 50.0), x, y, 16, []


def dead_relu():
    """One step at a learning rate 3000x too high (30 instead of 0.01): most
    units of the deeper ReLU layers never fire again (CS231n's dead ReLUs)."""
    keras = _keras()

    class Burst(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.model.optimizer.learning_rate.assign(30.0 if batch == 0 else 0.01)

    x, y = _teacher(1600, 32, 10, 24)
    return _compile(_mlp([128] * 3, "relu", "he_normal"), "sgd", 0.01), x, y, 16, [Burst()]


def saturating_inputs():
    """Unscaled inputs (x 100) into tanh units: most of them sit on the flat tails."""
    x, y = _teacher(1600, 32, 10, 25, scale=100.0)
    return _compile(_mlp([64] * 3, "tanh", "glorot_uniform"), "sgd", 0.01), x, y, 16, []


def detached_layer():
    """A layer cut off from the loss by mistake (a stop_gradient left in a refactor)."""
    keras = _keras()
    L = keras.layers
    inputs = keras.Input((32,))
    h = L.Dense(64, activation="relu", name="dense_0")(inputs)
    h = L.Lambda(lambda t: keras.ops.stop_gradient(t), name="detach")(h)
    h = L.Dense(64, activation="relu", name="dense_1")(h)
    outputs = L.Dense(10, name="logits")(h)
    x, y = _teacher(1600, 32, 10, 26)
    return _compile(keras.Model(inputs, outputs, name="detached")), x, y, 16, []


def learning_rate_spike():
    """A schedule bug: the learning rate jumps 1000x at step 31 and the gradients blow up."""
    keras = _keras()

    class Spike(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 30:
                self.model.optimizer.learning_rate.assign(20.0)

    x, y = _teacher(1600, 32, 10, 27)
    return _compile(_mlp([64] * 4, "tanh", "glorot_uniform"), "sgd", 0.02), x, y, 16, [Spike()]


def _case(build, expected, fast=True, probe_layer="", note=""):
    family = "healthy" if expected == "healthy" else "sick"
    return Case(build.__name__, expected, family, build, fast, probe_layer, note)


CASES = {
    case.name: case
    for case in [
        _case(he_relu_mlp, "healthy"),
        _case(glorot_tanh_mlp, "healthy"),
        _case(seed001_relu, "healthy"),
        _case(bn_cnn, "healthy"),
        _case(layernorm_mlp, "healthy"),
        _case(zero_init_residual_mlp, "healthy"),
        _case(layerscale_residual, "healthy"),
        _case(squeeze_excite_cnn, "healthy"),
        _case(attention_block, "healthy"),
        _case(lstm, "healthy"),
        _case(gru, "healthy"),
        _case(embedding_bag, "healthy"),
        _case(_application("ResNet50V2"), "healthy", fast=False),
        _case(_application("EfficientNetB0"), "healthy", fast=False),
        _case(_application("DenseNet121"), "healthy", fast=False),
        _case(_application("ConvNeXtTiny"), "healthy", fast=False),
        _case(_application("MobileNetV3Small"), "healthy", fast=False),
        _case(sigmoid_depth, "vanishing"),
        _case(init_scale, "vanishing"),
        _case(squashing_activation, "vanishing"),
        _case(detached_layer, "vanishing", note="the detached layer receives no gradient"),
        _case(exploding_nan, "nonfinite"),
        _case(learning_rate_spike, "exploding"),
        _case(dead_relu, "dead_units", probe_layer="dense_2"),
        _case(saturating_inputs, "saturation", probe_layer="dense_0"),
    ]
}
