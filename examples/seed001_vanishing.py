"""Seed 001's experiment with tb_gradflow: vanishing gradients in a sigmoid MLP.

    python examples/seed001_vanishing.py --logdir logs/seed001
    tensorboard --logdir logs/seed001        # "Gradient Flow" tab
    tb-gradflow check logs/seed001           # exits 1: the sigmoid run vanishes

Two-circles data (made with numpy, as scikit-learn's make_circles does), the
tutorial's 5-layer MLP (4 hidden Dense(5) + Dense(1, sigmoid)) initialised with
RandomNormal(0, 1), trained with RMSprop, one run per hidden activation. The
only change to the tutorial's training code is `callbacks=[GradFlow(...)]`.
"""

import argparse
import os

import numpy as np

ACTIVATIONS = ("sigmoid", "tanh", "relu")


def make_circles(n_samples=1000, factor=0.5, noise=0.1, seed=42):
    """Two concentric noisy circles, label 1 for the inner one (numpy only)."""
    rng = np.random.default_rng(seed)
    n_outer = n_samples // 2
    n_inner = n_samples - n_outer
    angles = np.concatenate([np.linspace(0, 2 * np.pi, n_outer, endpoint=False),
                             np.linspace(0, 2 * np.pi, n_inner, endpoint=False)])
    radius = np.concatenate([np.ones(n_outer), np.full(n_inner, factor)])
    x = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
    x += rng.normal(0.0, noise, x.shape)
    y = np.concatenate([np.zeros(n_outer), np.ones(n_inner)])
    order = rng.permutation(n_samples)
    return x[order].astype("float32"), y[order].astype("float32")


def make_mlp(activation, name):
    """The tutorial's make_mlp: 4 hidden layers of 5 units, RandomNormal(0, 1)."""
    import keras

    initializer = keras.initializers.RandomNormal(mean=0.0, stddev=1.0)
    return keras.Sequential(
        [keras.Input(shape=(2,), name=f"{name}0")]
        + [keras.layers.Dense(5, activation=activation, kernel_initializer=initializer, name=f"{name}{i}")
           for i in range(1, 5)]
        + [keras.layers.Dense(1, activation="sigmoid", kernel_initializer=initializer, name=f"{name}5")],
        name=name,
    )


def train(logdir, activations=ACTIVATIONS, epochs=100, update_freq=10, histogram_freq=100, seed=42):
    """Trains one run per activation into `logdir/<activation>`; returns {activation: accuracy}."""
    import keras

    import tb_gradflow

    x, y = make_circles(seed=seed)
    accuracy = {}
    for activation in activations:
        keras.utils.set_random_seed(seed)
        model = make_mlp(activation, activation)
        model.compile(optimizer="rmsprop", loss="binary_crossentropy", metrics=["acc"])
        model.fit(
            x, y, batch_size=32, epochs=epochs, verbose=0,
            callbacks=[tb_gradflow.GradFlow(os.path.join(logdir, activation),
                                            update_freq=update_freq, histogram_freq=histogram_freq)],
        )
        accuracy[activation] = float(model.evaluate(x, y, verbose=0)[1])
    return accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="logs/seed001")
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    for activation, acc in train(args.logdir, epochs=args.epochs).items():
        print(f"{activation:8s} accuracy {acc:.3f}  -> {os.path.join(args.logdir, activation)}")


if __name__ == "__main__":
    main()
