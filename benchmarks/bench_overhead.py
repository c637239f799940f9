"""Overhead of GradFlow on training, as ratios against plain `fit` measured in the same run.

    python benchmarks/bench_overhead.py                      # every model, with and without XLA
    python benchmarks/bench_overhead.py --json               # the same, the report as JSON on stdout
    python benchmarks/bench_overhead.py --models mlp50 --no-xla --rounds 3
    python benchmarks/bench_overhead.py --memory --models mlp500   # peak host memory, one process per configuration
    python benchmarks/bench_overhead.py --tiny               # seconds; what tests/test_bench_overhead.py runs

Models are what users train (`MODELS`): seed 003's MLP, keras.applications
MobileNetV3Small and ResNet50V2 at 64 x 64 inputs, a Transformer encoder
block, a 50-layer narrow MLP (and, for `--memory`, a 500-layer one). Every
configuration (`CONFIGS`: plain fit, GradFlow's defaults and variants, and
the peers: Keras' own `TensorBoard(histogram_freq=1)` and the seeds' way, an
extra GradientTape pass on a probe batch with numpy on the host) gets its own
model (same seed, same data), and all of them train side by side in one
process.

Method, per model and XLA setting:

- start-up: each model first trains one batch with `fit` (builds the
  optimizer, as a resumed run has it), then its step counter jumps to 10,000
  (a multiple of every interval, past the dense start, so the blocks see the
  steady state). `startup_ratio` is the callback's `on_train_begin` (the
  activation probes) plus the first execution (every trace and compile it
  triggers, and the step) over plain fit's first execution
  (`on_train_begin_s` is the first part; reports up to commit f1cf045
  left it out); `startup_block_ratio` is the whole
  first block's excess over its steady-state steps (so a trace that happens
  at the second execution counts too), with `on_train_begin`, over plain
  fit's.
- steady state: round after round, each configuration runs one block of
  `--block` (100) steps, in rotating order, the way `fit` runs them
  (`on_train_batch_begin`, `model.train_function`, `on_train_batch_end`; a
  block is an epoch, so epoch-end work such as Keras' histograms counts). A
  block holds exactly one row at the default `update_freq`, so its mean step
  time includes everything the callback costs, amortized. Consecutive blocks
  of a round see the same machine; `ratio` is the median of the per-round
  paired ratios of block means, with a bootstrap 95% interval.
  Each configuration has a model object of its own, and on this VM the
  ratio moves by ~5% with the object, not the code (MobileNetV3Small's
  defaults read 0.81x in two runs; see `bench_paired.py`): configurations
  within a few percent of plain fit, the defaults above all, are measured
  on one model object by `bench_paired.py`.
- bytes: event-file bytes the configuration wrote during the blocks, per
  logged row.
- `--memory`: one subprocess per configuration, which builds the model,
  trains `--memory-steps` steps with that configuration from step 0 and
  reports its peak resident memory (ru_maxrss); the ratio is against the
  plain-fit subprocess.

Not a test: the figures go to the README with the date and machine;
benchmarks/results/overhead.json keeps the last full report.
"""

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
JUMP_TO_STEP = 10_000

# name -> ("gradflow", GradFlow arguments) | ("keras_tensorboard", arguments) | ("tape", every) | None (plain fit).
CONFIGS = {
    "plain fit": None,
    "defaults": ("gradflow", {}),
    "gradient statistics only": ("gradflow", {"activation_freq": 0, "histogram_freq": 0}),
    "every statistic every step": ("gradflow", {"update_freq": 1, "histogram_freq": 1, "activation_freq": 1}),
    "histograms every step": ("gradflow", {"update_freq": 1, "histogram_freq": 1, "activation_freq": 0}),
    # The issue's 500-layer memory case (15.9 GB before it was stopped).
    "every statistic every 10 steps": ("gradflow", {"update_freq": 10, "histogram_freq": 10, "activation_freq": 10}),
    "peer: keras TensorBoard(histogram_freq=1)": ("keras_tensorboard", {"histogram_freq": 1}),
    "peer: seeds' GradientTape every step": ("tape", 1),
    "peer: seeds' GradientTape every 10 steps": ("tape", 10),
}
# What a run without --configs measures: issue 10's configurations and peers.
ISSUE_CONFIGS = list(CONFIGS)
# "every statistic every step" in parts, for `bench_paired.py --split`: which
# family of statistics spends a 1.25x budget. A row every step has the
# gradient moments at least; the update ratio, histograms and activation
# statistics come on top. In CONFIGS, not in the default run.
EVERY_STEP_PARTS = {
    "gradient moments every step": ("gradflow", {"update_freq": 1, "histogram_freq": 0, "activation_freq": 0,
                                                 "update_ratio": False}),
    "gradient statistics every step": ("gradflow", {"update_freq": 1, "histogram_freq": 0, "activation_freq": 0}),
    "activation statistics every step": ("gradflow", {"update_freq": 1, "histogram_freq": 0, "activation_freq": 1,
                                                      "update_ratio": False}),
}
CONFIGS.update(EVERY_STEP_PARTS)
TINY_CONFIGS = ["plain fit", "defaults", "every statistic every step", "peer: seeds' GradientTape every 10 steps"]


