"""XLA compile time and run time of the hook's inline gradient statistics, on real models' gradient shapes.

    python benchmarks/bench_statistics_compile.py --models seed003_mlp mobilenetv3small --output out.json

Under XLA the recorder's statistics (`stats.multi_tensor_statistics`, and
`stats.multi_tensor_update_sums` for the update ratio) are compiled into the
train step, so their compile time is start-up the user waits for. This
compiles them alone, on random tensors of the shapes of each model's
trainable variables (the models of `bench_overhead.py`) with the layer of
each variable, and reports per model and statistic the first call (trace
and compile, seconds) and the median of later calls (ms). Comparing two
versions of the code: run it from each checkout, alternating (single
compile samples move by a second on a shared 2-core machine).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bench_overhead  # noqa: E402

STATISTICS = ("moments", "moments and histograms", "update sums")
FORWARD = ("forward pass", "forward pass + activation statistics")


def gradient_shapes(model_name):
    """(shapes, layer_of_variable, n_layers) of the model's trainable variables."""
    from tb_gradflow.keras import model_layers

    model = bench_overhead.MODELS[model_name][0]()
    owners, layer_of_variable = model_layers.variable_owners(model)
    return [tuple(v.shape) for v in model.trainable_variables], layer_of_variable, len(owners)


def random_gradients(shapes):
    """float32 tensors of `shapes`, normal, each scaled by its own power of
    ten in [1e-6, 1] (gradients of a model span decades), seed 0."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    return [tf.constant(rng.normal(size=s).astype("float32") * 10.0 ** rng.integers(-6, 1)) for s in shapes]


def measure(model_name, calls):
    import numpy as np
    import tensorflow as tf

    from tb_gradflow import stats

    shapes, layer_of_variable, n_layers = gradient_shapes(model_name)
    tensors = random_gradients(shapes)
    others = [t + 1.0 for t in tensors]
    scale = tf.constant(1.0)
    computations = {
        "moments": lambda *t: stats.multi_tensor_statistics(list(t), layer_of_variable, n_layers, scale, False)[0],
        "moments and histograms": lambda *t: stats.multi_tensor_statistics(list(t), layer_of_variable, n_layers, scale),
        "update sums": lambda *t: stats.multi_tensor_update_sums(list(t[: len(tensors)]), list(t[len(tensors):])),
    }
    rows = []
    for name, computation in computations.items():
        arguments = tensors + others if name == "update sums" else tensors
        rows.append({
            "model": model_name, "statistics": name, "tensors": len(tensors), "layers": n_layers,
            "elements": int(sum(np.prod(s) for s in shapes)),
            **compile_and_run(computation, arguments, calls, f"{model_name:18s} {name:24s}"),
        })
    return rows


def compile_and_run(computation, arguments, calls, label):
    """{"compile_s": the first call of `computation` under XLA (trace and
    compile), "run_ms": the median of `calls` later ones}, each call's
    results fetched to the host; a progress line on stderr."""
    import numpy as np
    import tensorflow as tf

    function = tf.function(computation, jit_compile=True)

    def call():
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), function(*arguments))
        return time.perf_counter() - start

    first = call()
    run_ms = float(np.median([call() for _ in range(calls)])) * 1e3
    print(f"  {label} first call {first:6.2f} s  then {run_ms:8.2f} ms", file=sys.stderr, flush=True)
    return {"compile_s": round(first, 3), "run_ms": round(run_ms, 3)}


def measure_activations(model_name, calls):
    """The model's forward pass (training=True) compiled alone, and with the
    hook's activation capture in it as in the sampling train step under XLA
    (`ActivationRecorder.stacked`: the step's activations measured together
    at its end): the second's excess is the activation statistics' cost."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tb_gradflow import rules
    from tb_gradflow.keras import activation_capture
    from tb_gradflow.recorder import ActivationRecorder

    keras.utils.set_random_seed(0)
    model = bench_overhead.MODELS[model_name][0]()
    _, batch, inputs, _ = bench_overhead.MODELS[model_name]
    x = tf.constant(inputs(np.random.default_rng(0), batch))
    capture = activation_capture.ActivationCapture(model, rules.Thresholds().saturation_derivative)
    recorder = ActivationRecorder(units=capture.units, thresholds=capture.thresholds, activation_freq=1, xla=True)
    step = tf.constant(1, tf.int64)
    capture.install(recorder, lambda: step)
    try:
        forward = lambda t: model(t, training=True)  # noqa: E731
        functions = {FORWARD[0]: forward, FORWARD[1]: capture.sampling_train_step(forward)}
        rows = []
        for name, computation in functions.items():
            rows.append({
                "model": model_name, "statistics": name, "activations": len(capture.units),
                "units": int(sum(capture.units)),
                **compile_and_run(computation, [x], calls, f"{model_name:18s} {name:36s}"),
            })
        recorded = sum(1 for c in capture.captured if c.recorded)
        if recorded != len(capture.units):
            raise RuntimeError(f"{model_name}: {recorded} of {len(capture.units)} activations recorded")
    finally:
        capture.restore()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["seed003_mlp", "mlp50", "mobilenetv3small"],
                        choices=sorted(bench_overhead.MODELS))
    parser.add_argument("--calls", type=int, default=10, help="timed calls after the first")
    parser.add_argument("--only", choices=["gradients", "activations"], default=None,
                        help="only the gradient statistics, or only the forward pass with and without activations")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    import tensorflow as tf

    # XLA's one-time set-up, so that it is not in the first model's compile.
    tf.function(lambda t: t * 2.0, jit_compile=True)(tf.constant([1.0]))
    report = {**bench_overhead.report_header("statistics_compile"), "rows": []}
    for model_name in args.models:
        if args.only != "activations":
            report["rows"] += measure(model_name, args.calls)
        if args.only != "gradients":
            report["rows"] += measure_activations(model_name, args.calls)
    return bench_overhead.emit_report(report, args.output)


if __name__ == "__main__":
    main()
