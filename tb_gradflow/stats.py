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

import fractions

import numpy as np
import tensorflow as tf

from tb_gradflow.aggregate import NUM_MOMENTS  # noqa: F401  (column layout lives there)
from tb_gradflow.metadata import HISTOGRAM_BUCKETS, LOG10_BUCKETS, LOG10_HIGH, LOG10_LOW



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


def gradient_moments_masked_if_needed(grad):
    """`gradient_moments`, with the non-finite mask in a branch taken only
    where the gradient has a NaN or Inf element: for code in a call of its
    own (the recorder's isolated per-layer calls); a training graph never
    holds a `tf.cond` of the hook's (docs/event_contract.md, "Exactness").

        >>> import tensorflow as tf
        >>> from tb_gradflow import stats
        >>> [float(x) for x in stats.gradient_moments_masked_if_needed(tf.constant([3.0, -4.0, 0.0]))]
        [25.0, 7.0, 4.0, 1.0, 0.0]

    A gradient is nearly always all finite, and its raw sum of squares says
    so (a NaN or Inf element makes it non-finite). Outside XLA each op is a
    pass over the gradient: the masked moments take a dozen (finite mask,
    zeros, select, each count's cast), these six where all is finite. The
    results equal `gradient_moments`' exactly: on finite elements the mask
    is the identity (same kernels, same order), and a sum of squares that
    overflowed takes the masked branch too.
    """
    g = tf.reshape(tf.cast(grad, tf.float32), [-1])
    square_sum = 2.0 * tf.nn.l2_loss(g)

    def unmasked():
        absolute = tf.abs(g)
        return tf.stack([
            square_sum,
            tf.reduce_sum(absolute),
            tf.maximum(tf.reduce_max(absolute), 0.0),
            tf.cast(tf.size(g), tf.float32) - tf.math.count_nonzero(absolute, dtype=tf.float32),
            tf.constant(0.0),
        ])

    return tf.cond(tf.math.is_finite(square_sum), unmasked, lambda: gradient_moments(g))


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


def _bucket_index(values, low, safe_width, buckets=HISTOGRAM_BUCKETS):
    """int32 equal-width bucket of each value (broadcast against `low` and
    `safe_width`), clipped to [0, buckets): TensorBoard's bucketing."""
    return tf.clip_by_value(tf.cast(tf.floor((values - low) / safe_width), tf.int32), 0, buckets - 1)


def _zero_width_to_last_bucket(counts, width):
    """int32 [n, buckets] counts, where a row's `width` is 0 all in its last
    bucket (they were counted in its first), as `equal_width_counts`."""
    last = tf.one_hot(HISTOGRAM_BUCKETS - 1, HISTOGRAM_BUCKETS, dtype=tf.int32)
    return tf.where((width > 0)[:, None], counts, last[None, :] * tf.reduce_sum(counts, axis=1, keepdims=True))


def join_in_order(blocks, order):
    """The rows of `blocks` (each [k_b, ...]) in the order `order` names:
    one concat, and one gather where the blocks' order differs; no slice
    per row (three constants each)."""
    joined = tf.concat(blocks, axis=0) if len(blocks) > 1 else blocks[0]
    if order != sorted(order):
        joined = tf.gather(joined, np.argsort(order))
    return joined


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
    index = _bucket_index(t, low, safe_width, buckets)
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


def _decade_floors():
    """float32 [LOG10_BUCKETS + 1]: for k in [LOG10_LOW, LOG10_HIGH] the
    smallest float32 at or above 10^k, so that a float32 m >= 10^k (as real
    numbers) exactly when m >= this; found with exact rational arithmetic.

    >>> float(_decade_floors()[-LOG10_LOW])   # 10^0
    1.0
    """
    floors = []
    for k in range(LOG10_LOW, LOG10_HIGH + 1):
        power = fractions.Fraction(10) ** k
        value = np.float32(float(power))
        while fractions.Fraction(float(value)) < power:
            value = np.nextafter(value, np.float32(np.inf))
        below = np.nextafter(value, np.float32(-np.inf))
        while fractions.Fraction(float(below)) >= power:
            value, below = below, np.nextafter(below, np.float32(-np.inf))
        floors.append(value)
    return np.asarray(floors, np.float32)


_DECADE_FLOORS = _decade_floors()
# floor(e * log10(2)) == (e * 1233) >> 12 for every binary exponent e of a
# float32 ([-127, 128]; checked in tests/test_stats.py).
_LOG10_2_NUMERATOR, _LOG10_2_SHIFT = 1233, 12