# ------------------------------------------------------------------ models
def _mlp(widths, inputs):
    import keras

    return keras.Sequential(
        [keras.Input((inputs,))] + [keras.layers.Dense(w, activation="relu") for w in widths] + [keras.layers.Dense(10)]
    )


def _transformer_block(length=64, vocabulary=1000, dim=128, heads=4):
    import keras

    tokens = keras.Input((length,), dtype="int32")
    x = keras.layers.Embedding(vocabulary, dim)(tokens)
    attended = keras.layers.MultiHeadAttention(heads, dim // heads)(x, x)
    x = keras.layers.LayerNormalization()(x + attended)
    hidden = keras.layers.Dense(4 * dim, activation="gelu")(x)
    x = keras.layers.LayerNormalization()(x + keras.layers.Dense(dim)(hidden))
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, keras.layers.Dense(10)(x))


def _application(name):
    def build():
        import keras

        return getattr(keras.applications, name)(
            input_shape=(64, 64, 3), weights=None, classes=10, classifier_activation=None
        )

    return build


def _images(rng, n):
    return rng.uniform(0, 255, size=(n, 64, 64, 3)).astype("float32")


# name -> (builder, batch size, inputs(rng, n), description)
MODELS = {
    "seed003_mlp": (lambda: _mlp([512, 256, 256, 128], 784), 256,
                    lambda rng, n: rng.normal(size=(n, 784)).astype("float32"),
                    "seed 003's MLP 784-512-256-256-128-10 (ReLU), batch 256, Adam"),
    "mobilenetv3small": (_application("MobileNetV3Small"), 8, _images,
                         "keras.applications.MobileNetV3Small(weights=None), 64x64x3, batch 8, Adam"),
    "resnet50v2": (_application("ResNet50V2"), 8, _images,
                   "keras.applications.ResNet50V2(weights=None), 64x64x3, batch 8, Adam"),
    "transformer_block": (_transformer_block, 32, lambda rng, n: rng.integers(0, 1000, size=(n, 64)).astype("int32"),
                          "Transformer encoder block (embedding 128, 4-head attention, GELU FFN 512, LayerNorm), "
                          "64 tokens, batch 32, Adam"),
    "mlp50": (lambda: _mlp([64] * 50, 32), 64, lambda rng, n: rng.normal(size=(n, 32)).astype("float32"),
              "50 x Dense(64, relu), batch 64, Adam"),
    "mlp500": (lambda: _mlp([4] * 500, 32), 64, lambda rng, n: rng.normal(size=(n, 32)).astype("float32"),
               "500 x Dense(4, relu), batch 64, Adam"),
    "tiny": (lambda: _mlp([16, 16], 8), 16, lambda rng, n: rng.normal(size=(n, 8)).astype("float32"),
             "2 x Dense(16) (harness smoke test)"),
}
DEFAULT_MODELS = ["seed003_mlp", "mobilenetv3small", "resnet50v2", "transformer_block", "mlp50"]


def build(model_name, jit, metrics=None):
    import keras

    keras.utils.set_random_seed(0)
    model = MODELS[model_name][0]()
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=metrics,
        jit_compile=jit,
    )
    return model


