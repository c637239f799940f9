"""On-device gradient statistics: pure TensorFlow ops, no I/O, XLA-compatible.

    >>> import tensorflow as tf
    >>> from tb_gradflow import stats
    >>> m = stats.gradient_moments(tf.constant([3.0, -4.0, 0.0, float("nan")]))
    >>> [float(x) for x in m]   # sum g^2, sum |g|, max |g|, zeros, non-finite
    [25.0, 7.0, 4.0, 1.0, 1.0]

Everything here runs inside the compiled train step, so it avoids ops without
an XLA kernel (`tf.histogram_fixed_width`, summary ops) and never builds an
N x buckets intermediate (what makes `tf.summary.histogram` run out of memory
on large layers): bucket indices are computed elementwise and counted with
`DenseBincount` at a constant size (XLA needs the size at compile time, which
`tf.math.bincount` does not give it). Elements to leave out get the index
`size`, which DenseBincount skips. On CPU it counts 131k elements about ten
times faster than `unsorted_segment_sum`.

Statistics cover finite elements; NaN and Inf are counted, not summed, so one
bad element does not erase a layer's norm.
"""

import tensorflow as tf

from tb_gradflow.aggregate import NUM_MOMENTS  # noqa: F401  (column layout lives there)
from tb_gradflow.metadata import HISTOGRAM_BUCKETS, LOG10_BUCKETS, LOG10_LOW



def gradient_moments(grad):
    """[5] float32: sum g^2, sum |g|, max |g|, #zeros, #non-finite (finite-only sums)."""
    g = tf.reshape(tf.cast(grad, tf.float32), [-1])
    finite = tf.math.is_finite(g)
    absolute = tf.where(finite, tf.abs(g), tf.zeros_like(g))
    size = tf.cast(tf.size(g), tf.float32)
    return tf.stack(
        [
            # l2_loss is one fused kernel without XLA (square + sum would be two passes).
            2.0 * tf.nn.l2_loss(absolute),
            tf.reduce_sum(absolute),
            # max of an empty tensor is -inf: clamp to 0 (no copy, unlike padding it).
            tf.maximum(tf.reduce_max(absolute), 0.0),
            size - tf.math.count_nonzero(g, dtype=tf.float32),
            size - tf.math.count_nonzero(finite, dtype=tf.float32),
        ]
    )


def sum_squares(tensor):
    """Sum of squares of the finite elements, as float32."""
    t = tf.cast(tf.reshape(tensor, [-1]), tf.float32)
    t = tf.where(tf.math.is_finite(t), t, tf.zeros_like(t))
    return tf.reduce_sum(tf.square(t))


def finite_extremes(tensor):
    """float32 [2]: min and max of the finite elements of one tensor; (inf, -inf) if none."""
    t = tf.cast(tf.reshape(tensor, [-1]), tf.float32)
    finite = tf.math.is_finite(t)
    return tf.stack([tf.reduce_min(tf.where(finite, t, float("inf"))), tf.reduce_max(tf.where(finite, t, float("-inf")))])


def finite_range(tensors):
    """(min, max) over the finite elements of several tensors; (0, 0) if none."""
    extremes = tf.stack([finite_extremes(t) for t in tensors])
    low = tf.reduce_min(extremes[:, 0])
    high = tf.reduce_max(extremes[:, 1])
    empty = tf.logical_not(tf.math.is_finite(low))
    return tf.where(empty, 0.0, low), tf.where(empty, 0.0, high)


def _count(index, size):
    """int32 [size] occurrences of each index in [0, size); others are skipped."""
    return tf.raw_ops.DenseBincount(input=index, size=size, weights=tf.zeros([0], tf.int32), binary_output=False)


def equal_width_counts(tensors, low, high, buckets=HISTOGRAM_BUCKETS):
    """int32 [buckets] counts of the finite elements of `tensors` over [low, high].

    The same bucketing as TensorBoard's histogram summary (closed-open buckets,
    last one closed; single-valued data all in the last bucket), counted
    without an N x buckets intermediate, so memory stays O(N).

    >>> import tensorflow as tf
    >>> equal_width_counts([tf.constant([0.0, 1.0, 2.9, 3.0, float("nan")])], 0.0, 3.0, buckets=3).numpy().tolist()
    [1, 1, 2]
    """
    t = flat(tensors)
    width = (high - low) / buckets
    safe_width = tf.where(width > 0, width, 1.0)
    index = tf.clip_by_value(tf.cast(tf.floor((t - low) / safe_width), tf.int32), 0, buckets - 1)
    counts = _count(tf.where(tf.math.is_finite(t), index, buckets), buckets)
    # Zero width: every finite element counted in bucket 0 above; TensorBoard
    # puts them in the last one.
    last = tf.one_hot(buckets - 1, buckets, dtype=tf.int32)
    return tf.where(width > 0, counts, last * tf.reduce_sum(counts))


def flat(tensors):
    """The elements of `tensors` as one float32 vector: the counts are a
    dozen elementwise ops each, and on a layer's small tensors each op's
    fixed cost, not its arithmetic, is the time."""
    flat = [tf.cast(tf.reshape(t, [-1]), tf.float32) for t in tensors]
    return flat[0] if len(flat) == 1 else tf.concat(flat, axis=0)


