"""Overhead of GradFlow on training, as ratios against baselines measured in the same run.

    python benchmarks/bench_overhead.py              # ~8 minutes on 2 CPU cores
    python benchmarks/bench_overhead.py --quick      # smaller, for a smoke run

A 4 x 512 ReLU MLP on synthetic 784-d data (batch 256, Adam), with and
without XLA. Every configuration gets its own model (same seed, same data
order), and all of them train side by side in one process: round after
round, each runs one block of `--block` (100) steps, in a rotating order,
the way `fit` runs them (`on_train_batch_begin`, `model.train_function`,
`on_train_batch_end`, with GradFlow's callback methods called as `fit`
calls them). A block of 100 steps holds exactly one write step and one
activation sample at the default intervals, so a block's mean step time
includes everything the callback costs, amortized.

Why blocks and not whole fits: on a small shared machine, identical fits
differ by 10-20% (thread placement, frequency, neighbours); a few percent
drowns in that. Consecutive blocks of the same round see the same machine,
so each round gives one paired ratio per configuration, and the reported
ratio is the median of the paired ratios with a bootstrap 95% interval.
Keras' own loop overhead is left out of both sides, which makes the ratios
slightly larger than in `fit`, not smaller.

Separately built models of the same configuration still differ by a percent
or two (memory placement), which blurs ratios near 1. Two more figures split
the cost: `typical_step_ratio` (median step times; the in-between steps) and
`periodic_steps_ratio` (what the write, histogram and activation-sample
steps add to a typical step, amortized, measured within each model and so
free of that blur, relative to the baseline's; see `periodic_cost`). With activation
statistics, the in-between steps run the very function the gradient-only
configuration runs (tests/test_activation_stats.py checks it), so for
"defaults vs gradient-only" the periodic ratio is the whole difference.

Results are printed and written to benchmarks/results/overhead.json. Not a
test: the figures go to the README with the date and machine.
"""

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

# name -> GradFlow arguments (None: no callback).
CONFIGS = {
    "plain fit": None,
    "gradient-only (act 0)": {"activation_freq": 0},
    "defaults (update 100, hist 1000, act 100)": {},
    "update 10, hist 100, act 0": {"update_freq": 10, "histogram_freq": 100, "activation_freq": 0},
    "every step, no histograms, act 0": {"update_freq": 1, "histogram_freq": 0, "activation_freq": 0},
}
# (configuration, baseline) pairs reported.
COMPARISONS = [
    ("defaults (update 100, hist 1000, act 100)", "plain fit"),
    ("gradient-only (act 0)", "plain fit"),
    ("defaults (update 100, hist 1000, act 100)", "gradient-only (act 0)"),
    ("update 10, hist 100, act 0", "plain fit"),
    ("every step, no histograms, act 0", "plain fit"),
]


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


class Trainer:
    """One configuration: a model, its callback and its data iterator."""

    def __init__(self, hook, jit, dataset, logdir, warmup_batch):
        import tb_gradflow

        self.model = build(jit)
        x, y = warmup_batch
        self.model.fit(x, y, batch_size=len(x), verbose=0)  # builds the optimizer, like a resumed fit
        self.callback = None
        if hook is not None:
            self.callback = tb_gradflow.GradFlow(logdir, **hook)
            self.callback.set_model(self.model)
            self.callback.on_train_begin()
        self.model.make_train_function()
        self.iterator = iter(dataset)
        self.batch = 0

    def run(self, steps):
        """Seconds of each of `steps` train steps, run as `fit` runs them."""
        model, callback = self.model, self.callback
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            if callback is not None:
                callback.on_train_batch_begin(self.batch)
            logs = model.train_function(self.iterator)
            if callback is not None:
                callback.on_train_batch_end(self.batch, logs)
            times.append(time.perf_counter() - start)
            self.batch += 1
        start = time.perf_counter()
        float(logs["loss"])  # The last step has finished (it has: eager calls block).
        times[-1] += time.perf_counter() - start
        return times

    def steps_done(self):
        return int(self.model.optimizer.iterations.numpy())

    def close(self):
        if self.callback is not None:
            self.callback.on_train_end()


def paired_ratio(times, baseline, rng, resamples=2000):
    """Median of the per-round ratios, with a bootstrap 95% interval."""
    import numpy as np

    ratios = np.asarray(times) / np.asarray(baseline)
    medians = np.median(rng.choice(ratios, (resamples, ratios.size)), axis=1)
    return float(np.median(ratios)), float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def period(callback):
    """Steps between the callback's periodic (write, histogram, sample) steps; None without one."""
    if callback is None:
        return None
    return min(f for f in (callback.update_freq, callback.histogram_freq, callback.activation_freq) if f > 0)


