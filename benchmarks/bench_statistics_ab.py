"""Run time of two versions of tb_gradflow/stats.py side by side, calls interleaved in one process.

    python benchmarks/bench_statistics_ab.py --before /tmp/old_checkout --models seed003_mlp resnet50v2
    python benchmarks/bench_statistics_ab.py --before /tmp/old_checkout --no-xla --output out.json

On a shared machine, separate runs of `bench_statistics_compile.py` move by
more than a change to the statistics' arithmetic is worth (single medians
of the same code 20% apart). Here both versions of `stats.py` (this
checkout's and the one under `--before`) are loaded as modules of their
own, each statistic is compiled (XLA) or traced (graph) from each, and the
timed calls alternate before / after, so both see the same machine. On
random tensors of the shapes of each model's trainable variables (the
models of `bench_overhead.py`), per model and statistic: the median and
minimum of `--calls` calls (ms, results fetched to the host), and the
after / before ratio of the medians.

Statistics: `multi_tensor_statistics` with histograms (the inline row
statistics under XLA), `layer_histograms` of all tensors joined,
`log10_magnitude_counts` of each tensor, the moments of each tensor (what
the recorder's isolated calls compute without XLA), the update sums of the
update ratio (`multi_tensor_update_sums`) and `multi_activation_statistics`
of ReLU outputs shaped as the gradients (units on the last axis; the
inline activation statistics under XLA). Each is called as the recorder
calls it: under XLA on a CPU the versions that sum the gradients' and
weights' rows by dot products (`stats.sum_rows`, 2026-12-04) do so.
"""

import argparse
import functools
import importlib.util
import inspect
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bench_overhead  # noqa: E402
import bench_statistics_compile  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent.parent


def load_stats(checkout, name):
    """tb_gradflow/stats.py of `checkout` as a module named `name` (its
    imports of other tb_gradflow modules resolve to this checkout's)."""
    spec = importlib.util.spec_from_file_location(name, pathlib.Path(checkout) / "tb_gradflow" / "stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def statistics(stats, layer_of_variable, n_layers, jit):
    import tensorflow as tf

    from tb_gradflow import recorder

    scale = tf.constant(1.0)
    by_dot = jit and recorder._cpu_only()  # as `GradientRecorder._sums_by_dot`

    def as_recorder(function):
        """`function` with the recorder's `by_dot`, where the version has it."""
        if "by_dot" in inspect.signature(function).parameters:
            return functools.partial(function, by_dot=by_dot)
        return function

    def relu_outputs(tensors):
        return [tf.nn.relu(t if t.shape.rank else t[None]) for t in tensors]

    return {
        "multi_tensor_statistics": lambda *t: as_recorder(stats.multi_tensor_statistics)(
            list(t), layer_of_variable, n_layers, scale, True),
        "multi_tensor_update_sums": lambda *t: as_recorder(stats.multi_tensor_update_sums)(
            list(t), [x * 0.5 for x in t]),
        "multi_activation_statistics": lambda *t: stats.multi_activation_statistics(
            relu_outputs(t), [0.1] * len(t), [-1] * len(t), op_type="Relu"),
        "layer_histograms": lambda *t: stats.layer_histograms(list(t), scale),
        "log10_magnitude_counts": lambda *t: [stats.log10_magnitude_counts([x]) for x in t],
        # What the recorder's per-layer isolated calls compute without XLA
        # (`recorder._layer_moments`); versions before 2026-12-04 had only
        # the masked `gradient_moments`.
        "moments of each tensor": lambda *t: [
            getattr(stats, "gradient_moments_masked_if_needed", stats.gradient_moments)(x) for x in t],
    }


def measure(model_name, versions, jit, calls):
    import numpy as np
    import tensorflow as tf

    shapes, layer_of_variable, n_layers = bench_statistics_compile.gradient_shapes(model_name)
    tensors = bench_statistics_compile.random_gradients(shapes)
    functions = {}
    for version, stats in versions.items():
        for name, computation in statistics(stats, layer_of_variable, n_layers, jit).items():
            functions[(name, version)] = tf.function(computation, jit_compile=jit, autograph=False)

    def call(function):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), function(*tensors))
        return time.perf_counter() - start

    for function in functions.values():
        call(function)  # trace and compile
    times = {key: [] for key in functions}
    for _ in range(calls):
        for key, function in functions.items():
            times[key].append(call(function))
    rows = []
    for name in dict.fromkeys(name for name, _ in functions):
        medians = {version: float(np.median(times[(name, version)])) * 1e3 for version in versions}
        row = {"model": model_name, "xla": jit, "statistic": name,
               "elements": int(sum(np.prod(s) for s in shapes)), "tensors": len(shapes)}
        for version in versions:
            row[f"{version}_median_ms"] = round(medians[version], 3)
            row[f"{version}_min_ms"] = round(float(np.min(times[(name, version)])) * 1e3, 3)
        row["ratio"] = round(medians["after"] / medians["before"], 3)
        print(f"  {model_name:18s} {'xla' if jit else 'graph':5s} {name:24s} before {medians['before']:8.2f} ms"
              f"  after {medians['after']:8.2f} ms  ratio {row['ratio']:.3f}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="a checkout of the version to compare with")
    parser.add_argument("--models", nargs="+", default=["seed003_mlp", "resnet50v2"],
                        choices=sorted(bench_overhead.MODELS))
    parser.add_argument("--calls", type=int, default=20, help="timed calls of each version")
    parser.add_argument("--no-xla", action="store_true", help="TensorFlow graphs (the recorder without XLA)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    before = pathlib.Path(args.before).resolve()
    if not (before / "tb_gradflow" / "stats.py").is_file():
        parser.error(f"--before {args.before}: no tb_gradflow/stats.py there")
    versions = {"before": load_stats(before, "stats_before"), "after": load_stats(HERE, "stats_after")}
    report = {**bench_overhead.report_header("statistics_ab"), "before": str(before), "calls": args.calls, "rows": []}
    for model_name in args.models:
        report["rows"] += measure(model_name, versions, not args.no_xla, args.calls)
    return bench_overhead.emit_report(report, args.output)


if __name__ == "__main__":
    main()
