"""Server-side downsampling of a [steps x layers] matrix for the heatmap.

    >>> import numpy as np
    >>> values = np.ones((8, 1)); values[5, 0] = 1e3          # one spike
    >>> d = downsample_columns(values, max_columns=2)
    >>> d.starts.tolist(), d.index[:, 0].tolist(), d.pick(values)[:, 0].tolist()
    ([0, 4], [0, 5], [1.0, 1000.0])

The heatmap is drawn one pixel column or more per column, so a run with
10,000 logged steps is cut into at most `max_columns` buckets of consecutive
samples (equal counts, they differ by at most one). Every cell then shows ONE
REAL SAMPLE of its bucket, never an average, so its hover value is exact and
its step is known. Which sample (per layer, per bucket):

1. the first non-finite value (NaN or +-Inf) in the bucket, if any: a blow-up
   must survive any zoom level;
2. otherwise the bucket's maximum or minimum, whichever lies farther, in
   log10 space, from the layer's median over the whole run (ties go to the
   maximum). A one-step spike survives, and so does a one-step dip (a layer
   that went silent), since both are extremes of their bucket. Exact zeros
   count as the lowest possible value.

Alert flags are OR-ed over the bucket (`reduce_flags`), so a cell is marked
when the alert fired at any step it covers.

Pure numpy; no TensorBoard, no TensorFlow.
"""

import dataclasses

import numpy as np

from tb_gradflow.rules import _quiet_nan_warnings, _stored_float

# log10 used for exact zeros: lower than any float64 (smallest subnormal ~1e-324).
_LOG10_ZERO = -400.0


@dataclasses.dataclass
class Downsampled:
    """Where each column comes from.

    starts: int64 [n_columns], index of the first sample of each bucket.
    ends: int64 [n_columns], one past the last sample of each bucket.
    index: int64 [n_columns, n_layers], the sample shown in each cell.
    """

    starts: np.ndarray
    ends: np.ndarray
    index: np.ndarray

    @property
    def identity(self):
        """True when every sample is its own column (nothing was dropped)."""
        return bool(np.all(self.ends - self.starts == 1))

    def pick(self, values):
        """values[index] per layer: the [n_columns, n_layers] matrix to draw."""
        values = np.asarray(values)
        if values.shape[0] == 0:
            return values[:0]
        return np.take_along_axis(values, self.index, axis=0)


def bucket_bounds(n_samples, max_columns):
    """(starts, ends) of min(n_samples, max_columns) buckets of consecutive samples."""
    if max_columns < 1:
        raise ValueError(f"max_columns must be >= 1, got {max_columns!r}")
    n_columns = min(int(n_samples), int(max_columns))
    edges = np.linspace(0, n_samples, n_columns + 1).round().astype(np.int64)
    return edges[:-1], edges[1:]


