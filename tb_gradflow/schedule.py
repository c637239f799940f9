"""When rows are written: densely at the start of training, then every `period` steps.

    >>> from tb_gradflow import schedule
    >>> rows = [s for s in range(1, 200) if schedule.is_due(s, period=100)]
    >>> rows[:18]
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20]
    >>> rows[-4:]
    [144, 160, 176, 192]
    >>> len([s for s in range(1, 101) if schedule.is_due(s, period=100)])
    37
    >>> schedule.gap(10**6, period=100)
    100

A vanishing gradient is usually debugged on a short run, and every rule
needs a few rows before it can decide; a row every 100 steps gives a
100-step run one row. So every step is written at first, and the gap between
rows then doubles each time the step count doubles, until it reaches the
period: steps 1-15 every step, then 8 rows per doubling (every 2nd step up to
31, every 4th up to 63, ...), every `period` steps from about step
8 x period on. With period 100: 37 rows in the first 100 steps, 73 by step
1,024 where a fixed period gives 10, and 63 rows more than a fixed period
over a run of any length (docs/event_contract.md, "When rows are written",
has the measured cost).

Steps count from 1. With `steps_per_execution` > 1 the host can read only
between executions, so the schedule counts executions (`unit` steps each):
a row is due at the last step of an execution the schedule picks. This
module is the host's copy; `recorder.due_in_graph` is the device's, and
tests/test_schedule.py checks they agree step for step.
"""

# Rows per doubling of the step count once the dense start is over; the
# first 2 x DENSE_START - 1 steps are all written.
DENSE_START = 8


def gap(step, period, dense_start=DENSE_START):
    """Steps between rows around `step` (>= 1): a power of two below `period`, then `period`."""
    if period <= 1 or dense_start <= 0:
        return max(int(period), 1)
    quotient = step // dense_start
    if quotient < 2:
        return 1
    power = 1 << (quotient.bit_length() - 1)  # largest power of two <= quotient
    return min(power, period)


def is_due(step, period, dense_start=DENSE_START, unit=1):
    """Whether a row is written at train step `step` (1-based).

    Args:
      period: the steady-state gap (`update_freq`, `activation_freq`), a
        multiple of `unit`; 0 means never.
      dense_start: rows per doubling after the dense start; 0 disables the
        dense start (a row every `period` steps from the beginning).
      unit: steps per execution; rows fall on execution boundaries.
    """
    if period <= 0 or step <= 0 or step % unit:
        return False
    executions = step // unit
    steady = max(period // unit, 1)
    # Multiples of the period are always rows (every row of a fixed schedule
    # is one here), so no gap is ever longer than the period.
    return executions % steady == 0 or executions % gap(executions, steady, dense_start) == 0


def due_between(first, last, period, dense_start=DENSE_START, unit=1):
    """Whether a row is due at any step in [first, last] (the host's look-ahead
    over one execution)."""
    due = next_due(first - 1, period, dense_start, unit)
    return due is not None and due <= last


def next_due(after, period, dense_start=DENSE_START, unit=1):
    """The first step > `after` at which a row is due; None if `period` <= 0.

        >>> from tb_gradflow import schedule
        >>> schedule.next_due(16, period=100), schedule.next_due(10**6 + 1, period=100)
        (18, 1000100)

    A few `is_due` tests whatever the gap: a due execution count is a
    multiple of the period or of its own gap, and gaps never shrink, so
    only multiples of the period and of the current gap are candidates.
    The callback asks this once per row, not each step (`GradFlow._due`).
    """
    if period <= 0:
        return None
    steady = max(period // unit, 1)
    execution = max(after, 0) // unit + 1  # the first whose last step is > after
    while not is_due(execution * unit, period, dense_start, unit):
        width = gap(execution, steady, dense_start)
        execution = min(-(-execution // width) * width, -(-execution // steady) * steady)
    return execution * unit