def _decade_index(magnitude):
    """int32 decade bucket of each element of `magnitude` (float32 |g|, any
    shape), in [0, LOG10_BUCKETS): floor(log10 |g|) - LOG10_LOW, clipped
    (values below 10^(LOG10_LOW + 1) go to bucket 0, from 10^(LOG10_HIGH - 1)
    on to the last bucket). Exact: no float32 log10, which rounds near
    powers of ten (10.0 -> 0.99999994).

    The binary exponent e of |g| (from its bits) gives log10 |g| within
    [e log10 2, (e + 1) log10 2), an interval narrower than one decade, so
    the decade is d = floor(e log10 2) or d + 1, and one comparison with
    the float32 floor of 10^(d + 1) (`_DECADE_FLOORS`) tells which. A few
    integer ops and one lookup per element, where a float64 `searchsorted`
    over the 29 boundaries was: under XLA, `log10_magnitude_counts` of
    ResNet50V2's gradients takes 37 ms instead of 68 ms and the inline row
    statistics with histograms 151 ms instead of 160 ms (seed003_mlp: 4.5
    instead of 5.9 ms); in TensorFlow graphs, where the lookup is a Gather
    kernel, within 5% either way (benchmarks/bench_statistics_ab.py;
    benchmarks/results/statistics_ab_decade_index_vs_1549b0c.json).

    >>> import tensorflow as tf
    >>> _decade_index(tf.constant([1.0, 9.999999, 10.0, 1e-30, 1e30])).numpy().tolist()
    [24, 24, 25, 0, 29]
    """
    magnitude = tf.cast(magnitude, tf.float32)
    exponent = tf.bitwise.right_shift(tf.bitcast(magnitude, tf.int32), 23) - 127
    # Clipped to the decades the table covers (those outside end in the edge
    # buckets either way); also keeps a negative or non-finite input's
    # lookup in range (the callers mask those elements out).
    decade = tf.clip_by_value(tf.bitwise.right_shift(exponent * _LOG10_2_NUMERATOR, _LOG10_2_SHIFT),
                              LOG10_LOW - 1, LOG10_HIGH - 1)
    above = tf.cast(magnitude >= tf.gather(tf.constant(_DECADE_FLOORS), decade + (1 - LOG10_LOW)), tf.int32)
    return tf.clip_by_value(decade + above - LOG10_LOW, 0, LOG10_BUCKETS - 1)


def log10_magnitude_counts(tensors):
    """int32 [LOG10_BUCKETS] counts of floor(log10 |g|) for finite non-zero g
    (the decades of `_decade_index`)."""
    t = tf.abs(flat(tensors))
    keep = tf.logical_and(tf.math.is_finite(t), t > 0)
    return _count(tf.where(keep, _decade_index(t), LOG10_BUCKETS), LOG10_BUCKETS)


# Keys of one layer's joint count: (equal-width bucket, decade or none).
_JOINT_KEYS = HISTOGRAM_BUCKETS * (LOG10_BUCKETS + 1)


def histogram_counts(x, finite, index, layer, n_layers):
    """int32 ([n_layers, HISTOGRAM_BUCKETS] equal-width counts,
    [n_layers, LOG10_BUCKETS] log10 counts) of the finite elements of `x`,
    given their equal-width bucket `index` and `layer` (both int32,
    broadcast against `x`); the decades are `_decade_index`'s, of the
    finite non-zero elements, as `log10_magnitude_counts`.

    Where `x` has at least as many elements as the layers have joint keys
    (layer, bucket, decade or none) and its size is static, one count of
    the joint keys is summed both ways instead of counting twice: under
    XLA a count is a scatter, a serial loop over the elements. The inline
    statistics with histograms took 0.77-0.89 of the time of two counts
    (seed003_mlp 4.7 -> 3.8 ms, ResNet50V2 129 -> 103 ms); in TensorFlow
    graphs 0.93-1.07, within noise (benchmarks/results/
    statistics_ab_joint_histogram_count_vs_b695c28.json). With fewer
    elements than keys (500 layers of Dense(4)) zeroing and summing the
    keys would cost more than the second count saves.

    >>> import tensorflow as tf
    >>> x = tf.constant([0.0, 0.5, 20.0, float("nan")])
    >>> counts, log_counts = histogram_counts(x, tf.math.is_finite(x), tf.constant([0, 1, 1, 1]), 0, 1)
    >>> counts.numpy()[0, :3].tolist(), int(log_counts.numpy().sum())
    ([1, 2, 0], 2)
    """
    magnitude = tf.abs(x)
    keep = tf.logical_and(finite, magnitude > 0)
    decade = _decade_index(magnitude)
    size = x.shape.num_elements()
    if size is not None and size >= n_layers * _JOINT_KEYS:
        key = (layer * HISTOGRAM_BUCKETS + index) * (LOG10_BUCKETS + 1) + tf.where(keep, decade, LOG10_BUCKETS)
        joint = _count(tf.reshape(tf.where(finite, key, n_layers * _JOINT_KEYS), [-1]), n_layers * _JOINT_KEYS)
        joint = tf.reshape(joint, [n_layers, HISTOGRAM_BUCKETS, LOG10_BUCKETS + 1])
        return tf.reduce_sum(joint, axis=2), tf.reduce_sum(joint[:, :, :LOG10_BUCKETS], axis=1)
    counts = _count(tf.reshape(tf.where(finite, layer * HISTOGRAM_BUCKETS + index, n_layers * HISTOGRAM_BUCKETS), [-1]),
                    n_layers * HISTOGRAM_BUCKETS)
    log_counts = _count(tf.reshape(tf.where(keep, layer * LOG10_BUCKETS + decade, n_layers * LOG10_BUCKETS), [-1]),
                        n_layers * LOG10_BUCKETS)
    return tf.reshape(counts, [n_layers, HISTOGRAM_BUCKETS]), tf.reshape(log_counts, [n_layers, LOG10_BUCKETS])


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


