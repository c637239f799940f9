"""The host CPU a row costs the logger thread, replayed from a real fit's reads.

    python benchmarks/bench_logger.py                                   # seed003_mlp, mlp50, MobileNetV3Small
    python benchmarks/bench_logger.py --before /tmp/old_checkout --json  # this checkout against another, alternated
    python benchmarks/bench_logger.py --tiny --json                      # seconds; what tests/test_bench_overhead.py runs

`GradFlow` hands each row (a gradient recorder read, an activation
recorder read) to `RunLogger` on a thread of its own, which turns it into
statistics, alert verdicts and events. That thread's CPU is not free: on
this 2-core VM, mlp50 with every statistic every step, a stand-in burning
the same 2.4 ms a row of CPU without the GIL cost the step 1.5 ms, the
real logger 1.8 ms (2026-12-05, logger stubbed: 10.6 ms a step). A change of
a tenth of it is below what in-step A/B runs resolve here; replayed alone
it is a few percent apart run to run.

Method: per model, one fit with every statistic every step (`--steps`
steps) records what the callback hands its `RunLogger` (the layer table,
then each read). The reads are replayed through a fresh `RunLogger` until
`--rows` rows of each kind were written (steps shifted so every row is
new; the copies are made before the clock starts), `--repeats` times, each
in a fresh process that imports no TensorFlow: ms of CPU per row (a
gradient row and an activation row together, the event file's thread
included), the median and the range. With `--before DIR`, each repeat
also replays in a process importing tb_gradflow from DIR, the two
alternated, and the row reports after / before.

Not a test: the figures go to docs/cost_history.md with the date and machine.
"""

import argparse
import copy
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Every statistic every step: the configuration whose rows the logger writes most often.
GRADFLOW_ARGUMENTS = {"update_freq": 1, "histogram_freq": 1, "activation_freq": 1, "dense_start": 0}


def record_rows(model_name, steps, path):
    """Fits `model_name` hooked for `steps` steps and pickles to `path` what
    its RunLogger received: {"table": set_layer_table's arguments,
    "calls": [("log", RawSnapshot) or ("log_activations", ActivationSnapshot)]}."""
    import bench_overhead

    import tb_gradflow
    from tb_gradflow import run_logger

    received = {"table": None, "calls": []}
    originals = {name: getattr(run_logger.RunLogger, name) for name in ("set_layer_table", "log", "log_activations")}

    def recording(name):
        def method(self, *args, **kwargs):
            if name == "set_layer_table":
                received["table"] = copy.deepcopy(kwargs)
            else:
                received["calls"].append((name, copy.deepcopy(args[0])))
            return originals[name](self, *args, **kwargs)
        return method

    data, _ = bench_overhead.dataset(model_name)
    model = bench_overhead.build(model_name, False)
    for name in originals:
        setattr(run_logger.RunLogger, name, recording(name))
    try:
        with tempfile.TemporaryDirectory() as logdir:
            callback = tb_gradflow.GradFlow(logdir, **GRADFLOW_ARGUMENTS)
            model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=[callback])
    finally:
        for name, method in originals.items():
            setattr(run_logger.RunLogger, name, method)
    received["calls"] = [(name, row) for name, row in received["calls"] if row.step >= 0]
    with open(path, "wb") as f:
        pickle.dump(received, f)
    return received


