"""What the dense-then-sparse schedule costs over a long run: event bytes and write steps.

    python benchmarks/bench_schedule.py            # prints a table
    python benchmarks/bench_schedule.py --json

Writes the events of a 100,000-step run at GradFlow's defaults
(update_freq = activation_freq = 100, histogram_freq = 1000) with the real
host side (`RunLogger`, `EventWriter`) three ways: as before this schedule (a fixed
period, float64 histogram buckets), with a fixed period alone (`dense_start=0`),
and at today's defaults (dense start, float32 buckets), for a model of 50
layers / 100 variables with activation statistics on 25 layers.
No training: the device's reads are synthetic snapshots of the right shapes,
so the bytes (and the host's time) are those of a real run and the
measurement takes seconds. The device's time for the extra rows is their
count times a write step's cost less the host's share, measured on a small
Keras model in the same run (`--no-timing` skips it).
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tb_gradflow import aggregate, metadata, schedule  # noqa: E402
from tb_gradflow.proto import plugin_data_pb2  # noqa: E402
from tb_gradflow.run_logger import RunLogger  # noqa: E402

STEPS = 100_000
UPDATE_FREQ = ACTIVATION_FREQ = 100
HISTOGRAM_FREQ = 1000
N_LAYERS, N_ACTIVATIONS = 50, 25


def _table():
    layers = [plugin_data_pb2.Layer(name=f"model/block_{i // 2}/dense_{i}", class_name="Dense", activation="relu",
                                    depth=i, parameter_count=4096 + 64, has_gradient=True)
              for i in range(N_LAYERS)]
    variables = []
    for i in range(N_LAYERS):
        variables.append(plugin_data_pb2.Variable(name=f"model/dense_{i}/kernel", layer_index=i, shape=[64, 64],
                                                  has_gradient=True))
        variables.append(plugin_data_pb2.Variable(name=f"model/dense_{i}/bias", layer_index=i, shape=[64],
                                                  has_gradient=True))
    return plugin_data_pb2.LayerTable(layers=layers, variables=variables, update_freq=UPDATE_FREQ,
                                      histogram_freq=HISTOGRAM_FREQ)


def _raw(step, rng, histogram):
    n_vars = 2 * N_LAYERS
    sizes = np.array([4096, 64] * N_LAYERS, np.int64)
    sq = rng.uniform(1e-6, 1e-2, n_vars)
    moments = np.stack([sq, np.sqrt(sq) * 10, np.sqrt(sq), np.zeros(n_vars), np.zeros(n_vars)], axis=1)
    raw = aggregate.RawSnapshot(
        moments=moments, sizes=sizes, has_gradient=np.ones(n_vars, bool), nonfinite_interval=np.zeros(n_vars),
        variable_interval_max=sq * 2, variable_interval_min=sq / 2,
        layer_interval_max=rng.uniform(1e-4, 1e-1, N_LAYERS), layer_interval_min=rng.uniform(1e-6, 1e-4, N_LAYERS),
        weight_sum_squares=rng.uniform(1, 10, n_vars), update_sum_squares=rng.uniform(1e-8, 1e-6, n_vars),
        weight_before_sum_squares=rng.uniform(1, 10, n_vars),
    )
    raw.step = step
    raw.histogram_step = step if histogram else -1
    raw.histogram_range = np.tile([-0.1, 0.1], (N_LAYERS, 1))
    raw.histogram_counts = rng.integers(0, 100, (N_LAYERS, metadata.HISTOGRAM_BUCKETS))
    raw.log10_counts = rng.integers(0, 100, (N_LAYERS, metadata.LOG10_BUCKETS))
    return raw


def _activations(step, rng):
    return aggregate.ActivationSnapshot(
        step=step,
        moments=[np.array([0.2 * 64, 64.0, 0.5 * 64, 0.25 * 64, 0.0, 1.0]) for _ in range(N_ACTIVATIONS)],
        active=[rng.integers(1, 10, 64).astype(float) for _ in range(N_ACTIVATIONS)],
        histogram_range=[np.array([-1.0, 1.0]) for _ in range(N_ACTIVATIONS)],
        histogram_counts=[rng.integers(0, 50, metadata.HISTOGRAM_BUCKETS) for _ in range(N_ACTIVATIONS)],
    )


def event_bytes(dense_start, histogram_dtype=np.float32):
    """(bytes on disk, statistic rows, activation rows, host seconds) of the simulated run.

    The host seconds are everything the host does for the run's rows (rules,
    aggregation, serialisation, the writer thread's share) with synthetic
    reads, so they leave out the device's share of a write step.
    """
    from tb_gradflow import writer

    saved = writer._compact
    writer._compact = lambda buckets: np.asarray(buckets, histogram_dtype)
    began = time.perf_counter()
    try:
        return _event_bytes(dense_start) + (time.perf_counter() - began,)
    finally:
        writer._compact = saved


def _event_bytes(dense_start):
    rng = np.random.default_rng(0)
    log_dir = tempfile.mkdtemp(prefix="tb_gradflow_schedule_")
    logger = RunLogger(log_dir)
    table = _table()
    activation_rows = [i // 2 if i % 2 == 0 else -1 for i in range(N_LAYERS)]
    logger.set_layer_table(step=0, table=table, activation_rows=activation_rows)
    rows = activation_count = 0
    for step in range(1, STEPS + 1):
        histogram = step % HISTOGRAM_FREQ == 0
        if schedule.is_due(step, UPDATE_FREQ, dense_start) or histogram:
            logger.log(_raw(step, rng, histogram))
            rows += schedule.is_due(step, UPDATE_FREQ, dense_start)
        if schedule.is_due(step, ACTIVATION_FREQ, dense_start):
            logger.log_activations(_activations(step, rng))
            activation_count += 1
    logger.close()
    size = sum(os.path.getsize(os.path.join(log_dir, f)) for f in os.listdir(log_dir))
    return size, rows, activation_count


def write_step_cost():
    """Seconds one write step adds to a step of a small Keras model (fit of 200 steps,
    a row every step vs every 1000 steps)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    import tb_gradflow

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200 * 32, 32)).astype("float32")
    y = rng.integers(0, 10, 200 * 32)

    def timed(update_freq):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((32,))] + [keras.layers.Dense(64, activation="relu") for _ in range(8)]
                                 + [keras.layers.Dense(10)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        hook = tb_gradflow.GradFlow(tempfile.mkdtemp(), update_freq=update_freq, histogram_freq=0,
                                    activation_freq=update_freq, dense_start=0)
        model.fit(x[:320], y[:320], batch_size=32, verbose=0, callbacks=[hook])  # trace
        began = time.perf_counter()
        model.fit(x, y, batch_size=32, verbose=0, callbacks=[hook])
        return time.perf_counter() - began

    every, rarely = timed(1), timed(1000)
    return max(every - rarely, 0.0) / 200, rarely / 200


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args(argv)
    before = event_bytes(0, np.float64)
    fixed = event_bytes(0)
    dense = event_bytes(schedule.DENSE_START)
    result = {
        "benchmark": "schedule",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}",
        "steps": STEPS,
        "model": f"{N_LAYERS} layers, {2 * N_LAYERS} variables, activation statistics on {N_ACTIVATIONS} layers",
        "before": {"bytes": before[0], "statistic_rows": before[1], "activation_rows": before[2],
                   "host_seconds": round(before[3], 2)},
        "fixed_period": {"bytes": fixed[0], "statistic_rows": fixed[1], "activation_rows": fixed[2],
                         "host_seconds": round(fixed[3], 2)},
        "dense_start": {"bytes": dense[0], "statistic_rows": dense[1], "activation_rows": dense[2],
                        "host_seconds": round(dense[3], 2)},
        "bytes_ratio_to_before": round(dense[0] / before[0], 4),
        "bytes_ratio_dense_to_fixed": round(dense[0] / fixed[0], 4),
    }
    if not args.no_timing:
        per_write, per_step = write_step_cost()
        extra = (dense[1] - fixed[1]) + (dense[2] - fixed[2])
        result["write_step_extra_seconds"] = round(per_write, 6)
        result["plain_step_seconds"] = round(per_step, 6)
        plain_run = STEPS * per_step
        # The extra rows at the full cost of a write step, float32 or not:
        result["time_ratio_dense_to_fixed"] = round(1 + extra * per_write / plain_run, 5)
        # Against the previous defaults: the host's whole share of the writes
        # (measured above, float64 against float32 histograms) plus the device's
        # share of the extra write steps (a write step's cost less the host's
        # per-row share).
        host_per_row = dense[3] / (dense[1] + dense[2])
        device_extra = extra * max(per_write - host_per_row, 0.0)
        result["time_ratio_to_before"] = round(1 + (dense[3] - before[3] + device_extra) / plain_run, 5)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key, value in result.items():
            print(f"{key:>28}: {value}")
    return result


if __name__ == "__main__":
    main()