def periodic_cost(blocks, every):
    """What the periodic steps add to the typical step, amortized per step, as a
    fraction of the typical step: per block, the excess of its steps that are
    multiples of `every` over the block's median step (blocks start on a
    multiple of 100), averaged over blocks. Measured within one model."""
    import numpy as np

    if every is None:
        return 0.0
    blocks = np.asarray(blocks)
    periodic = (np.arange(blocks.shape[1]) + 1) % every == 0
    excess = (blocks[:, periodic] - np.median(blocks, axis=1, keepdims=True)).sum(axis=1)
    return float(np.mean(excess) / blocks.shape[1] / np.median(blocks))


def measure(jit, rounds, block, dataset, warmup_batch, logdir):
    """({config name: [[seconds of each step] of each round]}, {config name: period})."""
    trainers = {
        name: Trainer(hook, jit, dataset, os.path.join(logdir, f"jit{int(jit)}", str(i)), warmup_batch)
        for i, (name, hook) in enumerate(CONFIGS.items())
    }
    # Warm-up: traces (both train functions where there are two), XLA
    # compiles, and aligns every model on a block boundary.
    for trainer in trainers.values():
        trainer.run(block - trainer.steps_done() % block + block)
    names = list(trainers)
    per_step = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            per_step[name].append(trainers[name].run(block))
    for trainer in trainers.values():
        trainer.close()
    return per_step, {name: period(trainer.callback) for name, trainer in trainers.items()}


def main():
    import numpy as np
    import tensorflow as tf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="3 rounds, without XLA")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    rng = np.random.default_rng(0)
    samples, batch = 12800, 256
    x = rng.normal(size=(samples, 784)).astype("float32")
    y = rng.integers(0, 10, samples)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).repeat().prefetch(2)
    rows = []
    with tempfile.TemporaryDirectory() as logdir:
        for jit in (False,) if args.quick else (False, True):
            per_step, periods = measure(jit, rounds, args.block, dataset, (x[:batch], y[:batch]), logdir)
            block_means = {name: [np.mean(b) for b in blocks] for name, blocks in per_step.items()}
            steps = {name: np.concatenate(blocks) for name, blocks in per_step.items()}
            periodic = {name: periodic_cost(per_step[name], periods[name]) for name in per_step}
            for config, baseline in COMPARISONS:
                ratio, low, high = paired_ratio(block_means[config], block_means[baseline], rng)
                row = {
                    "jit_compile": jit,
                    "config": config,
                    "baseline": baseline,
                    "baseline_ms_per_step": round(float(np.mean(steps[baseline])) * 1e3, 3),
                    "config_ms_per_step": round(float(np.mean(steps[config])) * 1e3, 3),
                    "ratio": round(ratio, 4),
                    "ratio_95ci": [round(low, 4), round(high, 4)],
                    "typical_step_ratio": round(float(np.median(steps[config]) / np.median(steps[baseline])), 4),
                    "periodic_steps_ratio": round((1 + periodic[config]) / (1 + periodic[baseline]), 4),
                }
                rows.append(row)
                print(f"jit={jit!s:5}  {config:42s} vs {baseline:22s} {row['config_ms_per_step']:7.2f} / "
                      f"{row['baseline_ms_per_step']:7.2f} ms/step  ratio {ratio:.3f} [{low:.3f}, {high:.3f}]  "
                      f"typical step {row['typical_step_ratio']:.3f}  periodic steps {row['periodic_steps_ratio']:.4f}",
                      flush=True)
    if args.quick:
        return
    RESULTS.mkdir(exist_ok=True)
    report = {
        "benchmark": "overhead",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "tensorflow": tf.__version__,
        "model": "4 x Dense(512, relu) + Dense(10), batch 256, Adam, 784-d synthetic inputs",
        "method": f"{rounds} rounds of one {args.block}-step block per configuration, rotating order. "
                  "ratio: median of the per-round paired ratios of block mean step times, bootstrap 95% "
                  "interval. typical_step_ratio: ratio of median step times. periodic_steps_ratio: "
                  "(1 + amortized excess of the configuration's periodic steps over its median step) / (the "
                  "same for the baseline), measured within each model (periodic_cost).",
        "rows": rows,
    }
    (RESULTS / "overhead.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