def log10_magnitude_counts(tensors):
    """int32 [LOG10_BUCKETS] counts of floor(log10 |g|) for finite non-zero g.

    The decade is found by comparing |g| in float64 (where every float32
    value and each 10^k are exact enough to order right) with the bucket
    boundaries 10^(LOG10_LOW + 1) ... 10^(LOG10_HIGH - 1): values below the
    first go to bucket 0, from the last on to the last bucket. (A float32
    log10 rounds near powers of ten: 10.0 -> 0.99999994.)
    """
    t = tf.abs(flat(tensors))
    keep = tf.logical_and(tf.math.is_finite(t), t > 0)
    boundaries = tf.pow(tf.constant(10.0, tf.float64), tf.range(LOG10_LOW + 1, LOG10_LOW + LOG10_BUCKETS, dtype=tf.float64))
    index = tf.searchsorted(boundaries[None, :], tf.cast(t, tf.float64)[None, :], side="right", out_type=tf.int32)[0]
    return _count(tf.where(keep, index, LOG10_BUCKETS), LOG10_BUCKETS)


# Column layout of activation_moments (the host derives the statistics in
# run_logger; all columns add up across replicas, see ActivationRecorder).
ACT_SATURATED, ACT_SIZE, ACT_FINITE, ACT_SUM, ACT_M2, ACT_SUM_SQUARED_OVER_N = range(6)
NUM_ACTIVATION_MOMENTS = 6


def activation_derivative(function, z):
    """(f(z), f'(z)) elementwise, by autodiff of the activation itself.

    Valid for elementwise activations (the gradient of sum f(z) is f'(z));
    the capture checks that before using it. `z` is cut from the training
    tape, so nothing here reaches the model's gradients.

    >>> import tensorflow as tf
    >>> a, d = activation_derivative(tf.nn.relu, tf.constant([-1.0, 2.0]))
    >>> d.numpy().tolist()
    [0.0, 1.0]
    """
    z = tf.stop_gradient(z)
    with tf.GradientTape() as tape:
        tape.watch(z)
        a = function(z)
    d = tape.gradient(a, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return a, d


# Activations whose derivative follows from their output a = f(z), by the
# op that computes a from z: the same formulas as TensorFlow's own gradients
# of these ops (ReluGrad, SigmoidGrad, TanhGrad, EluGrad, SeluGrad, ...),
# which read the output too.
_SELU_SCALE, _SELU_ALPHA = 1.0507009873554805, 1.6732632423543772
OUTPUT_DERIVATIVES = {
    "Relu": lambda a: tf.cast(a > 0, a.dtype),
    "Relu6": lambda a: tf.cast(tf.logical_and(a > 0, a < 6), a.dtype),
    "Sigmoid": lambda a: a * (1 - a),
    "Tanh": lambda a: 1 - a * a,
    "Elu": lambda a: tf.where(a > 0, tf.ones_like(a), a + 1),
    "Selu": lambda a: tf.where(a > 0, _SELU_SCALE * tf.ones_like(a), a + _SELU_SCALE * _SELU_ALPHA),
    "Exp": lambda a: a,
}


def activation_statistics(function, z, threshold, unit_axis=-1):
    """Statistics of one activation call from its input z, for ActivationRecorder.

    Returns (moments float32 [6], active float32 [units]):
      moments: saturated count (|f'(z)| < threshold), element count, finite
        activation count, sum f(z), sum (f(z) - local mean)^2 and
        (sum f(z))^2 / finite count (additive across replicas);
      active: per unit (the `unit_axis` of z), the elements with f'(z) != 0.
    """
    a, d = activation_derivative(function, z)
    return _activation_moments(a, d, threshold, unit_axis)


def activation_statistics_from_output(op_type, a, threshold, unit_axis=-1):
    """As `activation_statistics`, from the output a of an `OUTPUT_DERIVATIVES` op.

    >>> import tensorflow as tf
    >>> moments, active = activation_statistics_from_output("Relu", tf.constant([[0.0, 2.0]]), 0.5)
    >>> moments.numpy().tolist()[:2], active.numpy().tolist()
    ([1.0, 2.0], [0.0, 1.0])
    """
    a = tf.stop_gradient(a)
    return _activation_moments(a, OUTPUT_DERIVATIVES[op_type](a), threshold, unit_axis)


def _activation_moments(a, d, threshold, unit_axis):
    d = tf.abs(tf.cast(d, tf.float32))
    a = tf.cast(tf.reshape(a, [-1]), tf.float32)
    finite = tf.math.is_finite(a)
    n_finite = tf.reduce_sum(tf.cast(finite, tf.float32))
    a = tf.where(finite, a, tf.zeros_like(a))
    total = tf.reduce_sum(a)
    local_mean = total / tf.maximum(n_finite, 1.0)
    m2 = tf.reduce_sum(tf.where(finite, tf.square(a - local_mean), tf.zeros_like(a)))
    moments = tf.stack(
        [
            tf.reduce_sum(tf.cast(d < threshold, tf.float32)),
            tf.cast(tf.size(d), tf.float32),
            n_finite,
            total,
            m2,
            total * local_mean,
        ]
    )
    rank = d.shape.rank
    axis = unit_axis % rank
    if axis != rank - 1:
        d = tf.transpose(d, [i for i in range(rank) if i != axis] + [axis])
    # The unit count may be unknown while tracing: the recorder traces one
    # function per kind of activation and rank, whatever the width.
    units = d.shape[-1] if d.shape[-1] is not None else tf.shape(d)[-1]
    active = tf.reduce_sum(tf.cast(tf.reshape(d, [-1, units]) > 0, tf.float32), axis=0)
    return moments, active