def replay(path, rows):
    """ms of logger CPU per row: the recorded reads through a fresh RunLogger
    until `rows` gradient rows were written (each pass's steps shifted past
    the last)."""
    from tb_gradflow import run_logger

    with open(path, "rb") as f:
        received = pickle.load(f)
    calls = received["calls"]
    gradient_rows = sum(name == "log" for name, _ in calls)
    passes = -(-rows // gradient_rows)
    shift = max(row.step for _, row in calls) + 1
    queued = []
    for p in range(passes):
        for name, row in calls:
            row = copy.deepcopy(row)
            row.step += p * shift
            if name == "log" and row.histogram_step >= 0:
                row.histogram_step += p * shift
            queued.append((name, row))
    with tempfile.TemporaryDirectory() as logdir:
        logger = run_logger.RunLogger(logdir)
        logger.set_layer_table(**copy.deepcopy(received["table"]))
        start = time.process_time()
        for name, row in queued:
            getattr(logger, name)(row)
        logger.close()  # its event file's thread done too
        seconds = time.process_time() - start
    return 1e3 * seconds / (passes * gradient_rows)


def _replay_in_process(root, path, rows):
    """`replay` in a fresh interpreter that imports tb_gradflow from `root`."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--replay-child", root, path, str(rows)],
        capture_output=True, text=True, check=True, timeout=600,
    )
    return float(out.stdout.strip().splitlines()[-1])


def measure(model_name, steps, rows, repeats, before, log):
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "rows.pickle")
        received = record_rows(model_name, steps, path)
        row = {"model": model_name, "gradflow": GRADFLOW_ARGUMENTS, "recorded_steps": steps,
               "layers": len(received["table"]["table"].layers), "rows": rows, "repeats": repeats}
        after, earlier = [], []
        for r in range(repeats):
            # Each in a fresh process without TensorFlow (its thread pools
            # spin after the fit and would count in the process time);
            # with --before, alternated, so both see the same machine.
            arms = [(after, ROOT)] + ([] if before is None else [(earlier, before)])
            for times, root in (arms if r % 2 == 0 else arms[::-1]):
                times.append(_replay_in_process(root, path, rows))
    row["ms_per_row"] = round(statistics.median(after), 4)
    row["ms_per_row_range"] = [round(min(after), 4), round(max(after), 4)]
    text = f"{model_name:18s} {row['layers']:4d} layers  {row['ms_per_row']:.3f} ms a row"
    if before is not None:
        row["before_ms_per_row"] = round(statistics.median(earlier), 4)
        row["before_ms_per_row_range"] = [round(min(earlier), 4), round(max(earlier), 4)]
        row["after_over_before"] = round(row["ms_per_row"] / row["before_ms_per_row"], 4)
        text += f"  (before {row['before_ms_per_row']:.3f} ms: {row['after_over_before']:.3f})"
    log(text, flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=12, help="steps of the recorded fit")
    parser.add_argument("--rows", type=int, default=200, help="gradient rows per replay")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", default=None, help="a checkout whose logger to compare (its tb_gradflow/)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout (progress on stderr)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (the harness test)")
    parser.add_argument("--output", default=None, help="also write the report here")
    parser.add_argument("--replay-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.replay_child:
        root, path, rows = args.replay_child
        sys.path.insert(0, os.path.abspath(root))
        print(replay(path, int(rows)))
        return None
    sys.path.insert(0, ROOT)
    import bench_overhead

    if args.before is not None and not os.path.isfile(os.path.join(args.before, "tb_gradflow", "run_logger.py")):
        parser.error(f"--before {args.before!r}: no tb_gradflow/run_logger.py there")
    for name in args.models or ():
        if name not in bench_overhead.MODELS:
            parser.error(f"--models: unknown model {name!r} (one of {', '.join(sorted(bench_overhead.MODELS))})")
    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    models = args.models or (["tiny"] if args.tiny else ["seed003_mlp", "mlp50", "mobilenetv3small"])
    steps, rows, repeats = (4, 6, 2) if args.tiny else (args.steps, args.rows, args.repeats)
    report = {
        **bench_overhead.report_header("logger"),
        "method": (f"a {steps}-step fit's reads replayed through a fresh RunLogger until {rows} gradient rows "
                   f"(with their activation rows) were written, {repeats} times; CPU ms per row (process time)"
                   + (", this checkout and --before alternated in fresh processes" if args.before else "")
                   + ". See the module docstring."),
        "before": args.before,
        "rows": [measure(name, steps, rows, repeats, args.before, log) for name in models],
    }
    return bench_overhead.emit_report(report, args.output, args.json)


if __name__ == "__main__":
    main()
