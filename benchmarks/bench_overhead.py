"""Overhead of GradFlow on `fit`, as a ratio against plain `fit` measured in the same run.

    python benchmarks/bench_overhead.py              # ~3 minutes on 2 CPU cores
    python benchmarks/bench_overhead.py --quick      # smaller, for a smoke run

A 4 x 512 ReLU MLP on synthetic 784-d data (batch 256, Adam). Each
configuration and the baseline are trained in alternation, `--repeats` times,
on fresh models of the same seed; steady-state step time is the median over
batches after the first epoch (tracing and XLA compilation excluded). Results
are printed and written to benchmarks/results/overhead.json. Not a test: the
figures go to the README with the date and machine.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def build(jit, seed=0, width=512, depth=4):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((784,))]
        + [keras.layers.Dense(width, activation="relu") for _ in range(depth)]
        + [keras.layers.Dense(10)]
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


class StepTimer:
    def __init__(self, steps_per_epoch):
        import keras

        class _Timer(keras.callbacks.Callback):
            def on_train_begin(inner, logs=None):
                inner.times = []

            def on_train_batch_end(inner, batch, logs=None):
                inner.times.append(time.perf_counter())

        self.callback = _Timer()
        self.steps_per_epoch = steps_per_epoch

    def steady_step_seconds(self):
        times = self.callback.times[self.steps_per_epoch :]
        return statistics.median(b - a for a, b in zip(times, times[1:]))


def time_fit(config, x, y, epochs, batch, logdir):
    import tb_gradflow

    model = build(config["jit"])
    steps = len(x) // batch
    timer = StepTimer(steps)
    callbacks = [timer.callback]
    if config["hook"] is not None:
        callbacks.insert(0, tb_gradflow.GradFlow(os.path.join(logdir, config["name"]), **config["hook"]))
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=callbacks, shuffle=False)
    return timer.steady_step_seconds()


# Each row times `hook` against `baseline` (None: plain fit, no callback).
GRADIENT_ONLY = {"activation_freq": 0}
CONFIGS = [
    {"name": "defaults (update 100, hist 1000, act 100)", "hook": {}, "baseline": None},
    {"name": "gradient-only (act 0)", "hook": GRADIENT_ONLY, "baseline": None},
    {"name": "act 100 vs gradient-only", "hook": {}, "baseline": GRADIENT_ONLY},
    {"name": "update 10, hist 100, act 0", "hook": {"update_freq": 10, "histogram_freq": 100, "activation_freq": 0},
     "baseline": None},
    {"name": "every step, no histograms, act 0", "hook": {"update_freq": 1, "histogram_freq": 0, "activation_freq": 0},
     "baseline": None},
]


def main():
    import numpy as np
    import tensorflow as tf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    samples, epochs, batch = (4096, 2, 256) if args.quick else (12800, 3, 256)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, 784)).astype("float32")
    y = rng.integers(0, 10, samples)
    rows = []
    with tempfile.TemporaryDirectory() as logdir:
        for jit in (False, True):
            for config in CONFIGS:
                baseline, hooked = [], []
                for _ in range(args.repeats):
                    baseline.append(
                        time_fit({"jit": jit, "hook": config["baseline"], "name": "base"}, x, y, epochs, batch, logdir)
                    )
                    hooked.append(time_fit({"jit": jit, **config}, x, y, epochs, batch, logdir))
                base_ms = statistics.median(baseline) * 1e3
                hook_ms = statistics.median(hooked) * 1e3
                rows.append({"jit_compile": jit, "config": config["name"],
                             "baseline": "plain fit" if config["baseline"] is None else f"GradFlow({config['baseline']})",
                             "baseline_ms_per_step": round(base_ms, 3),
                             "hooked_ms_per_step": round(hook_ms, 3), "ratio": round(hook_ms / base_ms, 3)})
                print(f"jit={jit!s:5}  {config['name']:42s} baseline {base_ms:7.2f} ms/step  "
                      f"hooked {hook_ms:7.2f} ms/step  ratio {hook_ms / base_ms:.3f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    report = {
        "benchmark": "overhead",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "tensorflow": tf.__version__,
        "model": "4 x Dense(512, relu) + Dense(10), batch 256, Adam, 784-d synthetic inputs",
        "repeats": args.repeats,
        "rows": rows,
    }
    (RESULTS / "overhead.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
