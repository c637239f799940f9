"""A row step's cost without XLA: the compiled statistics against the per-layer ones, in one process.

    python benchmarks/bench_statistics_path.py                       # seed003_mlp and MobileNetV3Small
    python benchmarks/bench_statistics_path.py --models transformer_block mlp50 --rounds 8 --json
    python benchmarks/bench_statistics_path.py --tiny --json          # seconds; what tests/test_bench_overhead.py runs

Without XLA, `GradFlow` computes a row's statistics by two XLA-compiled
calls over copies of every gradient (`recorder.GradientRecorder.track_gradients`),
and an activation row's by one over copies of the activations
(`recorder.ActivationRecorder._record_copied`), on models up to
`recorder.FUSED_MAX_ELEMENTS` trainable elements (`recorder.statistics_compiled`),
and by per-layer (per-activation) calls of TensorFlow ops above that. Separate runs of
`bench_overhead.py` on this shared VM move by more than the difference
(one configuration's ratio 1.39x in one run and 1.82x in the same
process here), so both paths are measured in one process: two copies of
the model (same weights), one hooked with each path, each also fitted
plainly; fits of `--steps` steps of the four alternate, `--rounds` times,
and each fit's median step time is taken after its first two steps. Every
configuration writes a row every step (`dense_start=0`); the callbacks
read the statistics and log them as in any fit.

Per model and configuration: each path's median ratio to its own model's
plain fit with the interquartile range, and compiled / per-layer (the
median of the per-round ratios). Not a test: the figures go to the README
and docs/cost_history.md with the date and machine.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bench_overhead  # noqa: E402

# name -> GradFlow arguments (every configuration writes a row every step).
CONFIGS = {
    "histograms every step": {"update_freq": 1, "histogram_freq": 1, "activation_freq": 0},
    "gradient statistics every step": {"update_freq": 1, "histogram_freq": 0, "activation_freq": 0},
    "every statistic every step": {"update_freq": 1, "histogram_freq": 1, "activation_freq": 1},
}
PATHS = ("compiled", "per-layer")


def _step_timer():
    import keras

    class StepTimer(keras.callbacks.Callback):
        """The wall time between consecutive batch ends."""

        def __init__(self):
            super().__init__()
            self.seconds, self._last = [], None

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if self._last is not None:
                self.seconds.append(now - self._last)
            self._last = now

    return StepTimer()


def measure(model_name, config, rounds, steps, logdir, log):
    """One row: both paths against their own model's plain fit, fits alternated."""
    import numpy as np

    import tb_gradflow
    from tb_gradflow import recorder

    data, _ = bench_overhead.dataset(model_name)
    models, callbacks = {}, {}
    for path in PATHS:
        model = bench_overhead.build(model_name, False)
        if models:
            model.set_weights(next(iter(models.values())).get_weights())
        saved = recorder.FUSED_MAX_ELEMENTS
        if path == "per-layer":
            recorder.FUSED_MAX_ELEMENTS = -1
        try:
            callback = tb_gradflow.GradFlow(os.path.join(logdir, model_name, config, path), dense_start=0,
                                            **CONFIGS[config])
            model.fit(data, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False, callbacks=[callback])
        finally:
            recorder.FUSED_MAX_ELEMENTS = saved
        compiled = callback._recorder.gradient_copies is not None
        activations = callback._activation_recorder
        copied = activations is not None and activations.copies is not None
        if compiled != (path == "compiled") or (activations is not None and copied != compiled):
            raise RuntimeError(f"{model_name}: the {path} model's statistics went the other way")
        if copied:
            # Their call compiles on a thread after the first sampled step:
            # timed once it is in place.
            activations.finish_warm_up()
        model.fit(data, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)  # its plain train function, traced
        models[path], callbacks[path] = model, callback
    fits = [(path, hooked) for path in PATHS for hooked in (False, True)]
    times = {fit: [] for fit in fits}
    for r in range(rounds):
        for path, hooked in (fits if r % 2 == 0 else fits[::-1]):
            timer = _step_timer()
            models[path].fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False,
                             callbacks=[callbacks[path], timer] if hooked else [timer])
            times[(path, hooked)].append(statistics.median(timer.seconds[2:]))
    row = {"model": model_name, "configuration": config, "gradflow": CONFIGS[config], "rounds": rounds,
           "steps_per_fit": steps}
    ratios = {}
    for path in PATHS:
        ratios[path] = np.asarray(times[(path, True)]) / np.asarray(times[(path, False)])
        key = path.replace("-", "_")
        row[f"{key}_ratio"] = round(float(np.median(ratios[path])), 4)
        row[f"{key}_ratio_iqr"] = [round(float(q), 4) for q in np.percentile(ratios[path], [25, 75])]
        row[f"{key}_ms_per_step"] = round(1e3 * float(np.median(times[(path, True)])), 3)
        row[f"{key}_plain_ms_per_step"] = round(1e3 * float(np.median(times[(path, False)])), 3)
    compared = ratios["compiled"] / ratios["per-layer"]
    row["compiled_over_per_layer"] = round(float(np.median(compared)), 4)
    row["compiled_over_per_layer_iqr"] = [round(float(q), 4) for q in np.percentile(compared, [25, 75])]
    log(f"{model_name:18s} {config:32s} compiled {row['compiled_ratio']:.3f}x  per-layer "
        f"{row['per_layer_ratio']:.3f}x  compiled/per-layer {row['compiled_over_per_layer']:.3f} "
        f"[{compared.min():.3f}..{compared.max():.3f}]", flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, choices=sorted(bench_overhead.MODELS))
    parser.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=30, help="steps per fit")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout (progress on stderr)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (the harness test)")
    parser.add_argument("--output", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    models = args.models or (["tiny"] if args.tiny else ["seed003_mlp", "mobilenetv3small"])
    configs = args.configs or (["histograms every step"] if args.tiny else ["histograms every step",
                                                                             "every statistic every step"])
    rounds, steps = (2, 5) if args.tiny else (args.rounds, args.steps)
    report = {
        **bench_overhead.report_header("statistics path"),
        "method": (f"in one process, {rounds} rounds of {steps}-step fits of each path's hooked and plain model, "
                   "alternated; each fit's median step time after its first two steps. See the module docstring."),
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as logdir:
        for model_name in models:
            for config in configs:
                report["rows"].append(measure(model_name, config, rounds, steps, logdir, log))
    return bench_overhead.emit_report(report, args.output, args.json)


if __name__ == "__main__":
    main()
