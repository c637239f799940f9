"""Seed 003's comparison of activation functions, with tb_gradflow's saturation view.

    pip install 'tb_gradflow[examples]'          # scikit-learn, for its bundled digits
    python examples/seed003_activations.py --logdir logs/seed003
    tensorboard --logdir logs/seed003            # "Gradient Flow" tab: gradient and saturation heatmaps
    tb-gradflow check logs/seed003               # saturation / dead-unit / vanishing alerts per run

Seed 003 trains a 512-256-256-128 MLP with six activation functions (sigmoid,
tanh, relu, leaky relu, elu, swish) and compares their gradients; seed 000
adds custom activations: exp(-x^2) ("gaussian", which squashes its
derivative) and 1.5 x swish ("scaled_swish"). Here: scikit-learn's bundled
8x8 digits (64-d inputs scaled to [0, 1], 10 classes; the data ships with the
package, nothing is downloaded), Keras' default Glorot init, SGD with
momentum, one run per activation into `logdir/<activation>`.
"""

import argparse
import os

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "swish", "gaussian", "scaled_swish")
HIDDEN = (512, 256, 256, 128)


def gaussian(x):
    """Seed 000's custom activation: its derivative vanishes on both sides."""
    import keras

    return keras.ops.exp(-keras.ops.square(x))


def scaled_swish(x):
    """Seed 000's 'improved' custom activation: 1.5 * x * sigmoid(x)."""
    import keras

    return 1.5 * (x * keras.ops.sigmoid(x))


def activation_function(name):
    return {"gaussian": gaussian, "scaled_swish": scaled_swish}.get(name, name)


def load_digits():
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = (digits.data / 16.0).astype("float32")
    return x, digits.target.astype("int64")


def make_mlp(activation, name):
    import keras

    return keras.Sequential(
        [keras.Input((64,), name=f"{name}_in")]
        + [keras.layers.Dense(units, activation=activation_function(activation), name=f"{name}{i + 1}")
           for i, units in enumerate(HIDDEN)]
        + [keras.layers.Dense(10, name=f"{name}_out")],
        name=name,
    )


def train(logdir, activations=ACTIVATIONS, epochs=5, batch_size=64, update_freq=10, activation_freq=10,
          histogram_freq=0, seed=42):
    """Trains one run per activation into `logdir/<activation>`; returns {activation: accuracy}."""
    import keras

    import tb_gradflow

    x, y = load_digits()
    accuracy = {}
    for activation in activations:
        keras.utils.set_random_seed(seed)
        model = make_mlp(activation, activation)
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(
            x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True,
            callbacks=[tb_gradflow.GradFlow(os.path.join(logdir, activation), update_freq=update_freq,
                                            activation_freq=activation_freq, histogram_freq=histogram_freq)],
        )
        accuracy[activation] = float(model.evaluate(x, y, verbose=0)[1])
    return accuracy


def summary(logdir, activations=ACTIVATIONS):
    """{activation: {statistic: mean over steps and layers}} read back from the events."""
    import numpy as np

    from tb_gradflow.reader import Reader

    reader = Reader.for_logdir(logdir)
    out = {}
    for activation in activations:
        run = f"{activation}/train"
        row = {}
        for statistic in ("saturated_fraction", "dead_fraction", "activation_mean"):
            row[statistic] = float(np.nanmean(reader.activation_series(run, statistic).values))
        row["first_layer_saturated"] = float(np.nanmean(reader.activation_series(run, "saturated_fraction").values[:, 0]))
        row["alerts"] = sorted({f"{a.kind}:{a.layer.split('/')[-1]}" for a in reader.alerts(run)})
        out[activation] = row
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="logs/seed003")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    accuracy = train(args.logdir, epochs=args.epochs)
    for activation, row in summary(args.logdir).items():
        print(f"{activation:13s} accuracy {accuracy[activation]:.3f}  saturated {row['saturated_fraction']:.3f}  "
              f"dead {row['dead_fraction']:.3f}  mean activation {row['activation_mean']:+.3f}  "
              f"alerts {', '.join(row['alerts']) or '-'}")


if __name__ == "__main__":
    main()
