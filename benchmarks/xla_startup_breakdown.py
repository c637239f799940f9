"""Where GradFlow's start-up goes under XLA: the first execution with one more kind of statistic at a time.

    python benchmarks/xla_startup_breakdown.py --models mlp50 --output benchmarks/results/xla_startup_mlp50.json

With `jit_compile=True` the recorder's statistics are compiled into the
train step, so each kind adds XLA compile time to the first execution.
This runs `bench_overhead.measure` (one round, short blocks) on configurations
that add, in order, the gradient statistics, the update ratio, the
gradient histograms and the activation statistics, and reports each one's
start-up (seconds and ratio to plain fit's first execution) and the whole
first block's excess (`startup_block_excess_s`: the light function's
compile too). Start-ups are single samples: on a shared 2-core machine
read differences under a few seconds as noise.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_overhead  # noqa: E402

STEPS = {
    "gradient statistics (no update ratio)": {"histogram_freq": 0, "activation_freq": 0, "update_ratio": False},
    "+ update ratio": {"histogram_freq": 0, "activation_freq": 0},
    "+ gradient histograms": {"activation_freq": 0},
    "+ activation statistics, no histograms": {"histogram_freq": 0},
    "defaults": {},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp50"], choices=sorted(bench_overhead.MODELS))
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    for name, arguments in STEPS.items():
        bench_overhead.CONFIGS[name] = ("gradflow", arguments)
    configs = ["plain fit"] + list(STEPS)
    report = {**bench_overhead.report_header("xla_startup_breakdown"), "rows": []}
    with tempfile.TemporaryDirectory() as logdir:
        for model_name in args.models:
            rows = bench_overhead.measure(model_name, True, configs, 1, args.block, logdir,
                                          log=lambda *a, **k: print(*a, file=sys.stderr, **k))
            report["rows"] += [{k: row[k] for k in ("model", "configuration", "startup_s", "on_train_begin_s",
                                                    "startup_ratio", "startup_block_excess_s")} for row in rows]
    return bench_overhead.emit_report(report, args.output)


if __name__ == "__main__":
    main()