def dataset(model_name, samples=None):
    """(tf.data.Dataset repeating forever, (x, y) of one batch)."""
    import numpy as np
    import tensorflow as tf

    _, batch, inputs, _ = MODELS[model_name]
    rng = np.random.default_rng(0)
    samples = samples or batch * 16
    x = inputs(rng, samples)
    y = rng.integers(0, 10, samples)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).repeat().prefetch(2)
    return data, (x[:batch], y[:batch])


# --------------------------------------------------------------- callbacks
def _tape_probe(x, y, every):
    """The seeds' way: every `every` steps an extra forward and backward pass on
    a probe batch under a GradientTape, per-layer norms with numpy on the host."""
    import keras
    import numpy as np
    import tensorflow as tf

    class TapeProbe(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.norms = []

        def on_train_batch_end(self, batch, logs=None):
            if (batch + 1) % every:
                return
            with tf.GradientTape() as tape:
                loss = self.model.loss(y, self.model(x, training=True))
            grads = tape.gradient(loss, self.model.trainable_weights)
            self.norms.append([float(np.linalg.norm(g.numpy())) for g in grads if g is not None])

    return TapeProbe()


def make_callback(config, logdir, probe):
    import keras

    import tb_gradflow

    spec = CONFIGS[config]
    if spec is None:
        return None
    kind, arguments = spec
    if kind == "gradflow":
        return tb_gradflow.GradFlow(logdir, **arguments)
    if kind == "keras_tensorboard":
        return keras.callbacks.TensorBoard(logdir, **arguments)
    return _tape_probe(*probe, arguments)


def rows_written(config, first_step, last_step):
    """Rows GradFlow wrote for steps (first_step, last_step]; epochs for Keras' callback."""
    from tb_gradflow import schedule

    spec = CONFIGS[config]
    if spec is None or spec[0] == "tape":
        return 0
    if spec[0] == "keras_tensorboard":
        return None  # counted by the caller, per block (epoch)
    update_freq = spec[1].get("update_freq", 100)
    return sum(schedule.is_due(s, update_freq) for s in range(first_step + 1, last_step + 1))


def directory_bytes(path):
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())


class Trainer:
    """One configuration: a model, its callback and its data iterator."""

    def __init__(self, model_name, config, jit, data, probe, logdir, jump=JUMP_TO_STEP):
        self.config = config
        self.model = build(model_name, jit)
        x, y = probe
        self.model.fit(x, y, batch_size=len(x), verbose=0)  # builds the optimizer, like a resumed fit
        if jump:
            self.model.optimizer.iterations.assign(jump)
        self.logdir = logdir
        self.callback = make_callback(config, logdir, probe)
        self.model.make_train_function(force=True)  # every configuration traces afresh
        start = time.perf_counter()
        if self.callback is not None:
            self.callback.set_model(self.model)
            self.callback.on_train_begin()
        # What `fit` spends in the callback before the first step (GradFlow's
        # activation probes, Keras' summary writers): part of the start-up.
        self.on_train_begin_s = time.perf_counter() - start
        self.iterator = iter(data)
        self.batch = 0
        self.epoch = 0
        self.first_step = jump

    def run(self, steps):
        """Seconds of each of `steps` train steps, run as `fit` runs them; the steps are one epoch."""
        self.begin_epoch()
        times = [self.step() for _ in range(steps)]
        times[-1] += self.end_epoch()
        return times

    def begin_epoch(self):
        if self.callback is not None:
            self.callback.on_epoch_begin(self.epoch)

    def step(self, drain=False):
        """Seconds of one train step as `fit` runs it (the callback's batch
        hooks and the train function it selects). With `drain`, the wait
        for the callback's background logger to write what the step handed
        it is counted in the step too (see bench_paired's `--interleave`)."""
        callback = self.callback
        start = time.perf_counter()
        if callback is not None:
            callback.on_train_batch_begin(self.batch)
        self.logs = self.model.train_function(self.iterator)
        if callback is not None:
            callback.on_train_batch_end(self.batch, self.logs)
            # Looked up only when asked for: a fit-like step does no more than fit.
            wait = drain and getattr(getattr(callback, "_logger", None), "wait", None)
            if wait:
                wait()
        self.batch += 1
        return time.perf_counter() - start

    def end_epoch(self):
        """Seconds to end the epoch: the last step's loss read, the callback's `on_epoch_end`."""
        start = time.perf_counter()
        logs = self.logs
        float(logs["loss"])  # The last step has finished (it has: eager calls block).
        if self.callback is not None:
            self.callback.on_epoch_end(self.epoch, {k: float(v) for k, v in logs.items()})
        self.epoch += 1
        return time.perf_counter() - start

    def close(self):
        if self.callback is not None:
            self.callback.on_train_end()


