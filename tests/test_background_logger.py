"""BackgroundLogger: rows written on a thread of their own, as RunLogger writes
them on the caller's, read back through TensorBoard's loading code (Reader).
TF-free: the rows are numpy snapshots like those the recorder reads."""

import threading

import numpy as np
import pytest

from tb_gradflow import aggregate
from tb_gradflow.background_logger import BackgroundLogger
from tb_gradflow.proto import plugin_data_pb2
from tb_gradflow.reader import Reader
from tb_gradflow.run_logger import RunLogger

N_LAYERS = 3


def layer_table():
    return plugin_data_pb2.LayerTable(
        layers=[plugin_data_pb2.Layer(name=f"dense_{i}", depth=i, has_gradient=True, parameter_count=8)
                for i in range(N_LAYERS)],
        variables=[plugin_data_pb2.Variable(name=f"dense_{i}/kernel", shape=[8], layer_index=i)
                   for i in range(N_LAYERS)],
        update_freq=1,
    )


def snapshot(step, rng):
    sq = rng.uniform(0.5, 2.0, N_LAYERS) * 10.0 ** -np.arange(N_LAYERS)
    moments = np.zeros((N_LAYERS, aggregate.NUM_MOMENTS))
    moments[:, aggregate.SUM_SQUARES] = sq
    moments[:, 1] = np.sqrt(sq) * 2
    moments[:, 2] = np.sqrt(sq)
    raw = aggregate.RawSnapshot(
        moments=moments, sizes=np.full(N_LAYERS, 8), has_gradient=np.ones(N_LAYERS, bool),
        nonfinite_interval=np.zeros(N_LAYERS), variable_interval_max=sq, variable_interval_min=sq,
        layer_interval_max=sq, layer_interval_min=sq, weight_sum_squares=np.ones(N_LAYERS),
        update_sum_squares=np.full(N_LAYERS, 1e-6), loss=float(step), loss_interval_max=float(step),
        loss_interval_min=float(step), nonfinite_loss_steps=0.0,
    )
    raw.step, raw.histogram_step = step, -1
    return raw


def write(logger, steps):
    rng = np.random.default_rng(0)
    logger.set_layer_table(step=0, table=layer_table())
    for step in steps:
        logger.log(snapshot(step, rng))
    logger.close()


def test_rows_read_back_as_the_synchronous_logger_writes_them(tmp_path):
    steps = list(range(1, 41))
    write(RunLogger(str(tmp_path / "sync")), steps)
    background = BackgroundLogger(RunLogger(str(tmp_path / "background")), max_pending=2)
    write(background, steps)
    assert background.last_step == steps[-1]
    reader = Reader.for_logdir(str(tmp_path))
    for statistic in ("grad_norm", "grad_norm_interval_max", "weight_norm"):
        expected = reader.layer_series("sync", statistic)
        actual = reader.layer_series("background", statistic)
        assert actual.steps.tolist() == steps
        np.testing.assert_array_equal(actual.values, expected.values)
    assert [(a.kind, a.layer) for a in reader.alerts("background")] == [(a.kind, a.layer) for a in reader.alerts("sync")]


def test_rows_are_written_off_the_calling_thread(tmp_path):
    threads = []

    class Watched(RunLogger):
        def log(self, raw):
            threads.append(threading.current_thread().name)
            return super().log(raw)

    write(BackgroundLogger(Watched(str(tmp_path))), [1, 2, 3])
    assert len(threads) == 3
    assert all(name.startswith("tb_gradflow_writer") for name in threads), threads


def test_a_rows_error_is_raised_on_the_callers_next_call_and_close_still_closes(tmp_path, capfd):
    logger = BackgroundLogger(RunLogger(str(tmp_path)))
    # A real RunLogger error: a row before the layer table.
    logger.log(snapshot(1, np.random.default_rng(0)))
    with pytest.raises(RuntimeError, match="set_layer_table must be called before log"):
        logger.flush()
    logger.close()  # The error was raised once; closing raises nothing more.
    assert logger._executor._shutdown
    assert "Traceback" not in capfd.readouterr().err


def test_close_raises_a_pending_error_after_closing(tmp_path):
    logger = BackgroundLogger(RunLogger(str(tmp_path)))
    logger.log(snapshot(1, np.random.default_rng(0)))
    with pytest.raises(RuntimeError, match="set_layer_table"):
        logger.close()
    assert logger._executor._shutdown


def test_at_most_max_pending_rows_wait(tmp_path):
    release = threading.Event()
    started = []

    class Slow(RunLogger):
        def log(self, raw):
            started.append(raw.step)
            release.wait(timeout=30)
            return super().log(raw)

    logger = BackgroundLogger(Slow(str(tmp_path)), max_pending=2)
    logger.set_layer_table(step=0, table=layer_table())
    rng = np.random.default_rng(0)
    logger.log(snapshot(1, rng))
    logger.log(snapshot(2, rng))
    third = threading.Thread(target=logger.log, args=(snapshot(3, rng),))
    third.start()
    third.join(timeout=0.5)
    assert third.is_alive()  # Blocked: two rows wait already.
    release.set()
    third.join(timeout=30)
    assert not third.is_alive()
    logger.close()
    assert started == [1, 2, 3]
    assert Reader.for_logdir(str(tmp_path)).layer_series(".", "grad_norm").steps.tolist() == [1, 2, 3]
