"""Server-side downsampling of the heatmap matrix (pure numpy, no TensorBoard)."""

import numpy as np
import pytest

from plugin_fixtures import reference_cells
from tb_gradflow.plugin import downsample


def test_small_input_is_kept_sample_for_sample():
    values = np.arange(12, dtype=float).reshape(4, 3) + 1
    d = downsample.downsample_columns(values, max_columns=10)
    assert d.identity
    np.testing.assert_array_equal(d.pick(values), values)
    assert d.starts.tolist() == [0, 1, 2, 3] and d.ends.tolist() == [1, 2, 3, 4]


def test_buckets_cover_every_sample_once_with_near_equal_sizes():
    starts, ends = downsample.bucket_bounds(10_000, 1000)
    assert starts[0] == 0 and ends[-1] == 10_000
    np.testing.assert_array_equal(starts[1:], ends[:-1])
    assert set((ends - starts).tolist()) == {10}
    starts, ends = downsample.bucket_bounds(1001, 1000)
    assert set((ends - starts).tolist()) <= {1, 2} and ends[-1] == 1001


def test_one_step_spike_survives_any_zoom():
    values = np.full((10_000, 2), 1e-3)
    values[6543, 1] = 10.0
    d = downsample.downsample_columns(values, max_columns=100)
    shown = d.pick(values)
    assert shown.shape == (100, 2)
    assert shown[:, 1].max() == 10.0
    column = int(np.argmax(shown[:, 1]))
    assert d.index[column, 1] == 6543  # the cell knows the exact sample it shows
    assert d.starts[column] <= 6543 < d.ends[column]
    assert np.all(shown[:, 0] == 1e-3)


def test_one_step_dip_survives_too():
    values = np.full((1000, 1), 1.0)
    values[500, 0] = 1e-9  # a layer that went silent for one logged step
    shown = downsample.downsample_columns(values, max_columns=10).pick(values)
    assert shown.min() == 1e-9


def test_extreme_is_chosen_by_distance_from_the_layers_median_in_log_space():
    # Bucket holds 1e-3 .. 1e3 around a median of 1: 1e3 is 3 decades up,
    # 1e-4 would be 4 decades down.
    values = np.ones((20, 1))
    values[2, 0] = 1e3
    values[3, 0] = 1e-4
    shown = downsample.downsample_columns(values, max_columns=2).pick(values)
    assert shown[0, 0] == 1e-4
    values[3, 0] = 1e-2
    shown = downsample.downsample_columns(values, max_columns=2).pick(values)
    assert shown[0, 0] == 1e3


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_wins_its_bucket(bad):
    values = np.full((100, 3), 0.5)
    values[10:20, 1] = 1e6
    values[55, 1] = bad
    shown = downsample.downsample_columns(values, max_columns=5).pick(values)
    assert np.isnan(shown[2, 1]) if np.isnan(bad) else shown[2, 1] == bad
    assert np.all(np.isfinite(np.delete(shown[:, 1], 2)))


def test_zeros_and_all_nan_layers_do_not_break_it():
    values = np.zeros((50, 3))
    values[:, 1] = np.nan
    values[:, 2] = np.linspace(1, 2, 50)
    d = downsample.downsample_columns(values, max_columns=7)
    shown = d.pick(values)
    assert np.all(shown[:, 0] == 0) and np.all(np.isnan(shown[:, 1]))
    assert np.all((d.index >= 0) & (d.index < 50))


def test_alert_flags_are_ored_over_each_bucket():
    flags = np.zeros((100, 2), np.uint8)
    flags[42, 0] = 1
    flags[43, 0] = 4
    d = downsample.downsample_columns(np.ones((100, 2)), max_columns=10)
    reduced = downsample.reduce_flags(flags, d)
    assert reduced.shape == (10, 2)
    assert reduced[4, 0] == 5 and reduced.sum() == 5


def test_empty_and_invalid_input():
    d = downsample.downsample_columns(np.zeros((0, 4)), max_columns=10)
    assert d.pick(np.zeros((0, 4))).shape == (0, 4)
    with pytest.raises(ValueError):
        downsample.downsample_columns(np.zeros(5), max_columns=3)
    with pytest.raises(ValueError):
        downsample.bucket_bounds(5, 0)


def test_300_layers_by_10000_steps_is_fast():
    import time

    values = np.random.default_rng(0).lognormal(size=(10_000, 300))
    start = time.perf_counter()
    d = downsample.downsample_columns(values, max_columns=1024)
    d.pick(values)
    assert time.perf_counter() - start < 5.0  # generous: ~0.3 s on 2 cores


@pytest.mark.parametrize("seed", range(6))
def test_cells_are_those_of_the_definition_on_nan_inf_zeros_and_ties(seed):
    """The magnitudes-first implementation picks the same sample as the
    definition in log space, on float32 data as the writer stores it, given
    as float32 or widened to float64."""
    rng = np.random.default_rng(seed)
    for trial in range(25):
        n, layers, columns = int(rng.integers(2, 1500)), int(rng.integers(1, 9)), int(rng.integers(1, 200))
        values = (10.0 ** rng.normal(rng.uniform(-8, 2), rng.uniform(0.01, 3), (n, layers))).astype(np.float32)
        values = values.astype(np.float64) * rng.choice([-1.0, 1.0], (n, layers))
        mess, share = rng.random((n, layers)), rng.uniform(0, 0.08) * (trial % 2)
        values[mess < share / 4] = np.nan
        values[(mess > share / 4) & (mess < share / 2)] = np.inf
        values[(mess > share / 2) & (mess < 3 * share / 4)] = -np.inf
        values[(mess > 3 * share / 4) & (mess < share)] = 0.0
        if trial % 3 == 0:
            values = np.round(values * 4) / 4  # ties, and zeros
        if trial % 5 == 0:
            values[:, 0] = 0.0 if trial % 2 else np.nan
        d = downsample.downsample_columns(values, columns)
        np.testing.assert_array_equal(d.index, reference_cells(values, columns), err_msg=f"trial {trial}")
        # The reader hands over float32 as stored: the same cells as its exact float64 widening.
        stored = values.astype(np.float32)
        np.testing.assert_array_equal(stored.astype(np.float64), values)
        np.testing.assert_array_equal(downsample.downsample_columns(stored, columns).index, d.index,
                                      err_msg=f"float32, trial {trial}")


def test_alert_flags_set_directly_equal_the_per_row_flags():
    """alert_flags on the verdicts' own rows (bits set per fired cell, or OR-ed
    per column when many fired) gives the per-row path's flags."""
    from tb_gradflow import rules
    from tb_gradflow.plugin import responses

    rng = np.random.default_rng(4)
    for trial in range(30):
        n, layers, columns = int(rng.integers(1, 400)), int(rng.integers(1, 6)), int(rng.integers(1, 50))
        steps = np.sort(rng.choice(10 * n, n, replace=False))
        share = rng.choice([0.0, 0.01, 0.5])
        verdicts = {kind: (rng.random((n, layers)) < share, np.zeros((n, layers))) for kind in rules.KINDS}
        starts, _ = downsample.bucket_bounds(n, columns)
        direct = responses.alert_flags(steps, layers, (steps, verdicts), starts)
        # Verdict rows for one more step than the series: the per-row path, same flags.
        extra = {kind: (np.vstack([f, np.ones((1, layers), bool)]), np.vstack([v, np.zeros((1, layers))]))
                 for kind, (f, v) in verdicts.items()}
        per_row = responses.alert_flags(steps, layers, (np.append(steps, 10 * n + 1), extra), starts)
        np.testing.assert_array_equal(direct, per_row, err_msg=f"trial {trial}")