def paired_ratio(times, baseline, rng, resamples=2000):
    """Median of the per-round ratios, with a bootstrap 95% interval."""
    import numpy as np

    return median_with_interval(np.asarray(times) / np.asarray(baseline), rng, resamples)


def median_with_interval(values, rng, resamples=2000):
    """(median, low, high): the median of `values` with a bootstrap 95% interval."""
    import numpy as np

    values = np.asarray(values)
    medians = np.median(rng.choice(values, (resamples, values.size)), axis=1)
    return float(np.median(values)), float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def measure(model_name, jit, configs, rounds, block, logdir, log=print):
    """Report rows for one model and XLA setting."""
    import numpy as np

    data, probe = dataset(model_name)
    trainers, startup, startup_block = {}, {}, {}
    for i, config in enumerate(configs):
        trainer = Trainer(model_name, config, jit, data, probe, os.path.join(logdir, f"{model_name}-jit{int(jit)}-{i}"))
        start = time.perf_counter()
        first = trainer.run(1)
        startup[config] = trainer.on_train_begin_s + time.perf_counter() - start
        rest = trainer.run(block - 1)
        # What the first block cost beyond its steady-state steps: every trace
        # and compile, whichever execution triggered it.
        steps = np.asarray(first + rest)
        startup_block[config] = float(trainer.on_train_begin_s + steps.sum() - np.median(steps) * steps.size)
        trainers[config] = trainer
        log(f"  {model_name} jit={jit} {config}: start-up {startup[config]:.2f} s "
            f"(on_train_begin {trainer.on_train_begin_s:.2f} s)", flush=True)
    bytes_before = {config: directory_bytes(t.logdir) if os.path.isdir(t.logdir) else 0 for config, t in trainers.items()}
    steps_before = {config: trainer.batch for config, trainer in trainers.items()}
    per_round = {config: [] for config in configs}
    all_steps = {config: [] for config in configs}
    for r in range(rounds):
        for config in configs[r % len(configs):] + configs[: r % len(configs)]:
            times = trainers[config].run(block)
            per_round[config].append(float(np.mean(times)))
            all_steps[config].extend(times)
    for trainer in trainers.values():
        trainer.close()
    rng = np.random.default_rng(0)
    rows = []
    baseline = "plain fit"
    for config in configs:
        trainer = trainers[config]
        written = os.path.isdir(trainer.logdir) and directory_bytes(trainer.logdir) - bytes_before[config]
        first = JUMP_TO_STEP + steps_before[config]
        logged = rows_written(config, first, first + rounds * block)
        if logged is None:
            logged = rounds
        ratio, low, high = paired_ratio(per_round[config], per_round[baseline], rng)
        row = {
            "model": model_name,
            "jit_compile": jit,
            "configuration": config,
            "baseline": baseline,
            "ms_per_step": round(float(np.mean(all_steps[config])) * 1e3, 3),
            "baseline_ms_per_step": round(float(np.mean(all_steps[baseline])) * 1e3, 3),
            "ratio": round(ratio, 4),
            "ratio_95ci": [round(low, 4), round(high, 4)],
            "typical_step_ratio": round(float(np.median(all_steps[config]) / np.median(all_steps[baseline])), 4),
            "startup_s": round(startup[config], 3),
            "on_train_begin_s": round(trainer.on_train_begin_s, 3),
            "startup_ratio": round(startup[config] / startup[baseline], 4),
            "startup_block_excess_s": round(startup_block[config], 3),
            "startup_block_ratio": round(
                (startup_block[config] + np.median(all_steps[config]) * block)
                / (startup_block[baseline] + np.median(all_steps[baseline]) * block), 4),
            "logged_rows": int(logged),
            "event_bytes_per_logged_row": round(written / logged, 1) if logged and written else 0,
        }
        rows.append(row)
        log(f"{model_name:18s} jit={jit!s:5} {config:42s} {row['ms_per_step']:8.2f} ms/step  ratio "
            f"{ratio:.3f} [{low:.3f}, {high:.3f}]  start-up {row['startup_ratio']:.2f}x "
            f"(first block {row['startup_block_ratio']:.2f}x)  {row['event_bytes_per_logged_row']:.0f} B/row", flush=True)
    return rows


