"""The logging schedule: dense at the start, then every period; host and device agree.

The host decides when to read the device's statistics (and which train
function holds the activation sample) from `tb_gradflow.schedule`; the
device decides when to compute them from `recorder.due_in_graph`. A step
where the two disagreed would be a row written from stale values, or a
computed row never read.
"""

import bisect

import numpy as np
import pytest
import tensorflow as tf

from tb_gradflow import schedule
from tb_gradflow.recorder import due_in_graph


@pytest.mark.parametrize("period, dense_start, unit", [
    (100, 8, 1), (10, 8, 1), (1, 8, 1), (1000, 8, 1), (100, 0, 1), (12, 8, 4), (7, 3, 1), (2**31 - 1, 8, 1),
])
def test_device_and_host_agree_on_every_step(period, dense_start, unit):
    steps = np.arange(0, 5000, dtype=np.int64)
    device = tf.function(lambda s: tf.map_fn(
        lambda t: due_in_graph(t, period, dense_start, unit), s, fn_output_signature=tf.bool))(steps).numpy()
    host = np.array([schedule.is_due(int(s), period, dense_start, unit) for s in steps])
    np.testing.assert_array_equal(device, host)


def test_dense_start_then_every_period():
    rows = [s for s in range(1, 20_001) if schedule.is_due(s, 100)]
    assert rows[:15] == list(range(1, 16))  # every step at first
    gaps = np.diff(rows)
    assert gaps.max() == 100  # never longer than the period
    assert {s for s in range(100, 20_001, 100)} <= set(rows)  # every row of the fixed schedule is one
    assert rows[-3:] == [19_800, 19_900, 20_000]  # the steady period, on its multiples
    assert len([s for s in rows if s <= 100]) == 37
    # Over a long run the dense start costs a fixed number of extra rows.
    extra = sum(schedule.is_due(s, 100) for s in range(1, 100_001)) - 100_000 // 100
    assert extra == 63


def test_without_dense_start_the_period_is_fixed():
    assert [s for s in range(1, 350) if schedule.is_due(s, 100, dense_start=0)] == [100, 200, 300]
    assert [s for s in range(1, 30) if schedule.is_due(s, 12, dense_start=0, unit=4)] == [12, 24]


def test_rows_fall_on_execution_boundaries():
    rows = [s for s in range(1, 200) if schedule.is_due(s, 20, unit=4)]
    assert all(s % 4 == 0 for s in rows)
    assert rows[:4] == [4, 8, 12, 16]
    assert schedule.due_between(5, 8, 20, unit=4) and not schedule.due_between(5, 7, 20, unit=4)


@pytest.mark.parametrize("period, dense_start, unit", [
    (100, 8, 1), (10, 8, 1), (1, 8, 1), (1000, 8, 1), (100, 0, 1), (12, 8, 4), (7, 3, 1), (6, 8, 3), (2**31 - 1, 8, 1),
])
def test_next_due_is_the_first_due_step_after(period, dense_start, unit):
    # The host's callback asks next_due once per row instead of is_due every step.
    due = [s for s in range(1, 20_000) if schedule.is_due(s, period, dense_start, unit)]
    for after in range(0, due[-1]):
        expected = due[bisect.bisect_right(due, after)]  # the first due step > after
        assert schedule.next_due(after, period, dense_start, unit) == expected
    assert schedule.next_due(5, 0) is None


def test_due_between_looks_ahead_over_one_execution():
    for first in range(1, 400):
        for unit in (1, 4):
            last = first + unit - 1
            assert schedule.due_between(first, last, 20, unit=unit) == any(
                schedule.is_due(s, 20, unit=unit) for s in range(first, last + 1))
