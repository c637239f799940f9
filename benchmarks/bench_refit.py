"""Start-up of every `fit` when a model is trained in several calls, with and without GradFlow.

    python benchmarks/bench_refit.py                                  # seed003_mlp and MobileNetV3Small, XLA
    python benchmarks/bench_refit.py --models mlp50 --no-xla --fits 5 --json
    python benchmarks/bench_refit.py --fits 1 --metrics                 # a fresh model's start-up, compiled with accuracy
    python benchmarks/bench_refit.py --tiny                           # seconds; what tests/test_bench_overhead.py runs

Many training scripts call `fit` once per epoch (or per chunk of data) on
one compiled model. Keras traces (and under XLA compiles) its train step
once, in the first fit; each later fit starts at once. This measures the
wall time of each of `--fits` fits of `--steps` steps (the models and data
of `bench_overhead.py`) in one process per configuration:

- plain fit: no callback.
- one callback, every fit: one `GradFlow` object (defaults) passed to each
  fit; from the second fit on it runs the train functions already traced
  (`GradFlow._resume`), tracing only the kinds the schedule needs for the
  first time (with 10-step fits, the light and recording functions at step
  16, in the second fit).
- a new callback per fit: a new `GradFlow` object (defaults) each fit,
  which from the second fit on runs through the last one and its traced
  functions (`GradFlow._adoptable`).
- a new callback per fit, released: the same with `GradFlow.release(model)`
  after each fit, so every fit instruments the model afresh (what every
  new callback did before a new one could take the last one's functions
  over).

Each row holds the seconds of every fit, their ratios to plain fit's fit of
the same index, `later_fits_ratio`: the fits from the third on, summed,
over plain fit's, and `first_batch_s` / `first_batch_ratio`: the fresh
model's start-up as a user meets it, from the first fit's `on_train_begin`
to the end of its first batch (every trace and compile of the first
execution; Keras builds an unbuilt optimizer inside the first trace, and a
plain fit traces its step twice there, see `bench_overhead.py`'s start-up,
measured after a one-batch fit). Not a test: the figures go to the README with the
date and machine.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bench_overhead  # noqa: E402

CONFIGS = ("plain fit", "one callback, every fit", "a new callback per fit", "a new callback per fit, released")


def child(model_name, jit, config, fits, steps, metrics):
    """Runs the fits in this process; prints their seconds as JSON."""
    import keras

    import tb_gradflow

    class FirstBatch(keras.callbacks.Callback):
        """Seconds from on_train_begin to the end of the first batch; first
        in the callback list, so the hook's on_train_begin counts."""

        def on_train_begin(self, logs=None):
            self.start, self.seconds = time.perf_counter(), None

        def on_train_batch_end(self, batch, logs=None):
            if self.seconds is None:
                self.seconds = time.perf_counter() - self.start

    model = bench_overhead.build(model_name, jit, metrics=["accuracy"] if metrics else None)
    data, _ = bench_overhead.dataset(model_name)
    seconds = []
    first_batch = FirstBatch()
    with tempfile.TemporaryDirectory(prefix="bench_refit_") as log_dir:
        shared = tb_gradflow.GradFlow(log_dir) if config == "one callback, every fit" else None
        for _ in range(fits):
            if config == "plain fit":
                callbacks = []
            else:
                callbacks = [shared if shared is not None else tb_gradflow.GradFlow(log_dir)]
            if not seconds:
                callbacks.insert(0, first_batch)
            start = time.perf_counter()
            model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=callbacks)
            seconds.append(time.perf_counter() - start)
            if config.endswith("released"):
                tb_gradflow.GradFlow.release(model)
    print(json.dumps({"fit_s": seconds, "first_batch_s": first_batch.seconds}))


def measure(model_name, jit, fits, steps, configs=CONFIGS, metrics=False):
    seconds, first_batch = {}, {}
    for config in configs:
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", model_name, str(int(jit)), config,
             str(fits), str(steps), str(int(metrics))],
            capture_output=True, text=True, check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        seconds[config], first_batch[config] = result["fit_s"], result["first_batch_s"]
        print(f"  {model_name:18s} jit={jit!s:5s} {config:24s} first batch {first_batch[config]:7.2f} s, fits "
              + " ".join(f"{s:7.2f}" for s in seconds[config]) + " s", file=sys.stderr, flush=True)
    plain = seconds["plain fit"]
    rows = []
    for config in configs:
        row = {"model": model_name, "jit_compile": jit, "metrics": ["accuracy"] if metrics else [],
               "configuration": config, "baseline": "plain fit",
               "steps_per_fit": steps, "fit_s": [round(s, 3) for s in seconds[config]],
               "fit_ratios": [round(s / p, 3) for s, p in zip(seconds[config], plain)],
               "first_batch_s": round(first_batch[config], 3),
               "first_batch_ratio": round(first_batch[config] / first_batch["plain fit"], 3)}
        if fits >= 3:
            row["later_fits_ratio"] = round(sum(seconds[config][2:]) / sum(plain[2:]), 3)
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["seed003_mlp", "mobilenetv3small"],
                        choices=sorted(bench_overhead.MODELS))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS,
                        help="configurations (plain fit, the baseline, is always measured)")
    parser.add_argument("--fits", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="steps per fit")
    parser.add_argument("--no-xla", action="store_true", help="without XLA (default: with XLA)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (the harness test)")
    parser.add_argument("--output", default=None, help="also write the report here")
    parser.add_argument("--metrics", action="store_true", help="compile with metrics=['accuracy']")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        model_name, jit, config, fits, steps, metrics = args.child
        return child(model_name, jit == "1", config, int(fits), int(steps), metrics == "1")
    if args.tiny:
        args.models, args.fits, args.steps, args.no_xla = ["tiny"], 3, 3, True
    configs = ["plain fit"] + [c for c in CONFIGS if c in args.configs and c != "plain fit"]
    report = {**bench_overhead.report_header("refit"), "fits": args.fits, "steps_per_fit": args.steps, "rows": []}
    for model_name in args.models:
        report["rows"] += measure(model_name, not args.no_xla, args.fits, args.steps, configs, args.metrics)
    return bench_overhead.emit_report(report, args.output, args.json)


if __name__ == "__main__":
    main()