# --------------------------------------------------------- many tensors at once
def groups_by_size(tensors):
    """[[index, ...], ...]: the positions of `tensors` of one static element
    count, in first-seen order; a tensor of unknown size is a group of its
    own.

    >>> import tensorflow as tf
    >>> groups_by_size([tf.zeros([2, 3]), tf.zeros([3]), tf.zeros([6]), tf.zeros([3, 1])])
    [[0, 2], [1, 3]]
    """
    groups, order = {}, []
    for i, t in enumerate(tensors):
        size = t.shape.num_elements()
        key = size if size is not None else ("unknown", i)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(i)
    return [groups[key] for key in order]


# Chunk widths `chunk_width` chooses from.
CHUNK_WIDTHS = tuple(2**p for p in range(5, 13))


def sum_rows(rows, by_dot=False):
    """float32 [n]: the sum along each row of `rows` (float32 [n, width]).

        >>> import tensorflow as tf
        >>> sum_rows(tf.constant([[1.0, 2.0], [3.0, 4.0]]), by_dot=True).numpy().tolist()
        [3.0, 7.0]

    `by_dot`: as the product of `rows` with a vector of ones, for code that
    XLA compiles for a CPU. XLA's CPU backend runs a dot in its matrix
    kernel, and a reduction whose input is a fused elementwise expression (a
    square, a mask, a cast) as a plain loop: on rows of 1024 of seed003_mlp's
    647k gradient elements a row sum of squares took ~0.5 ms as a
    reduction, ~0.2 ms as a dot. In `benchmarks/bench_statistics_ab.py`
    (2026-12-04, two runs; benchmarks/results/statistics_ab_sum_rows_by_dot_vs_a20a472.json)
    `multi_tensor_statistics` went from 5.2 to 4.6 and 5.1 to 4.7 ms on
    seed003_mlp and from 4.5 to 4.0 and 3.8 to 3.2 ms on the Transformer
    block, the update ratio's sums from 2.7 to 2.0 and 2.1 ms on
    seed003_mlp (MobileNetV3Small 0.74 and 0.99 of before; statistics left
    unchanged moved by up to 10% in the same runs). The
    activation statistics, whose rows are as narrow as the smallest
    activation (often 32), gained nothing and keep the reduction. Not on
    a GPU or TPU, where a float32 dot may run in TF32 (a 10-bit mantissa)
    or bfloat16 passes and XLA's reductions are fast; nor in TensorFlow
    graphs, whose reduction kernels are multithreaded. The sum may round
    differently from the reduction's (another order); a sum of integers
    below 2**24, a count, is exact either way.
    """
    if by_dot:
        return tf.linalg.matvec(rows, tf.ones([rows.shape[-1]], rows.dtype))
    return tf.reduce_sum(rows, axis=1)


def count_rows(mask, by_dot=False):
    """int32 [n]: the true elements of each row of the bool `mask` [n, width]
    (`sum_rows`; exact: a row holds at most max(CHUNK_WIDTHS) elements)."""
    if by_dot:
        return tf.cast(sum_rows(tf.cast(mask, tf.float32), by_dot=True), tf.int32)
    return tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)


