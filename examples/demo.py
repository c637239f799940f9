"""The demo behind the README's first command: train the seed experiments into one logdir.

    python examples/demo.py --logdir logs/demo
    tensorboard --logdir logs/demo      # then open the "Gradient Flow" tab

Runs: seed001/{sigmoid,tanh,relu}/train (seed 001's 5-layer MLP, vanishing
gradients with sigmoid) and seed003/<activation>/train (seed 003's
512-256-256-128 MLP on scikit-learn's digits with eight activations:
saturation and dead units). Then prints what `tb-gradflow check` says.
"""

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import seed001_vanishing  # noqa: E402
import seed003_activations  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="logs/demo")
    parser.add_argument("--epochs", type=int, default=100, help="epochs of seed 001's runs")
    parser.add_argument("--seed003-epochs", type=int, default=5, help="epochs of seed 003's runs")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    accuracy = seed001_vanishing.train(os.path.join(args.logdir, "seed001"), epochs=args.epochs)
    for activation, acc in accuracy.items():
        print(f"seed001/{activation}: accuracy {acc:.3f}")
    accuracy = seed003_activations.train(os.path.join(args.logdir, "seed003"), epochs=args.seed003_epochs)
    for activation, acc in accuracy.items():
        print(f"seed003/{activation}: accuracy {acc:.3f}")

    from tb_gradflow import cli

    print(f"\n$ tb-gradflow check {args.logdir}")
    cli.main(["check", args.logdir])
    print(f"\nNow: tensorboard --logdir {args.logdir}  (Gradient Flow tab)")


if __name__ == "__main__":
    main()
