"""Host side: raw on-device sums (one read per write) -> named statistics.

    >>> import numpy as np
    >>> from tb_gradflow.aggregate import RawSnapshot, per_variable, per_layer
    >>> raw = RawSnapshot(
    ...     moments=np.array([[25.0, 7.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]]),
    ...     sizes=np.array([2, 1]), has_gradient=np.array([True, True]),
    ...     nonfinite_interval=np.zeros(2),
    ...     variable_interval_max=np.array([25.0, 0.0]), variable_interval_min=np.array([25.0, 0.0]),
    ...     layer_interval_max=np.array([25.0]), layer_interval_min=np.array([25.0]),
    ...     weight_sum_squares=np.array([4.0, 0.0]), update_sum_squares=np.array([0.04, 0.0]))
    >>> per_variable(raw)["grad_norm"].tolist()
    [5.0, 0.0]
    >>> per_layer(raw, layer_of_variable=np.array([0, 0]), n_layers=1)["grad_rms"].round(4).tolist()
    [2.8868]

The device keeps sums (of squares, of |g|, counts) because they add up
exactly across the variables of a layer; norms, RMS and ratios are derived
here, once per write, in float64.
"""

import dataclasses

import numpy as np

from tb_gradflow import metadata

# Column order of RawSnapshot.moments (matches stats.gradient_moments).
SUM_SQUARES, SUM_ABS, MAX_ABS, ZERO_COUNT, NONFINITE_COUNT = range(5)
NUM_MOMENTS = 5


@dataclasses.dataclass
class RawSnapshot:
    """What the device accumulated, read back in one go. Arrays are per variable
    ([n_variables]) unless named layer_*."""

    moments: np.ndarray  # [V, 5] at the logged step
    sizes: np.ndarray  # [V] element counts
    has_gradient: np.ndarray  # [V] bool
    nonfinite_interval: np.ndarray  # [V] summed over the interval
    variable_interval_max: np.ndarray  # [V] max sum of squares over the interval
    variable_interval_min: np.ndarray  # [V]
    layer_interval_max: np.ndarray  # [L] max layer sum of squares over the interval
    layer_interval_min: np.ndarray  # [L]
    weight_sum_squares: np.ndarray  # [V] after the update at the logged step
    update_sum_squares: np.ndarray  # [V] ||w_after - w_before||^2 (NaN if not measured)
    # [V] ||w_before||^2, the update ratio's denominator (metadata.UPDATE_RATIO);
    # None: fall back to weight_sum_squares (weights after the update).
    weight_before_sum_squares: np.ndarray = None
    # [V] sum of squares of the gradient the optimizer applied after clipping
    # (metadata.CLIP_FACTOR); None: the optimizer does not clip.
    applied_sum_squares: np.ndarray = None
    # The dynamic loss scale of the latest step (mixed precision); NaN or None without one.
    loss_scale: np.ndarray = None
    # The loss of every step since the previous row (`GradientRecorder.record_loss`):
    # the row step's, the interval's finite extremes, the steps it was non-finite.
    # NaN where not recorded (custom loops).
    loss: float = float("nan")
    loss_interval_max: float = float("nan")
    loss_interval_min: float = float("nan")
    nonfinite_loss_steps: float = float("nan")