def chunk_width(sizes):
    """The chunk width for tensors of these element counts: the one that
    makes the fewest padded elements plus 16 per chunk (a chunk is a row of
    the segment reductions that follow).

    >>> chunk_width([10, 4]), chunk_width([784 * 512, 512, 10])
    (32, 2048)
    """
    def cost(width):
        chunks = sum(max(1, -(-size // width)) for size in sizes)
        return chunks * (width + 16)

    return min(CHUNK_WIDTHS, key=cost)


def chunk_rows(tensors, width):
    """(x float32 [chunks, width], owner int32 numpy [chunks]): the elements
    of `tensors` (static sizes) cut into rows of `width`, each tensor's last
    row padded with NaN (which every statistic here leaves out as
    non-finite), and the tensor of each row.

    Tensors of one shape are stacked and flattened together, and those of
    one size padded together, so the op count grows with the number of
    distinct shapes, not with the tensors (a 500-layer model's 1000 tensors
    are two stacks and two pads, not a thousand reshapes: flattening each
    tensor on its own was a tenth of the ops a row step traces on mlp50
    and MobileNetV3Small, and XLA lowers and optimizes every one). The rows
    of a size are in the order of their shapes' first appearance, then of
    the tensors; `owner` says whose each row is.

    >>> import tensorflow as tf
    >>> x, owner = chunk_rows([tf.constant([1.0, 2.0, 3.0]), tf.constant([4.0])], 2)
    >>> x.numpy().tolist(), owner.tolist()
    ([[1.0, 2.0], [3.0, nan], [4.0, nan]], [0, 0, 1])
    """
    blocks, owner = [], []
    # Constants shared by every size's pad and reshape (one each per call,
    # not one per size).
    nan, row_shape = tf.constant(float("nan")), tf.constant([-1, width])
    for members in groups_by_size(tensors):
        size = tensors[members[0]].shape.num_elements()
        chunks = max(1, -(-size // width))
        by_shape = {}
        for i in members:
            by_shape.setdefault(tuple(tensors[i].shape.as_list()), []).append(i)
        parts, order = [], []
        for same_shape in by_shape.values():
            stacked = tf.stack([tf.cast(tensors[i], tf.float32) for i in same_shape])
            parts.append(tf.reshape(stacked, [len(same_shape), size]))
            order += same_shape
        block = tf.concat(parts, axis=0) if len(parts) > 1 else parts[0]
        if chunks * width > size:
            block = tf.pad(block, [[0, 0], [0, chunks * width - size]], constant_values=nan)
        blocks.append(tf.reshape(block, row_shape))
        owner += [i for i in order for _ in range(chunks)]
    return (tf.concat(blocks, axis=0) if len(blocks) > 1 else blocks[0]), np.asarray(owner, np.int32)


def multi_tensor_statistics(tensors, layer_of_tensor, n_layers, scale, histograms=True, by_dot=False):
    """The statistics of many tensors in a few ops, for code that runs inline
    in a compiled step (XLA, where each op is compile time).

    All the tensors' elements are cut into rows of one width (`chunk_rows`,
    padded with NaN), every statistic is reduced along the rows, and the
    rows' partial results are summed (or maxed) into tensors and layers by
    segment ops. So the reductions, bucket indices and counts are a fixed
    handful of ops whatever the number and sizes of the tensors: XLA's CPU
    compile of the statistics with histograms alone went from 3.8-5.0 s to
    1.1 s for seed003_mlp's ten gradients and from 28 s to 2.8 s for
    MobileNetV3Small's 142, against one set per stack of equal-size
    tensors (benchmarks/bench_statistics_compile.py; results in
    benchmarks/results/statistics_compile_642bb47_vs_625bcf1.json). The
    per-element arithmetic is the same as `gradient_moments`,
    `finite_range`, `equal_width_counts` and `log10_magnitude_counts` of
    each tensor (or layer) / `scale`; sums may round differently (another
    reduction order), counts, extremes and bucket indices do not. A tensor
    of unknown static size (a trace with `None` dimensions) sends all of
    them to the per-tensor and per-layer functions.

    Args:
      tensors: dense tensors.
      layer_of_tensor: the layer (row of the histogram arrays) of each.
      n_layers: rows of the histogram arrays; a layer without tensors gets
        zeros, as `GradientRecorder` writes for it.
      scale: a float32 scalar the tensors are divided by.
      histograms: compute the per-layer histograms too; a scalar bool
        tensor computes them where it holds (zeros else), in a branch.
      by_dot: sum along the rows by dot products (`sum_rows`; XLA on a CPU).

    Returns:
      (moments [len(tensors), 5] as `gradient_moments`, in the order of
      `tensors`, and with `histograms` a tuple (range [n_layers, 2],
      equal-width counts [n_layers, HISTOGRAM_BUCKETS], log10 counts
      [n_layers, LOG10_BUCKETS]), else None).

    >>> import tensorflow as tf
    >>> m, (r, c, l) = multi_tensor_statistics(
    ...     [tf.constant([3.0, -4.0]), tf.constant([0.0, 1.0]), tf.constant([2.0])], [0, 1, 1], 2, tf.constant(1.0))
    >>> m.numpy().tolist()
    [[25.0, 7.0, 4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 0.0], [4.0, 2.0, 2.0, 0.0, 0.0]]
    >>> r.numpy().tolist()
    [[-4.0, 3.0], [0.0, 2.0]]
    """
    sizes = [t.shape.num_elements() for t in tensors]
    if None in sizes:
        return _per_layer_statistics(tensors, layer_of_tensor, n_layers, scale, histograms)
    width = chunk_width(sizes)
    x, owner = chunk_rows(tensors, width)
    x = x / scale
    k = len(tensors)
    finite = tf.math.is_finite(x)
    absolute = tf.where(finite, tf.abs(x), 0.0)
    sums = tf.math.unsorted_segment_sum(
        tf.stack([sum_rows(tf.square(absolute), by_dot), sum_rows(absolute, by_dot)], axis=1), owner, k)
    # Counts in int32 (exact), made float32 once per tensor.
    finite_in_row = count_rows(finite, by_dot)
    tensor_counts = tf.math.unsorted_segment_sum(
        tf.stack([count_rows(tf.not_equal(x, 0.0), by_dot), finite_in_row], axis=1), owner, k)
    largest = tf.math.unsorted_segment_max(tf.reduce_max(absolute, axis=1), owner, k)
    padded_sizes = np.bincount(owner, minlength=k).astype(np.int32) * width
    moments = tf.stack([
        sums[:, 0],
        sums[:, 1],
        tf.maximum(largest, 0.0),
        # The NaN padding is non-zero and non-finite: it is in the padded
        # size's non-zero count, and not in the size's finite count.
        tf.cast(padded_sizes - tensor_counts[:, 0], tf.float32),
        tf.cast(np.asarray(sizes, np.int32) - tensor_counts[:, 1], tf.float32),
    ], axis=1)
    if not isinstance(histograms, tf.Tensor) and not histograms:
        return moments, None
    row_layer = np.asarray(layer_of_tensor, np.int32)[owner]

    def layer_histograms_of_rows():
        return _row_histograms(x, finite, finite_in_row, row_layer, n_layers)

    if not isinstance(histograms, tf.Tensor):
        return moments, layer_histograms_of_rows()
    # A bool tensor: the histograms in a branch that reads the rows above
    # (one set of rows for both; a branch each with its own rows would
    # compile the moments twice).
    return moments, tf.cond(histograms, layer_histograms_of_rows, lambda: empty_histograms(n_layers))


def _row_histograms(x, finite, finite_in_row, row_layer, n_layers):
    """`multi_tensor_statistics`' per-layer (range, equal-width counts, log10
    counts) of its rows `x` (float32 [chunks, width]), their finite mask and
    finite count per row, and the layer of each row (numpy int32)."""
    low = tf.math.unsorted_segment_min(tf.reduce_min(tf.where(finite, x, float("inf")), axis=1), row_layer, n_layers)
    high = tf.math.unsorted_segment_max(tf.reduce_max(tf.where(finite, x, float("-inf")), axis=1), row_layer, n_layers)
    # Layers without a finite element (or without tensors: the segment ops
    # give those the dtype's extremes) get the range (0, 0), as finite_range.
    empty = tf.equal(tf.math.unsorted_segment_sum(finite_in_row, row_layer, n_layers), 0)
    low, high = tf.where(empty, 0.0, low), tf.where(empty, 0.0, high)
    width_of_bucket = (high - low) / HISTOGRAM_BUCKETS
    safe_width = tf.where(width_of_bucket > 0, width_of_bucket, 1.0)
    index = _bucket_index(x, tf.gather(low, row_layer)[:, None], tf.gather(safe_width, row_layer)[:, None])
    counts, log_counts = histogram_counts(x, finite, index, row_layer[:, None], n_layers)
    return tf.stack([low, high], axis=1), _zero_width_to_last_bucket(counts, width_of_bucket), log_counts


def empty_histograms(n_layers):
    """Zeros in the shapes of `multi_tensor_statistics`' histograms
    (range, equal-width counts, log10 counts of `n_layers` layers)."""
    return (tf.zeros([n_layers, 2]), tf.zeros([n_layers, HISTOGRAM_BUCKETS], tf.int32),
            tf.zeros([n_layers, LOG10_BUCKETS], tf.int32))


def _per_layer_statistics(tensors, layer_of_tensor, n_layers, scale, histograms):
    """`multi_tensor_statistics`' results from the one-tensor and one-layer
    functions (for tensors of unknown static size)."""
    moments = tf.stack([gradient_moments(tf.cast(t, tf.float32) / scale) for t in tensors])
    if not isinstance(histograms, tf.Tensor) and not histograms:
        return moments, None
    empty = (tf.zeros([2]), tf.zeros([HISTOGRAM_BUCKETS], tf.int32), tf.zeros([LOG10_BUCKETS], tf.int32))

    def per_layer_histograms():
        per_layer = [
            layer_histograms([t for t, layer in zip(tensors, layer_of_tensor) if layer == li], scale)
            if li in layer_of_tensor else empty
            for li in range(n_layers)
        ]
        return tuple(tf.stack([histograms_of[k] for histograms_of in per_layer]) for k in range(3))

    if not isinstance(histograms, tf.Tensor):
        return moments, per_layer_histograms()
    return moments, tf.cond(histograms, per_layer_histograms, lambda: empty_histograms(n_layers))


def layer_histograms(tensors, scale):
    """(range [2], equal-width counts [HISTOGRAM_BUCKETS], log10 counts
    [LOG10_BUCKETS]) of one layer's tensors / `scale`, joined.

    >>> import tensorflow as tf
    >>> r, c, l = layer_histograms([tf.constant([3.0, -4.0]), tf.constant([2.0])], tf.constant(1.0))
    >>> r.numpy().tolist(), int(c.numpy().sum()), int(l.numpy().sum())
    ([-4.0, 3.0], 3, 3)
    """
    # Joined and scaled once, not again by each statistic.
    joined = flat(tensors) / scale
    low, high = finite_range([joined])
    width = (high - low) / HISTOGRAM_BUCKETS
    index = _bucket_index(joined, low, tf.where(width > 0, width, 1.0))
    counts, log_counts = histogram_counts(joined, tf.math.is_finite(joined), index, 0, 1)
    return tf.stack([low, high]), _zero_width_to_last_bucket(counts, width[None])[0], log_counts[0]


def _finite_square_sum(rows, by_dot=False):
    """[chunks]: the sum of squares of each row's finite elements (`sum_rows`)."""
    return sum_rows(tf.square(tf.where(tf.math.is_finite(rows), rows, 0.0)), by_dot)


def multi_tensor_sum_squares(tensors, by_dot=False):
    """[len(tensors)]: the sum of squares of each tensor's finite elements
    (`sum_squares`), in a few ops as `multi_tensor_statistics` (the weight
    norms without the update ratio: one reduction over rows, not one per
    variable).

    >>> import tensorflow as tf
    >>> multi_tensor_sum_squares([tf.constant([3.0, 4.0]), tf.constant([float("nan"), 2.0])]).numpy().tolist()
    [25.0, 4.0]
    """
    sizes = [t.shape.num_elements() for t in tensors]
    if None in sizes:
        return tf.stack([sum_squares(t) for t in tensors])
    x, owner = chunk_rows(tensors, chunk_width(sizes))
    return tf.math.unsorted_segment_sum(_finite_square_sum(x, by_dot), owner, len(tensors))


def multi_tensor_update_sums(weights, before, by_dot=False):
    """[len(weights), 3]: ||w||^2, ||w - w_before||^2, ||w_before||^2 of each
    pair over its finite elements (`sum_squares`), in a few ops as
    `multi_tensor_statistics` (both cut into the same rows).

    >>> import tensorflow as tf
    >>> multi_tensor_update_sums([tf.constant([3.0, 4.0])], [tf.constant([3.0, 2.0])]).numpy().tolist()
    [[25.0, 4.0, 13.0]]
    """
    sizes = [w.shape.num_elements() for w in weights]
    if None in sizes:
        return tf.stack([tf.stack([sum_squares(w), sum_squares(tf.cast(w, tf.float32) - tf.cast(b, tf.float32)),
                                   sum_squares(b)]) for w, b in zip(weights, before)])
    return rows_update_sums(weights, weight_rows(before), by_dot)


def weight_rows(weights):
    """float32 [chunks, width]: `weights` (static sizes) cut into the rows
    `multi_tensor_update_sums` reads (`chunk_rows` at `chunk_width`).

    >>> import tensorflow as tf
    >>> weight_rows([tf.constant([3.0, 4.0]), tf.constant([1.0])]).shape.as_list()
    [2, 32]
    """
    return _weight_rows_and_owner(weights)[0]


def _weight_rows_and_owner(weights):
    """`chunk_rows` of `weights` (static sizes) at their `chunk_width`."""
    return chunk_rows(weights, chunk_width([w.shape.num_elements() for w in weights]))


def rows_update_sums(weights, before_rows, by_dot=False):
    """`multi_tensor_update_sums(weights, before)` from `weight_rows(before)`
    (the rows of the same shapes, taken earlier)."""
    w, owner = _weight_rows_and_owner(weights)
    rows = tf.stack([_finite_square_sum(w, by_dot), _finite_square_sum(w - before_rows, by_dot),
                     _finite_square_sum(before_rows, by_dot)], axis=1)
    return tf.math.unsorted_segment_sum(rows, owner, len(weights))


# With `outputs`, f'(z) is computed per tensor for a kind of at most this
# many tensors (a Transformer's blocks), on the rows for more (a conv net's
# many small activations): see `multi_activation_statistics`.
DERIVATIVES_PER_TENSOR_MAX = 16


def multi_activation_statistics(tensors, thresholds, unit_axes, op_type=None, function=None, outputs=None):
    """`activation_statistics` (or `..._from_output` with `op_type`) and the
    histogram (`finite_range`, `equal_width_counts`) of k activation tensors
    of one kind (one function or output op), in a few ops whatever their
    number, shapes and unit counts (for XLA, as `multi_tensor_statistics`;
    with `outputs`, f'(z) of up to `DERIVATIVES_PER_TENSOR_MAX` tensors is
    a derivative each).

    Each tensor is flattened with its unit axis last and cut into rows of one
    width, its last row padded (padding is masked out, not counted); the rows
    of all tensors are joined, those of tensors of one static shape and unit
    axis stacked and cut together (`_activation_rows`). Every statistic is
    one reduction along the rows, summed into tensors by segment sums over
    the rows; the histograms are one bincount, the per-unit active counts
    one segment sum (the unit of an element being its position in its tensor
    modulo its unit count).
    The other dimensions may differ, also at run time (a trace with a `None`
    batch dimension promises no equal shapes): the row counts are dynamic
    (static once XLA compiles). Grouping by kind alone, not by kind and unit
    count, took MobileNetV3Small's activations from 24 groups to 3 and the
    XLA compile they add to its forward pass from 9.6 s to 2.2-2.8 s
    (benchmarks/bench_statistics_compile.py; results in
    benchmarks/results/activation_statistics_compile_f13ae87_vs_a2b0292.json).
    Counts are exact, sums may round differently from one tensor at a time.

    Args:
      tensors: the activations' inputs z (with `function`) or outputs a (with
        `op_type`, a key of OUTPUT_DERIVATIVES), each with a static unit count
        and one dtype.
      thresholds: per tensor, the |f'| below which an element is saturated.
      unit_axes: per tensor, its unit axis.
      outputs: with `function`, per tensor, f(z) as the step computed it
        (same shapes as `tensors`): the activation statistics are of these,
        and only the derivative f'(z) is computed from z (under XLA, f(z)
        computed again here would be computed in full a second time).

    Returns:
      (moments [k, NUM_ACTIVATION_MOMENTS], active [sum of unit counts] (the
      tensors' active counts joined in order), range [k, 2], equal-width
      counts [k, HISTOGRAM_BUCKETS]) of each tensor, as the single-tensor
      functions give them.

    >>> import tensorflow as tf
    >>> m, active, r, c = multi_activation_statistics(
    ...     [tf.constant([[-1.0, 2.0]]), tf.constant([[3.0], [1.0], [0.0]])], [0.5, 0.5], [-1, -1], op_type="Relu")
    >>> m.numpy()[:, :3].tolist(), active.numpy().tolist(), r.numpy().tolist()
    ([[1.0, 2.0, 2.0], [1.0, 3.0, 3.0]], [0.0, 1.0, 2.0], [[-1.0, 2.0], [0.0, 3.0]])
    """
    k = len(tensors)
    # Tensors of one static shape and unit axis are measured as one stack
    # (see `_activation_rows`); their rows come in the stacks' order, and
    # the results are put back in the order of `tensors` at the end.
    order, stacks = _activation_stacks(tensors, unit_axes)
    tensors, thresholds, unit_axes = ([seq[i] for i in order] for seq in (tensors, thresholds, unit_axes))
    if outputs is not None:
        outputs = [outputs[i] for i in order]
    units = [int(t.shape[axis]) for t, axis in zip(tensors, unit_axes)]
    unit_offsets = np.concatenate([[0], np.cumsum(units)]).astype(np.int32)
    # Rows about as wide as the smallest tensor's static part, so that the
    # padding (under one row a tensor) stays small next to its elements.
    per_example = [int(np.prod([d for d in t.shape if d is not None])) for t in tensors]
    width = chunk_width([min(per_example)])
    x, sizes = _activation_rows(tensors, unit_axes, stacks, width)
    row_counts = (sizes + width - 1) // width
    first_row = tf.cumsum(row_counts, exclusive=True)
    owner = _row_owners(first_row, tf.shape(x)[0])  # the tensor of each row
    # Each element's position in its tensor; past the tensor's size, padding.
    position = ((tf.range(tf.shape(x)[0]) - tf.gather(first_row, owner)) * width)[:, None] + tf.range(width)[None, :]
    valid = position < tf.gather(sizes, owner)[:, None]

    def per_tensor(row_values):
        return tf.math.unsorted_segment_sum(row_values, owner, k)

    def row_count(mask):
        return per_tensor(count_rows(mask))

    if op_type is not None:
        a = tf.stop_gradient(x)
        d = OUTPUT_DERIVATIVES[op_type](a)
    elif outputs is not None:
        # The outputs cut as the inputs are (same shapes: same rows).
        a = tf.stop_gradient(_activation_rows(outputs, unit_axes, stacks, width)[0])
        if k <= DERIVATIVES_PER_TENSOR_MAX:
            # f'(z) of each tensor as it is, then cut: XLA shares its work
            # with the step's own ops on that z (GELU's erf, say), which it
            # cannot on the rows. On the Transformer block's GELU a sampled
            # step went from 1.41x to 1.25x a plain one this way (1.55x
            # recomputing f(z) too). Each one is a derivative more to trace
            # and compile: MobileNetV3Small's ~19 hard-swishes, where
            # nothing is shared, took ~1.5 s more start-up under XLA.
            d = _activation_rows([activation_derivative(function, t)[1] for t in tensors], unit_axes, stacks, width)[0]
        else:
            d = activation_derivative(function, x)[1]
    else:
        a, d = activation_derivative(function, x)
    d = tf.abs(tf.cast(d, tf.float32))
    a = tf.cast(a, tf.float32)
    finite = tf.logical_and(valid, tf.math.is_finite(a))
    n_finite = tf.cast(row_count(finite), tf.float32)
    a = tf.where(finite, a, 0.0)
    total = per_tensor(sum_rows(a))
    local_mean = total / tf.maximum(n_finite, 1.0)
    centred = tf.where(finite, tf.square(a - tf.gather(local_mean, owner)[:, None]), 0.0)
    threshold = tf.gather(tf.constant(thresholds, tf.float32), owner)[:, None]
    moments = tf.stack([
        tf.cast(row_count(tf.logical_and(valid, d < threshold)), tf.float32),
        tf.cast(sizes, tf.float32),
        n_finite,
        total,
        per_tensor(sum_rows(centred)),
        total * local_mean,
    ], axis=1)
    # Active counts per unit: each row is cut into blocks of g, a divisor of
    # the width and of every unit count, so a block lies in one tensor and
    # holds g consecutive units; blocks are summed into their units by a
    # segment sum: one update of g per block, not a scatter per element (a
    # bincount per element added ~55 ms to ResNet50V2's 250 ms sampled
    # forward pass, against ~25 ms this way; the record's "rejected"). With
    # an odd unit count g is 1 and it is one update per element again.
    g = int(np.gcd.reduce([width] + units))
    n_units = int(unit_offsets[-1])
    block_position = position[:, ::g]
    unit = tf.gather(tf.constant(unit_offsets[:-1]), owner)[:, None] + block_position % tf.gather(
        tf.constant(units, tf.int32), owner)[:, None]
    blocks = tf.reshape(tf.cast(tf.logical_and(valid, d > 0), tf.float32), [-1, g])
    active = tf.reshape(tf.math.unsorted_segment_sum(blocks, tf.reshape(unit // g, [-1]), n_units // g), [-1])
    # The histogram is of the tensor read (z or a), as measured one at a time.
    values = tf.cast(x, tf.float32)
    finite = tf.logical_and(valid, tf.math.is_finite(values))
    finite_count = row_count(finite)
    low = tf.math.unsorted_segment_min(tf.reduce_min(tf.where(finite, values, float("inf")), axis=1), owner, k)
    high = tf.math.unsorted_segment_max(tf.reduce_max(tf.where(finite, values, float("-inf")), axis=1), owner, k)
    empty = tf.equal(finite_count, 0)
    low, high = tf.where(empty, 0.0, low), tf.where(empty, 0.0, high)
    width_of_bucket = (high - low) / HISTOGRAM_BUCKETS
    safe_width = tf.where(width_of_bucket > 0, width_of_bucket, 1.0)
    index = _bucket_index(values, tf.gather(low, owner)[:, None], tf.gather(safe_width, owner)[:, None])
    index = tf.where(finite, index + owner[:, None] * HISTOGRAM_BUCKETS, k * HISTOGRAM_BUCKETS)
    counts = tf.reshape(_count(tf.reshape(index, [-1]), k * HISTOGRAM_BUCKETS), [k, HISTOGRAM_BUCKETS])
    results = moments, active, tf.stack([low, high], axis=1), _zero_width_to_last_bucket(counts, width_of_bucket)
    if order == list(range(k)):
        return results
    # Back in the caller's order: tensor i's rows (and units) are where
    # `order` put it.
    where = np.argsort(order)
    unit_where = np.concatenate([np.arange(unit_offsets[j], unit_offsets[j + 1]) for j in where]).astype(np.int32)
    moments, active, low_high, counts = results
    return tf.gather(moments, where), tf.gather(active, unit_where), tf.gather(low_high, where), tf.gather(counts, where)


def _row_owners(first_row, n_rows):
    """int32 [n_rows]: the tensor each row belongs to, for tensors whose rows
    are consecutive from `first_row` (int32 [k], non-decreasing; a tensor
    without rows starts where the next one does).

        >>> import tensorflow as tf
        >>> _row_owners(tf.constant([0, 2, 2, 5]), 6).numpy().tolist()
        [0, 0, 2, 2, 2, 3]

    A 1 at each tensor's first row, summed cumulatively. Not `tf.repeat`:
    XLA gives its output (a boolean mask's) a dynamic size bounded by
    k x the largest row count, and on MobileNetV3Small's 142 shapes the
    segment sums over rows then failed to compile ("indices shape to be
    prefix of data_shape, 47785 vs. 2617344"): a crash of the step.
    """
    marks = tf.math.unsorted_segment_sum(tf.ones_like(first_row), first_row, n_rows + 1)
    return tf.cumsum(marks[:n_rows]) - 1


def _activation_stacks(tensors, unit_axes):
    """(order, stacks): the tensors of one fully static shape and unit axis
    grouped, in first-seen order, as lists of positions in `order` (the
    tensors' indices, group after group); a tensor of a partly unknown shape
    is a group of its own."""
    groups = {}
    for i, (t, axis) in enumerate(zip(tensors, unit_axes)):
        key = (tuple(t.shape.as_list()), axis % t.shape.rank) if t.shape.is_fully_defined() else i
        groups.setdefault(key, []).append(i)
    order, stacks = [], []
    for members in groups.values():
        stacks.append(list(range(len(order), len(order) + len(members))))
        order += members
    return order, stacks


def _activation_rows(tensors, unit_axes, stacks, width):
    """(x [rows, width], sizes int32 [k]): each tensor flattened with its unit
    axis last and cut into rows of `width`, its last row zero-padded, the
    tensors' rows joined in order; and each tensor's element count.

    The tensors of a stack (one static shape and unit axis) are stacked and
    transposed, flattened, padded and cut together, and their sizes are
    constants: mlp50's 50 ReLUs are one stack, 5 ops instead of some 10 per
    activation that XLA lowers and optimizes one by one. A tensor of a
    partly unknown shape (a `None` batch in the trace) goes alone, its size
    read at run time."""
    blocks, sizes = [], []
    for stack in stacks:
        members = [tensors[i] for i in stack]
        first, axis = members[0], unit_axes[stack[0]] % members[0].shape.rank
        rank = first.shape.rank
        move_last = [d for d in range(rank) if d != axis] + [axis]
        if first.shape.is_fully_defined():
            size = first.shape.num_elements()
            rows = -(-size // width)  # as `row_counts` counts them (none for an empty tensor)
            block = tf.stack(members) if len(members) > 1 else members[0][None]
            if axis != rank - 1:
                block = tf.transpose(block, [0] + [d + 1 for d in move_last])
            block = tf.reshape(block, [len(members), size])
            if rows * width > size:
                block = tf.pad(block, [[0, 0], [0, rows * width - size]])
            blocks.append(tf.reshape(block, [len(members) * rows, width]))
            sizes += [size] * len(members)
        else:
            flat = tf.reshape(first if axis == rank - 1 else tf.transpose(first, move_last), [-1])
            size = tf.size(flat)
            rows = (size + width - 1) // width
            blocks.append(tf.reshape(tf.pad(flat, [[0, rows * width - size]]), [-1, width]))
            sizes.append(size)
    x = tf.concat(blocks, axis=0) if len(blocks) > 1 else blocks[0]
    if all(isinstance(size, int) for size in sizes):
        return x, tf.constant(sizes, tf.int32)
    return x, tf.stack([tf.constant(size, tf.int32) if isinstance(size, int) else size for size in sizes])