# ----------------------------------------------------------------- memory
def memory_child(model_name, config, steps, logdir):
    """In a subprocess: peak resident memory (bytes) of `steps` steps of `config` from step 0."""
    data, probe = dataset(model_name)
    start = time.perf_counter()
    trainer = Trainer(model_name, config, False, data, probe, logdir, jump=0)
    trainer.run(steps)
    trainer.close()
    seconds = time.perf_counter() - start
    return json.dumps({"peak_host_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                       "seconds": round(seconds, 1)})


def measure_memory(model_name, configs, steps, logdir, log=print):
    peaks, seconds = {}, {}
    for i, config in enumerate(configs):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", model_name, config, str(steps), os.path.join(logdir, f"mem-{i}")],
            capture_output=True, text=True, check=True,
        )
        child = json.loads(out.stdout.strip().splitlines()[-1])
        peaks[config], seconds[config] = child["peak_host_bytes"], child["seconds"]
        log(f"  {model_name} {config}: peak host memory {peaks[config] / 2**20:.0f} MiB, {seconds[config]:.0f} s",
            flush=True)
    return [
        {"model": model_name, "configuration": config, "baseline": "plain fit", "steps": steps,
         "peak_host_bytes": peaks[config], "memory_ratio": round(peaks[config] / peaks["plain fit"], 4),
         # The process's whole run: build, one plain batch, every trace, `steps` steps.
         "seconds": seconds[config]}
        for config in configs
    ]


def report_header(benchmark):
    """What every report of these benchmarks starts with: the date, machine, TensorFlow and oneDNN setting."""
    import tensorflow as tf

    return {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "tensorflow": tf.__version__,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, choices=sorted(MODELS))
    parser.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--no-xla", action="store_true", help="without XLA only")
    parser.add_argument("--xla-only", action="store_true", help="with XLA only")
    parser.add_argument("--memory", action="store_true", help="peak host memory, one subprocess per configuration")
    parser.add_argument("--memory-steps", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout (progress on stderr)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (the harness test)")
    parser.add_argument("--output", default=None, help="also write the report here (default with a full run: "
                        "benchmarks/results/overhead.json)")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        model_name, config, steps, logdir = args.memory_child
        print(memory_child(model_name, config, int(steps), logdir))
        return None
    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    models = args.models or (["tiny"] if args.tiny else DEFAULT_MODELS)
    configs = args.configs or (TINY_CONFIGS if args.tiny else ISSUE_CONFIGS)
    if "plain fit" not in configs:
        configs = ["plain fit"] + configs
    rounds, block = (2, 10) if args.tiny else (args.rounds, args.block)
    settings = [False] if (args.no_xla or args.tiny) else [True] if args.xla_only else [False, True]
    report = {
        **report_header("overhead"),
        "models": {name: MODELS[name][3] for name in models},
        "method": (f"{rounds} rounds of one {block}-step block per configuration, rotating order, after a "
                   f"{block}-step start-up block; steps counted from {JUMP_TO_STEP}. See the module docstring."),
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as logdir:
        if args.memory:
            steps = 3 if args.tiny else args.memory_steps
            report["memory_rows"] = [row for m in models for row in measure_memory(m, configs, steps, logdir, log)]
        else:
            for model_name in models:
                for jit in settings:
                    report["rows"] += measure(model_name, jit, configs, rounds, block, logdir, log)
    output = args.output or (None if (args.tiny or args.models or args.configs or args.memory) else RESULTS / "overhead.json")
    return emit_report(report, output, args.json)


def emit_report(report, output, print_json=True):
    """What every benchmark here ends with: the report as JSON on stdout
    (with `print_json`) and in the file `output` (if any); returns it."""
    if print_json:
        print(json.dumps(report, indent=1))
    if output:
        write_report(report, output)
    return report


def write_report(report, path):
    """The report as indented JSON at `path` (its directory made if need be), as the overhead benchmarks write it."""
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