def _ratio(numerator, denominator):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _statistics(moments, sizes, nonfinite, interval_max, interval_min, weight_sq, update_sq, has_gradient, before_sq=None):
    moments = np.asarray(moments, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    finite_count = sizes - moments[:, NONFINITE_COUNT]
    out = {
        metadata.GRAD_NORM: np.sqrt(moments[:, SUM_SQUARES]),
        metadata.GRAD_RMS: np.sqrt(_ratio(moments[:, SUM_SQUARES], finite_count)),
        metadata.GRAD_MEAN_ABS: _ratio(moments[:, SUM_ABS], finite_count),
        metadata.GRAD_MAX_ABS: moments[:, MAX_ABS],
        metadata.GRAD_NORM_INTERVAL_MAX: np.sqrt(np.asarray(interval_max, np.float64)),
        metadata.GRAD_NORM_INTERVAL_MIN: np.sqrt(np.asarray(interval_min, np.float64)),
        metadata.NONFINITE_COUNT: np.asarray(nonfinite, np.float64),
        metadata.ZERO_FRACTION: _ratio(moments[:, ZERO_COUNT], sizes),
        metadata.WEIGHT_NORM: np.sqrt(np.asarray(weight_sq, np.float64)),
        # ||w_after - w_before|| / ||w_before|| (NaN where the weights were 0).
        metadata.UPDATE_RATIO: _ratio(
            np.sqrt(np.asarray(update_sq, np.float64)),
            np.sqrt(np.asarray(weight_sq if before_sq is None else before_sq, np.float64)),
        ),
    }
    missing = ~np.asarray(has_gradient, bool)
    for name, values in out.items():
        if name not in (metadata.WEIGHT_NORM, metadata.UPDATE_RATIO):
            values[missing] = np.nan
    return out


def _with_clip_factor(out, applied_sq, sum_sq, has_gradient):
    if applied_sq is not None:
        factor = np.sqrt(_ratio(np.asarray(applied_sq, np.float64), np.asarray(sum_sq, np.float64)))
        factor[~np.asarray(has_gradient, bool)] = np.nan
        out[metadata.CLIP_FACTOR] = factor
    return out


def per_variable(raw):
    """{statistic: float64 [n_variables]}; NaN where a variable has no gradient."""
    out = _statistics(
        raw.moments,
        raw.sizes,
        raw.nonfinite_interval,
        raw.variable_interval_max,
        raw.variable_interval_min,
        raw.weight_sum_squares,
        raw.update_sum_squares,
        raw.has_gradient,
        raw.weight_before_sum_squares,
    )
    return _with_clip_factor(out, raw.applied_sum_squares, raw.moments[:, SUM_SQUARES], raw.has_gradient)


def per_layer(raw, *, layer_of_variable, n_layers):
    """{statistic: float64 [n_layers]}; sums of a layer's variables, then derived.

    Layers none of whose variables had a gradient get NaN (weight statistics
    stay, they exist without a gradient).
    """
    layer_of_variable = np.asarray(layer_of_variable)

    def segment(values, reduce=np.add):
        values = np.asarray(values, np.float64)
        if reduce is np.add:
            # np.bincount adds in the same order as np.add.at (NaN propagates),
            # several times faster: a row sums a dozen columns.
            if values.ndim == 1:
                return np.bincount(layer_of_variable, weights=values, minlength=n_layers)
            columns = values.reshape(values.shape[0], -1)
            out = np.stack([np.bincount(layer_of_variable, weights=c, minlength=n_layers) for c in columns.T], axis=1)
            return out.reshape((n_layers,) + values.shape[1:])
        out = np.full((n_layers,) + values.shape[1:], -np.inf if reduce is np.maximum else 0.0)
        with np.errstate(invalid="ignore"):  # NaN marks "not measured"; let it propagate.
            reduce.at(out, layer_of_variable, values)
        return out

    moments = segment(np.where(raw.has_gradient[:, None], raw.moments, 0.0))
    moments[:, MAX_ABS] = np.maximum(segment(np.where(raw.has_gradient, raw.moments[:, MAX_ABS], 0.0), np.maximum), 0.0)
    has_gradient = segment(raw.has_gradient.astype(np.float64)) > 0
    sizes = segment(np.where(raw.has_gradient, raw.sizes, 0))
    out = _statistics(
        moments,
        sizes,
        segment(np.where(raw.has_gradient, raw.nonfinite_interval, 0.0)),
        raw.layer_interval_max,
        raw.layer_interval_min,
        segment(raw.weight_sum_squares),
        segment(raw.update_sum_squares),
        has_gradient,
        None if raw.weight_before_sum_squares is None else segment(raw.weight_before_sum_squares),
    )
    if raw.applied_sum_squares is not None:
        applied = segment(np.where(raw.has_gradient, raw.applied_sum_squares, 0.0))
        _with_clip_factor(out, applied, moments[:, SUM_SQUARES], has_gradient)
    # Layers with no trainable variable at all (frozen) have no statistic.
    without_variables = segment(np.ones(layer_of_variable.shape)) == 0
    for values in out.values():
        values[without_variables] = np.nan
    return out


@dataclasses.dataclass
class ActivationSnapshot:
    """One read of the activation recorder: lists with one entry per captured
    activation (the recorder's order), taken at train step `step` (-1: none yet)."""

    step: int
    moments: list  # [6] each, columns as stats.ACT_* (see activation_statistics)
    active: list  # [units] each: elements with f'(z) != 0, per unit
    histogram_range: list  # [2] each: finite pre-activation range
    histogram_counts: list  # [HISTOGRAM_BUCKETS] each


def activation_statistics_rows(moments):
    """{statistic: float64 [m]} of m activations from their moments [m, 6]
    (columns as stats.ACT_*, see stats.activation_statistics).

    >>> s = activation_statistics_rows(np.array([[1.0, 4.0, 4.0, 2.0, 1.0, 1.0]]))
    >>> s["saturated_fraction"].tolist(), s["activation_mean"].tolist(), s["activation_std"].round(4).tolist()
    ([0.25], [0.5], [0.5])
    """
    moments = np.asarray(moments, np.float64).reshape(-1, 6)
    saturated, size, finite, total, m2, sum_sq_over_n = moments.T
    measured = finite > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(measured, total / np.where(measured, finite, 1.0), np.nan)
        # Chan et al.'s parallel variance: the replicas' own M2 plus the spread
        # of their means (sum_i n_i mean_i^2 - n mean^2); zero on one replica.
        m2_total = m2 + sum_sq_over_n - np.where(measured, total * mean, 0.0)
        return {
            metadata.SATURATED_FRACTION: np.where(size > 0, saturated / np.where(size > 0, size, 1.0), np.nan),
            metadata.ACTIVATION_MEAN: mean,
            metadata.ACTIVATION_STD: np.where(
                measured, np.sqrt(np.maximum(m2_total, 0.0) / np.where(measured, finite, 1.0)), np.nan
            ),
        }