def _log10_magnitude(values):
    """log10 |values| in float64 (float32 input widens exactly), _LOG10_ZERO at zeros."""
    values = np.asarray(values, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(np.abs(values))
    out[np.abs(values) == 0] = _LOG10_ZERO
    return out


def _median_where(values, mask):
    """np.nanmedian(np.where(mask, values, nan), axis=1), by one partition when
    every mask row is full (the usual case: no zeros, nothing non-finite)."""
    n = values.shape[1]
    if mask.all() and n:
        middle = sorted({(n - 1) // 2, n // 2})
        parted = np.partition(values, middle, axis=1)
        return (parted[:, (n - 1) // 2] + parted[:, n // 2]) / 2
    with np.errstate(invalid="ignore"), _quiet_nan_warnings():
        return np.nanmedian(np.where(mask, values, np.nan), axis=1)


def downsample_columns(values, max_columns):
    """Chooses one sample per (bucket, layer); see the module docstring.

    Args:
      values: float array [n_samples, n_layers], rows in step order (float32
        or float64, worked on as given; anything else as float64).
      max_columns: int >= 1.

    Returns:
      Downsampled.
    """
    values = _stored_float(values)
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D [steps, layers], got shape {values.shape}")
    n, n_layers = values.shape
    starts, ends = bucket_bounds(n, max_columns)
    if n <= max_columns:
        index = np.repeat(np.arange(n, dtype=np.int64)[:, None], n_layers, axis=1)
        return Downsampled(starts=starts, ends=ends, index=index)
    # Layers are independent: a few at a time, so that every temporary is a
    # ~1 MB block whatever the run's size. Whole-matrix temporaries (a
    # 300-layer x 10,000-step run: four of 3-12 MB) land in fresh pages on
    # most requests, and on some machines a fresh page costs more than the
    # arithmetic on it.
    index = np.empty((n_layers, starts.size), np.int64)
    block = max(1, _BLOCK_ELEMENTS // n)
    for lo in range(0, n_layers, block):
        index[lo : lo + block] = _choose_samples(values[:, lo : lo + block], starts, ends)
    return Downsampled(starts=starts, ends=ends, index=np.ascontiguousarray(index.T))


# Samples per block of layers in downsample_columns (1 MB of float32).
_BLOCK_ELEMENTS = 1 << 18


def _choose_samples(values, starts, ends):
    """int64 [n_layers, n_columns]: downsample_columns' index (transposed) of a block of layers."""
    n_layers = values.shape[1]
    # Everything is decided on magnitudes: log10 is monotonic, so the bucket
    # extremes and the median's samples in log space are those of |value|,
    # and only those few samples are taken to log space (the same floats the
    # definition gives). Per layer, the samples lie contiguous ([n_layers, n]):
    # the bucket reductions run along the fast axis. Comparisons and picks run
    # in the stored precision (float32 widens exactly, so they pick the same
    # samples); the few log10s are taken in float64.
    magnitude = np.abs(values.T, order="C")
    # NaN propagates through both reductions and +Inf tops the maxima: a
    # bucket holding a non-finite sample has a non-finite maximum.
    bucket_min = np.minimum.reduceat(magnitude, starts, axis=1)
    bucket_max = np.maximum.reduceat(magnitude, starts, axis=1)
    regular = np.isfinite(bucket_max)
    # Layers with a zero or a non-finite sample take the median over their
    # usable samples the general way; the others by one partition.
    plain = regular.all(axis=1) & (bucket_min > 0).all(axis=1)
    median = np.empty(n_layers)
    if plain.any():
        median[plain] = _median_log10(magnitude if plain.all() else magnitude[plain])
    if not plain.all():
        odd = magnitude[~plain]
        usable = np.isfinite(odd) & (odd != 0)
        median[~plain] = _median_where(_log10_magnitude(np.where(usable, odd, 0.0)), usable)
    median = np.where(np.isnan(median), 0.0, median)[:, None]

    take_max = (_log10_magnitude(bucket_max) - median) >= (median - _log10_magnitude(bucket_min))
    target = np.where(take_max, bucket_max, bucket_min)
    sizes = ends - starts
    index = _first_equal(magnitude, np.repeat(target, sizes, axis=1), starts, sizes)
    if not regular.all():
        # The first non-finite sample wins its bucket.
        first_bad = _first_equal(~np.isfinite(magnitude), True, starts, sizes)
        index = np.where(regular, index, first_bad)
    return index


def _median_log10(magnitude):
    """Per row, the median of log10(magnitude) (finite, non-zero values): by one
    partition of the magnitudes, the middle one or two samples then in log space."""
    n = magnitude.shape[1]
    parted = np.partition(magnitude, n // 2, axis=1)
    upper = parted[:, n // 2].astype(np.float64)
    lower = parted[:, : n // 2].max(axis=1).astype(np.float64) if n % 2 == 0 else upper
    return (np.log10(lower) + np.log10(upper)) / 2


def _first_equal(values, target, starts, sizes):
    """int64 [rows, buckets]: per bucket of each row, the first sample where
    values == target (target [rows, n] or a scalar), else the bucket's last sample."""
    rows, n = values.shape
    hits = np.flatnonzero(values == target)
    bucket_of_sample = np.repeat(np.arange(starts.size), sizes)
    group = (hits // n) * starts.size + bucket_of_sample[hits % n]
    first = np.ones(group.size, bool)
    first[1:] = group[1:] != group[:-1]
    index = np.repeat((starts + sizes - 1)[None, :], rows, axis=0)
    index.flat[group[first]] = hits[first] % n
    return index


def reduce_flags(flags, downsampled):
    """Bitwise OR of integer flags [n_samples, n_layers] over each bucket."""
    flags = np.asarray(flags)
    if flags.shape[0] == 0:
        return flags[:0]
    return np.bitwise_or.reduceat(flags, downsampled.starts, axis=0)
